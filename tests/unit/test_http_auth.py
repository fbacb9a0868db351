"""Company data over HTTP (`/history`) is open on loopback only; elsewhere it needs the bearer token."""

from __future__ import annotations

import pytest

from processors.config import Config
from processors.worker.views import authorized


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(bind: str) -> None:
    config = Config(http_bind=bind)
    assert config.http_problems() == []
    assert authorized(config, None)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3", "worker.internal"])
def test_a_network_bind_without_a_token_is_refused_at_start(bind: str) -> None:
    [problem] = Config(http_bind=bind).http_problems()
    assert problem.startswith("CRM_SYNC_HTTP_TOKEN: expected a token") and bind in problem


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token", True),
        ("bearer s3cret-token", True),
        (None, False),
        ("", False),
        ("Bearer wrong", False),
        ("Basic s3cret-token", False),
        ("Bearer ", False),
    ],
)
def test_off_loopback_only_the_bearer_token_opens_company_data(header: str | None, ok: bool) -> None:
    config = Config(http_bind="0.0.0.0", http_token="s3cret-token")
    assert config.http_problems() == []
    assert authorized(config, header) is ok


def test_the_token_is_never_in_the_config_repr() -> None:
    assert "s3cret-token" not in repr(Config(http_bind="0.0.0.0", http_token="s3cret-token"))
