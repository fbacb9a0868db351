"""What an end-to-end test needs: a worker process like production's, an upstream-like publisher,
an admin, and patience (polling, never fixed sleeps of real minutes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar


from processors.codec import Codec
from processors.kafka.read import read_to_end
from processors.config import TOPIC_ENV, Config, Topics

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """True when `url` answers 200 now; a refused or slow connection is just 'not yet'."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def unique_topics(prefix: str) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    return Topics(**{name: f"{prefix}.{name}.{suffix}" for name in TOPIC_ENV})


SANDBOX_HOSTS = "http://127.0.0.1"


def topic_env(topics: Topics) -> dict[str, str]:
    return {var: getattr(topics, name) for name, var in TOPIC_ENV.items()}


@dataclass
class Deployment:
    """One isolated installation: its own topics, app id, secrets and settings."""

    bootstrap: str
    topics: Topics
    secrets_dir: Path
    ca_file: str
    delay_seconds: float = 2.0
    app_id: str = field(default_factory=lambda: f"crm-sync-test-{uuid.uuid4().hex[:8]}")
    partitions: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_SYNC_")}
        env.update(topic_env(self.topics))
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            CRM_SYNC_DELAY_SECONDS=str(self.delay_seconds),
            CRM_SYNC_SECRETS_DIR=str(self.secrets_dir),
            CRM_SYNC_CA_BUNDLE=self.ca_file,
            CRM_SYNC_APP_ID=self.app_id,
            CRM_SYNC_TOPIC_PARTITIONS=str(self.partitions),
            CRM_SYNC_STATE_DIR=str(self.secrets_dir.parent / "state"),
            CRM_SYNC_SINK_RETRY_SECONDS="20",
            CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS="true",
            # The CRM sandbox: loopback, its HubSpot over plain http (never allowed by default).
            CRM_SYNC_CRM_ALLOWED_HOSTS=SANDBOX_HOSTS,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def config(self) -> Config:
        return Config.from_env(self.env())


class WorkerProcess:
    """`crm-sync worker` as a real process, so restarts and kill -9 are the real thing."""

    def __init__(self, deployment: Deployment, log_path: Path) -> None:
        self.deployment = deployment
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        env = self.deployment.env()
        env["CRM_SYNC_METRICS_PORT"] = str(self.port)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}; log: {self.log_tail()}")
            return http_ok(f"http://127.0.0.1:{self.port}/health/ready")

        wait_for(ready, timeout, 0.2, "worker readiness")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def read_all(bootstrap: str, topic: str, codec: Codec | None = None, timeout: float = 10.0) -> list[Any]:
    """Every record now on a topic (the one read-to-end helper), decoded when a codec is given."""
    out: list[Any] = []
    read_to_end({"bootstrap.servers": bootstrap}, topic, lambda msg: out.append(codec.decode(msg.value()).value if codec else msg), timeout=timeout)
    return out


def write_default_secrets(secrets_dir: Path, *, sf_instance: str, session_id: str, hs_url: str, hs_token: str) -> None:
    default = secrets_dir / "_default"
    default.mkdir(parents=True, exist_ok=True)
    (default / "salesforce.json").write_text(json.dumps({"instance_url": sf_instance, "session_id": session_id}))
    (default / "hubspot.json").write_text(json.dumps({"access_token": hs_token, "base_url": hs_url}))
