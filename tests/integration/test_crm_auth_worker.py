"""The new login flows inside a real worker: a company on Salesforce JWT bearer and a HubSpot OAuth
app (rotating refresh token) gets its Task and meeting, while a company whose private key does not
match its Connected App's certificate gets a readable dead letter — and the worker goes on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.sandbox.server import CrmSandbox
from processors.domain.model import Crm, EventType
from processors.ops.admin import SettingsAdmin
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, wait_for
from tests.integration.test_crm_auth import USER, jwt_company, keys  # noqa: F401  (fixture)
from tests.integration.test_sinks import MEETING_TYPE, booking, dead_letters, publish

pytestmark = pytest.mark.integration

BOOKER = "booker@buyer.example"


def connect(deployment: Deployment, company: str, crms: tuple[Crm, ...]) -> None:
    admin = SettingsAdmin(deployment.config(), actor="test")
    for crm in crms:
        admin.set_connected(company, crm, True)
        admin.set_toggle(company, MEETING_TYPE, crm, EventType.MEETING_BOOKED, True)


def test_jwt_and_oauth_companies_deliver_and_a_wrong_key_a_foreign_host_and_a_foreign_key_file_are_dead_letters(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path, keys: dict  # noqa: F811
) -> None:
    files = {}
    for company, key in (("jwt-good", "good"), ("jwt-bad", "other")):
        directory = deployment.secrets_dir / company
        creds, tenant = jwt_company(sandbox, tmp_path, keys, key=key, name=company, key_dir=directory)
        tenant.salesforce.add_contact(BOOKER)
        (directory / "salesforce.json").write_text(json.dumps({
            "consumer_key": creds.consumer_key, "username": creds.username,
            "private_key_file": creds.private_key_file, "login_url": creds.login_url}))
        files[company] = directory
    good = sandbox.tenant("jwt-good")
    good.hubspot.add_contact(BOOKER)
    good.hubspot.add_oauth_app("app-1", "secret-1", "rt-first", rotate=True)
    hubspot_file = files["jwt-good"] / "hubspot.json"
    hubspot_file.write_text(json.dumps({"client_id": "app-1", "client_secret": "secret-1",
                                        "refresh_token": "rt-first", "base_url": sandbox.hubspot_url}))
    os.chmod(hubspot_file, 0o600)
    # A host that is not HubSpot's (loopback, but not what the harness allows), and another tenant's key.
    (deployment.secrets_dir / "foreign-host").mkdir()
    (deployment.secrets_dir / "foreign-host" / "hubspot.json").write_text(json.dumps({
        "client_id": "app-1", "client_secret": "secret-1", "refresh_token": "rt-first", "token_url": "https://localhost:1/"}))
    (deployment.secrets_dir / "foreign-key").mkdir()
    (deployment.secrets_dir / "foreign-key" / "salesforce.json").write_text(json.dumps({
        "consumer_key": "CK-jwt-good", "username": USER, "private_key_file": str(files["jwt-good"] / "jwt-good-good.pem"),
        "login_url": sandbox.salesforce_url}))
    connect(deployment, "jwt-good", (Crm.SALESFORCE, Crm.HUBSPOT))
    connect(deployment, "jwt-bad", (Crm.SALESFORCE,))
    connect(deployment, "foreign-host", (Crm.HUBSPOT,))
    connect(deployment, "foreign-key", (Crm.SALESFORCE,))
    worker = start_worker(deployment, workers, tmp_path)

    publish(deployment, [booking(c, BOOKER) for c in ("jwt-bad", "foreign-host", "foreign-key", "jwt-good")])
    wait_for(lambda: len(good.salesforce.list_tasks()) == 1 and len(good.hubspot.list_meetings()) == 1, 30,
             what="the JWT company's Task and the OAuth company's meeting")
    letters = wait_for(lambda: found if len(found := dead_letters(deployment)) >= 3 else None, 30,
                       what="the three dead letters")
    by_company = {letter["company_id"]: letter for letter in letters}
    assert len(letters) == 3 and set(by_company) == {"jwt-bad", "foreign-host", "foreign-key"}
    letter = by_company["jwt-bad"]
    assert letter["crm"] == "salesforce"
    assert letter["error_class"] == "AuthError" and "wrong private key" in letter["message"]
    refused = by_company["foreign-host"]
    assert refused["error_class"] == "EndpointRefused" and refused["error_code"] == "ENDPOINT_REFUSED"
    assert "token_url https://localhost is refused" in refused["message"]
    foreign = by_company["foreign-key"]
    assert foreign["error_class"] == "CredentialsInvalid" and "private_key_file" in foreign["message"]
    assert len(good.salesforce.list_tasks()) == 1  # the foreign key never signed a login
    # The rotated refresh token went to the writable token directory; the (read-only) mount is untouched.
    assert json.loads(hubspot_file.read_text())["refresh_token"] == "rt-first"
    kept = json.loads((deployment.config().tokens_dir / "jwt-good" / "hubspot.json").read_text())
    assert kept["values"]["refresh_token"] not in ("", "rt-first")

    publish(deployment, [booking("jwt-good", BOOKER)])
    wait_for(lambda: len(good.salesforce.list_tasks()) == 2 and len(good.hubspot.list_meetings()) == 2, 30,
             what="the next booking, from the same worker")
    assert worker.proc.poll() is None
    log = worker.log_text()
    assert "PRIVATE KEY" not in log and "rt-first" not in log and "00Dsandbox-jwt" not in log


class ReadOnlySecretsWorker(WorkerProcess):
    """The worker as both deployments run it: the secrets directory a read-only bind mount, in a
    mount namespace of the worker's own (``unshare -m``; gone when the process exits)."""

    def start(self) -> "ReadOnlySecretsWorker":
        env = self.deployment.env()
        env["CRM_SYNC_METRICS_PORT"] = str(self.port)
        secrets = str(self.deployment.secrets_dir)
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", script, "sh", secrets, sys.executable, "-m", "processors.ops.cli", "worker"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        return self


