"""`crm-sync health` (the image's HEALTHCHECK) asks the worker where the worker listens."""

from __future__ import annotations

import pytest

from processors.config import Config
from processors.ops.cli import main
from processors.ops.health import health_url, probe


@pytest.mark.parametrize(
    ("bind", "port", "url"),
    [
        ("127.0.0.1", 9464, "http://127.0.0.1:9464/health/ready"),
        ("0.0.0.0", 9500, "http://127.0.0.1:9500/health/ready"),
        ("::", 9464, "http://[::1]:9464/health/ready"),
        ("10.1.2.3", 9464, "http://10.1.2.3:9464/health/ready"),
        ("localhost", 9464, "http://localhost:9464/health/ready"),
    ],
)
def test_the_probe_asks_where_the_worker_listens(bind: str, port: int, url: str) -> None:
    assert health_url(Config.from_env({"CRM_SYNC_HTTP_BIND": bind, "CRM_SYNC_METRICS_PORT": str(port)})) == url


def test_live_asks_the_liveness_endpoint() -> None:
    assert health_url(Config(), live=True) == "http://127.0.0.1:9464/health/live"


def test_nothing_listening_is_unhealthy_with_a_reason(unused_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    healthy, reason = probe(Config.from_env({"CRM_SYNC_METRICS_PORT": str(unused_port)}), timeout=1)
    assert not healthy and f"127.0.0.1:{unused_port}/health/ready" in reason
    monkeypatch.setenv("CRM_SYNC_METRICS_PORT", str(unused_port))
    assert main(["health"]) == 1
    assert "/health/ready" in capsys.readouterr().err


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
