"""The one registry client builder: the auth and TLS settings reach confluent-kafka's client, and the
start-up check's lines name the variable to fix without repeating a password."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trustme

from processors.codec import REGISTRY_TIMEOUT_SECONDS, registry_client, registry_problems


def test_basic_auth_and_timeout_reach_the_rest_client() -> None:
    client = registry_client("https://registry.example:8081", basic_auth_user_info="svc:pa:ss")
    rest = client._rest_client
    assert rest.base_urls == ["https://registry.example:8081"]
    assert rest.auth == ("svc", "pa:ss")
    assert rest.timeout == REGISTRY_TIMEOUT_SECONDS


def test_no_credentials_means_no_auth() -> None:
    assert registry_client("http://registry.example:8081")._rest_client.auth is None


def test_the_ca_file_is_the_one_trusted(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    rest = registry_client("https://registry.example", ssl_ca_location=str(ca_file))._rest_client
    assert isinstance(rest.verify, ssl.SSLContext)
    [trusted] = rest.verify.get_ca_certs()  # only ours, not certifi's bundle
    assert trusted["subject"][0] == (("organizationName", f"trustme v{trustme.__version__}"),)


def test_credentials_in_both_places_are_refused() -> None:
    with pytest.raises(ValueError, match="userinfo credentials in the URL"):
        registry_client("http://svc:pw@registry.example", basic_auth_user_info="svc:pw")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_registry_is_one_line_naming_the_url_without_its_password() -> None:
    port = closed_port()
    url = f"http://svc:hunter2@127.0.0.1:{port}/apis/ccompat/v7"
    [line] = registry_problems(registry_client(url), url)
    assert line.startswith("SCHEMA_REGISTRY_URL: no schema registry answers at ")
    assert f"http://127.0.0.1:{port}/apis/ccompat/v7" in line
    assert "hunter2" not in line