def read_only_mounts_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.skipif(not read_only_mounts_work(), reason="needs unshare -m and bind mounts (root in a container)")
def test_a_rotated_refresh_token_survives_a_restart_on_a_read_only_secrets_mount(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sandbox.add_tenant("hs-ro")
    tenant = sandbox.tenant("hs-ro")
    tenant.hubspot.add_contact(BOOKER)
    tenant.hubspot.add_oauth_app("app-ro", "secret-ro", "rt-mounted", rotate=True)
    directory = deployment.secrets_dir / "hs-ro"
    directory.mkdir()
    mounted = directory / "hubspot.json"
    mounted.write_text(json.dumps({"client_id": "app-ro", "client_secret": "secret-ro", "refresh_token": "rt-mounted",
                                   "base_url": sandbox.hubspot_url}))
    before = mounted.read_bytes()
    connect(deployment, "hs-ro", (Crm.HUBSPOT,))

    for round_ in (1, 2):  # the second worker starts with no token in memory: only the kept one works
        worker = ReadOnlySecretsWorker(deployment, tmp_path / f"ro-worker-{round_}.log").start()
        workers.append(worker)
        worker.wait_ready()
        publish(deployment, [booking("hs-ro", BOOKER)])
        wait_for(lambda: len(tenant.hubspot.list_meetings()) == round_, 30, what=f"meeting {round_}")
        worker.stop()
        assert "Read-only file system" not in worker.log_text() and "could not be kept" not in worker.log_text()
    assert mounted.read_bytes() == before and dead_letters(deployment) == []
    kept = json.loads((deployment.config().tokens_dir / "hs-ro" / "hubspot.json").read_text())
    assert kept["values"]["refresh_token"].startswith("rt-hs-ro-") and not tenant.hubspot.revoked
