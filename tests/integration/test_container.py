"""The worker image, built here with podman, runs `crm-sync worker` like production: a booking
published with the publisher SDK reaches both CRMs of the sandbox on the host, the container's
/health/ready answers, its HEALTHCHECK passes, and SIGTERM drains it."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from connectors.sandbox.server import CrmSandbox
from tests.integration.containers import build_image, podman, readable_copy
from tests.integration.harness import Deployment, free_port, http_ok, wait_for
from tests.integration.test_end_to_end import booking, configure, publisher, seed_people

pytestmark = pytest.mark.integration

# The image's own paths (Dockerfile): what a deployment mounts.
SECRETS_IN_IMAGE = "/etc/crm-sync/secrets"
CA_IN_IMAGE = "/etc/crm-sync/sandbox-ca.pem"


@pytest.fixture(scope="module")
def worker_image() -> str:
    return build_image("worker")


def container_env(deployment: Deployment, port: int) -> dict[str, str]:
    """The deployment's crm-sync settings, with the image's own paths for secrets, CA and state."""
    env = {k: v for k, v in deployment.env().items() if k.startswith(("CRM_SYNC_", "KAFKA_"))}
    for var in ("CRM_SYNC_STATE_DIR", "CRM_SYNC_SECRETS_DIR"):
        env.pop(var)  # the image's defaults: /var/lib/crm-sync (a volume), /etc/crm-sync/secrets
    env.update(CRM_SYNC_CA_BUNDLE=CA_IN_IMAGE, CRM_SYNC_METRICS_PORT=str(port))
    return env


@pytest.fixture
def container(worker_image: str, deployment: Deployment, tmp_path: Path) -> Iterator[tuple[str, int]]:
    name = f"crm-sync-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    readable_copy(deployment.secrets_dir)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(deployment.ca_file).read_bytes())
    ca.chmod(0o644)
    # A read-only root file system, as deploy/k8s runs it: the state volume and /tmp are the only writable places.
    args = ["run", "-d", "--name", name, "--network", "host", "--stop-timeout", "40", "--read-only", "--tmpfs", "/tmp",
            "-v", f"{deployment.secrets_dir}:{SECRETS_IN_IMAGE}:ro", "-v", f"{ca}:{CA_IN_IMAGE}:ro"]
    for key, value in container_env(deployment, port).items():
        args += ["-e", f"{key}={value}"]
    podman(*args, worker_image, "worker")
    try:
        yield name, port
    finally:
        logs = podman("logs", name, check=False)
        (tmp_path / "container.log").write_text(logs.stdout + logs.stderr)
        podman("rm", "-f", "-v", "-t", "5", name, check=False)


def running(name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
    if state != "true":
        raise AssertionError(f"container {name} stopped: {podman('logs', '--tail', '40', name, check=False).stderr}")
    return True


def test_the_image_delivers_a_booking_to_both_crms_and_reports_healthy(
    container: tuple[str, int], deployment: Deployment, sandbox: CrmSandbox
) -> None:
    name, port = container
    booker, host = "container.booker@buyer.example", "container.host@seller.example"
    seed_people(sandbox, booker=booker, host=host)
    configure(deployment)

    wait_for(lambda: running(name) and http_ok(f"http://127.0.0.1:{port}/health/ready"), 120, 0.5, "the container's /health/ready")
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    # The image's HEALTHCHECK (`crm-sync health`) agrees.
    assert podman("healthcheck", "run", name, check=False).returncode == 0

    pub = publisher(deployment)
    pub.publish_meeting_booked(booking(booker=booker, host=host, start=datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)))
    pub.flush()
    [task] = wait_for(sandbox.salesforce.list_tasks, 60, what="the Salesforce Task from the container")
    [meeting] = wait_for(sandbox.hubspot.list_meetings, 60, what="the HubSpot meeting from the container")
    assert "Intro call (30 min)" in task["Description"]
    assert meeting["properties"]["hs_meeting_title"] == "Intro call (30 min)"

    # The state directory is the image's volume, writable by the unprivileged user.
    listing = podman("exec", name, "ls", f"/var/lib/crm-sync/{deployment.app_id}").returncode
    assert listing == 0
    started = time.monotonic()
    podman("stop", name, timeout=60)
    assert time.monotonic() - started < 40
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"


def test_the_sandbox_certificate_names_the_compose_service() -> None:
    """The compose worker calls https://sandbox:8443: the certificate must name `sandbox`."""
    import socket
    import ssl

    with CrmSandbox(cert_names=("sandbox",)) as sb:
        port = int(sb.salesforce_url.rsplit(":", 1)[1].split("/")[0])
        context = ssl.create_default_context(cafile=sb.ca_file)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="sandbox") as tls:
                assert tls.version() is not None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                context.wrap_socket(raw, server_hostname="elsewhere")
