"""Root conftest for crm-sync: a real Kafka broker for integration tests.

Fixtures
--------
kafka_bootstrap (session) -> str
    "host:port" of a running Kafka broker, chosen in this order:
      1. $KAFKA_BOOTSTRAP_SERVERS, used as is;
      2. an ``apache/kafka:<pinned version>`` container, when a Docker engine answers;
      3. the project's own broker: ``deploy/kafka/kafka.sh start`` in a temp dir,
         stopped at session end.
    $CRM_SYNC_KAFKA=docker|local forces 2 or 3. When no broker can be had the
    fixture skips its tests, except under CI=true, where it fails them.

secure_kafka (session) -> SecureBroker
    A second broker, ``deploy/kafka/kafka.sh start --secure`` (SASL_SSL, SCRAM users, ACLs
    enforced), for the tests of least privilege (tests/integration/test_security.py).

topic_factory (function) -> callable(suffix="", *, partitions=1, config=None) -> str
    Creates a uniquely named topic (test name + uuid) with confluent-kafka's
    AdminClient, waits until it has a leader, returns its name; every topic it
    made is deleted at teardown (best effort).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
# Cold cache: Maven fetch (~5-60 s depending on the network) + startup (<60 s).
LOCAL_START_TIMEOUT_S = 600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs a real Kafka broker (fixture kafka_bootstrap; "
        "deselect with -m 'not integration')",
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(msg: str) -> None:
    if _in_ci():
        pytest.fail(f"no Kafka broker for integration tests under CI: {msg}", pytrace=False)
    pytest.skip(f"no Kafka broker: {msg}")


def kafka_version() -> str:
    """The Kafka version pinned in deploy/kafka/kafka.sh (or $KAFKA_VERSION)."""
    out = subprocess.run(
        ["bash", str(KAFKA_SH), "version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_docker_broker():
    """apache/kafka in KRaft mode via a generic testcontainers DockerContainer.

    testcontainers' KafkaContainer only drives confluentinc/cp-kafka images (its
    start script calls /etc/confluent/docker/*, and with_kraft() rejects tags
    below 7.0.0), so the apache/kafka image is configured here through the env
    variables its own entrypoint understands. The host port equals the container
    port so the advertised listener is right from the start.
    """
    import socket

    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
        "KAFKA_NUM_PARTITIONS": "1",
        "KAFKA_HEAP_OPTS": "-Xmx512m",
    }
    container = DockerContainer(f"apache/kafka:{kafka_version()}")
    for key, value in env.items():
        container.with_env(key, value)
    container.with_bind_ports(port, port)
    container.waiting_for(
        LogMessageWaitStrategy(re.compile(r"Kafka Server started")).with_startup_timeout(90)
    )
    container.start()
    host = container.get_container_host_ip()
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return f"{host}:{port}", container


def _start_local_broker(request: pytest.FixtureRequest):
    """deploy/kafka/kafka.sh start in a fresh temp dir; returns (bootstrap, stop)."""
    if shutil.which("java") is None:
        _unavailable("no Docker engine and no `java` on PATH for deploy/kafka/kafka.sh")
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-kafka-"))
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = ["bash", str(KAFKA_SH), "start", "--dir", str(workdir), "--owner-pid", str(os.getpid())]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=LOCAL_START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(KAFKA_SH), "stop", "--dir", str(workdir)], env=env)
        _unavailable(f"`kafka.sh start` did not finish in {LOCAL_START_TIMEOUT_S}s ({workdir})")
    if proc.returncode != 0:
        _unavailable(
            f"`kafka.sh start` failed (exit {proc.returncode}); broker dir kept at {workdir}\n"
            f"{proc.stderr[-4000:]}"
        )
    bootstrap = proc.stdout.strip().splitlines()[-1]

    def stop() -> None:
        subprocess.run(
            ["bash", str(KAFKA_SH), "stop", "--dir", str(workdir)],
            env=env,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(workdir, ignore_errors=True)

    return bootstrap, stop


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest):
    """Bootstrap servers ("host:port") of a real Kafka broker for this session."""
    env_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env_servers:
        yield env_servers
        return

    backend = os.environ.get("CRM_SYNC_KAFKA", "auto").strip().lower()
    if backend not in ("auto", "docker", "local"):
        pytest.fail(f"CRM_SYNC_KAFKA must be auto, docker or local, not {backend!r}")

    docker_error = None
    if backend in ("auto", "docker") and _docker_engine_answers():
        try:
            bootstrap, container = _start_docker_broker()
        except Exception as exc:  # fall back to the local broker
            docker_error = f"{type(exc).__name__}: {exc}"
        else:
            try:
                yield bootstrap
            finally:
                container.stop()
            return
    if backend == "docker":
        _unavailable(docker_error or "CRM_SYNC_KAFKA=docker but no Docker engine answers")

    bootstrap, stop = _start_local_broker(request)
    try:
        yield bootstrap
    finally:
        stop()


SECURE_USERS = ("worker", "admin", "publisher", "sre")


@dataclass(frozen=True)
class SecureBroker:
    """A broker started by `kafka.sh start --secure`: SASL_SSL, SCRAM-SHA-512, StandardAuthorizer.

    `passwords` has the SCRAM users made at format time: `broker` (the only super user) and
    SECURE_USERS; no ACL exists until a test applies them.
    """

    bootstrap: str
    ca_file: str
    passwords: dict[str, str]

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """The SPEC §10 variables that make a client connect as `user`."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD": password if password is not None else self.passwords[user],
            "KAFKA_SSL_CA_LOCATION": self.ca_file,
        }


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecureBroker]:
    """One secured local broker per session (needs only Java, so it runs in CI too)."""
    if shutil.which("java") is None:
        _unavailable("no `java` on PATH for `kafka.sh start --secure`")
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-kafka-secure-"))
    env = dict(os.environ, PYTHON=sys.executable)
    passwords = {user: secrets.token_hex(12) for user in SECURE_USERS}
    cmd = ["bash", str(KAFKA_SH), "start", "--secure", "--dir", str(workdir), "--owner-pid", str(os.getpid())]
    for user, password in passwords.items():
        cmd += ["--user", f"{user}:{password}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LOCAL_START_TIMEOUT_S)
    if proc.returncode != 0:
        _unavailable(f"`kafka.sh start --secure` failed (exit {proc.returncode}) in {workdir}\n{proc.stderr[-4000:]}")
    passwords["broker"] = (workdir / "tls" / "broker.password").read_text().strip()
    try:
        yield SecureBroker(proc.stdout.strip().splitlines()[-1], str(workdir / "tls" / "ca.pem"), passwords)
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop", "--dir", str(workdir)], env=env, capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


REGISTRY_SH = REPO_ROOT / "deploy" / "registry" / "registry.sh"


def _no_registry(msg: str) -> None:
    if _in_ci():
        pytest.fail(f"no Schema Registry for integration tests under CI: {msg}", pytrace=False)
    pytest.skip(f"no Schema Registry: {msg}")


@dataclass(frozen=True)
class SchemaRegistryServer:
    """Apicurio Registry from `registry.sh start --user`: its ccompat API needs basic auth as `user_info`."""

    base_url: str
    user_info: str
    workdir: Path

    @property
    def url(self) -> str:
        """What SCHEMA_REGISTRY_URL is set to: the Confluent-compatible API."""
        return f"{self.base_url}/apis/ccompat/v7"

    def env(self) -> dict[str, str]:
        return {"SCHEMA_REGISTRY_URL": self.url, "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": self.user_info}


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[SchemaRegistryServer]:
    """One real Schema Registry per session (Apicurio; needs only Java, so it runs in CI too)."""
    if shutil.which("java") is None:
        _no_registry("no `java` on PATH for `registry.sh start`")
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-registry-"))
    user_info = f"crm-sync:{secrets.token_hex(12)}"
    cmd = ["bash", str(REGISTRY_SH), "start", "--dir", str(workdir), "--owner-pid", str(os.getpid()), "--user", user_info]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LOCAL_START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        subprocess.run(["bash", str(REGISTRY_SH), "stop", "--dir", str(workdir)], capture_output=True, timeout=60)
        detail = "timed out" if proc is None else f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
        _no_registry(f"`registry.sh start` failed in {workdir}: {detail}")
    assert proc is not None
    try:
        yield SchemaRegistryServer(proc.stdout.strip().splitlines()[-1], user_info, workdir)
    finally:
        subprocess.run(["bash", str(REGISTRY_SH), "stop", "--dir", str(workdir)], capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


def _topic_base(request: pytest.FixtureRequest) -> str:
    # Only [A-Za-z0-9_-]: '.' and '_' collide in Kafka metric names.
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")
    return name[:180] or "topic"


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest):
    """Returns create(suffix="", *, partitions=1, config=None) -> topic name."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []
    base = _topic_base(request)

    def create(
        suffix: str = "",
        *,
        partitions: int = 1,
        config: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        parts = [base, re.sub(r"[^A-Za-z0-9_-]+", "-", suffix), uuid.uuid4().hex[:10]]
        name = "-".join(p for p in parts if p)
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    config={k: str(v) for k, v in (config or {}).items()},
                )
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        futures[name].result(timeout=timeout)
        created.append(name)
        # Wait until every partition has a leader, so the first produce/consume
        # does not race the metadata propagation.
        deadline = time.monotonic() + timeout
        while True:
            try:
                md = admin.list_topics(topic=name, timeout=5).topics.get(name)
                if (
                    md is not None
                    and md.error is None
                    and len(md.partitions) == partitions
                    and all(p.leader >= 0 for p in md.partitions.values())
                ):
                    return name
            except KafkaException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no leader after {timeout}s")
            time.sleep(0.1)

    yield create

    if created:
        try:
            for fut in admin.delete_topics(created, operation_timeout=30).values():
                try:
                    fut.result(timeout=30)
                except Exception:
                    pass
        except Exception:
            pass
