"""The CRMs' login flows over HTTP against the sandbox, with the real client libraries.

Salesforce JWT bearer and client credentials (token cached, renewed exactly once when the session
expires mid-run), HubSpot OAuth refresh (renewed before expiry, a rotated refresh token kept in the token directory
while the secrets are read-only, replicas serialised by the refresh lease), and the real error bodies for a wrong key, an expired assertion and a revoked refresh
token, which become readable ``AuthError``s. No Kafka: these run in a second or two.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from connectors import auth
from connectors.credentials import CredentialStore, EndpointPolicy, HubSpotCredentials, SalesforceCredentials
from connectors.errors import AuthError
from connectors.hubspot import HubSpotClient
from connectors.salesforce import SalesforceClient
from connectors.sandbox.server import CrmSandbox
from tests.integration.harness import SANDBOX_HOSTS, wait_for

USER = "integration@jwt.example"
# The sandbox's loopback hosts, as the harness allows them (its token answers name them as instance_url).
SANDBOX = EndpointPolicy.parse(SANDBOX_HOSTS)


def rsa_pair() -> tuple[bytes, str]:
    """A private key (PEM) and the self-signed certificate an admin uploads to the Connected App."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm-sync test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"good": rsa_pair(), "other": rsa_pair()}


def jwt_company(sb: CrmSandbox, tmp_path: Path, keys: dict[str, tuple[bytes, str]], *, key: str = "good",
                name: str = "jwtco", key_dir: Path | None = None) -> tuple[SalesforceCredentials, Any]:
    """A tenant whose Connected App holds the good key's certificate; credentials signing with ``key``,
    whose file is written to ``key_dir`` (the company's secrets directory, where the store wants it)."""
    sb.add_tenant(name)
    tenant = sb.tenant(name)
    tenant.salesforce.add_connected_app(f"CK-{name}", certificate=keys["good"][1], users=[USER])
    (key_dir or tmp_path).mkdir(parents=True, exist_ok=True)
    key_file = (key_dir or tmp_path) / f"{name}-{key}.pem"
    key_file.write_bytes(keys[key][0])
    creds = SalesforceCredentials(consumer_key=f"CK-{name}", username=USER, private_key_file=str(key_file),
                                  login_url=sb.salesforce_url, endpoints=SANDBOX)
    return creds, tenant


def token_calls(sb: CrmSandbox, crm: str, tenant: str) -> int:
    path = "/services/oauth2/token" if crm == "salesforce" else "/oauth/v1/token"
    return sb.calls(tenant).get(f"{crm} POST {path}", 0)


def test_jwt_bearer_caches_its_token_and_renews_it_once_when_the_session_expires_mid_run(
    sb: CrmSandbox, tmp_path: Path, keys: dict[str, tuple[bytes, str]]
) -> None:
    creds, tenant = jwt_company(sb, tmp_path, keys)
    assert creds.auth_type == "jwt"
    tenant.salesforce.session_lifetime = 0.5
    owner = tenant.salesforce.add_user("host@seller.example")
    client = SalesforceClient(creds, sb.ca_file, timeout=5)

    assert client.find_users(["host@seller.example"]) == {"host@seller.example": owner}
    assert client.find_people(["nobody@buyer.example"]) == {}
    assert client.logins == 1 and token_calls(sb, "salesforce", "jwtco") == 1

    wait_for(lambda: all(time.time() >= t for t in tenant.salesforce.session_expiry.values()), 5,
             what="the session to expire")
    assert client.find_users(["host@seller.example"]) == {"host@seller.example": owner}
    assert client.logins == 2 and token_calls(sb, "salesforce", "jwtco") == 2
    assert len(tenant.salesforce.expired) == 1


def test_jwt_tokens_are_shared_by_clients_of_one_cache(
    sb: CrmSandbox, tmp_path: Path, keys: dict[str, tuple[bytes, str]]
) -> None:
    creds, _ = jwt_company(sb, tmp_path, keys)
    cache = auth.TokenCache()
    for _ in range(3):
        SalesforceClient(creds, sb.ca_file, tokens=cache, token_key="jwtco").find_users(["a@example.com"])
    assert token_calls(sb, "salesforce", "jwtco") == 1


def test_a_wrong_key_gets_salesforces_invalid_assertion_and_a_readable_auth_error(
    sb: CrmSandbox, tmp_path: Path, keys: dict[str, tuple[bytes, str]]
) -> None:
    creds, _ = jwt_company(sb, tmp_path, keys, key="other")
    with pytest.raises(AuthError) as caught:
        SalesforceClient(creds, sb.ca_file, timeout=5).find_users(["a@example.com"])
    assert caught.value.code == "invalid_grant"
    assert "wrong private key" in caught.value.message
    # One login, one re-authentication: never a loop.
    assert token_calls(sb, "salesforce", "jwtco") == 2

    assertion = auth.jwt_assertion(creds.consumer_key or "", USER, sb.salesforce_url, keys["other"][0])
    answer = requests.post(f"{sb.salesforce_url}/services/oauth2/token", verify=sb.ca_file,
                           data={"grant_type": auth.JWT_GRANT, "assertion": assertion}, timeout=5)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant", "error_description": "invalid assertion"}


@pytest.mark.parametrize(("claims", "description", "words"), [
    ({"now": time.time() - 3600}, "expired authorization code", "expired"),
    ({"audience": "https://elsewhere.example"}, "audience is invalid", "audience"),
    ({"username": "stranger@jwt.example"}, "user hasn't approved this consumer", "pre-authorized"),
])
def test_a_bad_assertion_gets_the_real_error_body_and_a_readable_auth_error(
    sb: CrmSandbox, tmp_path: Path, keys: dict[str, tuple[bytes, str]], claims: dict[str, Any],
    description: str, words: str,
) -> None:
    creds, _ = jwt_company(sb, tmp_path, keys)
    parts: dict[str, Any] = {"username": USER, "audience": sb.salesforce_url, "now": None, **claims}
    assertion = auth.jwt_assertion(creds.consumer_key or "", parts["username"], parts["audience"],
                                   keys["good"][0], parts["now"])
    answer = requests.post(f"{sb.salesforce_url}/services/oauth2/token", verify=sb.ca_file,
                           data={"grant_type": auth.JWT_GRANT, "assertion": assertion}, timeout=5)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant", "error_description": description}
    error = auth.token_error("salesforce", answer.status_code, answer.json())
    assert isinstance(error, AuthError) and words in error.message


def test_client_credentials_log_in_as_the_run_as_user_and_a_wrong_secret_is_refused(sb: CrmSandbox) -> None:
    sb.add_tenant("ccco")
    sb.tenant("ccco").salesforce.add_connected_app("CK-cc", consumer_secret="s3cret", run_as=USER)
    good = SalesforceCredentials(consumer_key="CK-cc", consumer_secret="s3cret", my_domain_url=sb.salesforce_url,
                                 endpoints=SANDBOX)
    assert good.auth_type == "client_credentials"
    assert SalesforceClient(good, sb.ca_file).find_users(["a@example.com"]) == {}
    bad = SalesforceCredentials(consumer_key="CK-cc", consumer_secret="wrong", my_domain_url=sb.salesforce_url,
                                endpoints=SANDBOX)
    with pytest.raises(AuthError) as caught:
        SalesforceClient(bad, sb.ca_file).find_users(["a@example.com"])
    assert caught.value.code == "invalid_client" and "secret" in caught.value.message


def hubspot_company(sb: CrmSandbox, tmp_path: Path, *, rotate: bool, lifetime: float = 1800.0) -> tuple[CredentialStore, Path, Any]:
    sb.add_tenant("hsco")
    tenant = sb.tenant("hsco")
    tenant.hubspot.token_lifetime = lifetime
    tenant.hubspot.add_oauth_app("client-1", "secret-1", "rt-1", rotate=rotate)
    tenant.hubspot.add_contact("booker@buyer.example")
    secrets = tmp_path / "secrets"
    (secrets / "hsco").mkdir(parents=True)
    path = secrets / "hsco" / "hubspot.json"
    path.write_text(json.dumps({"client_id": "client-1", "client_secret": "secret-1", "refresh_token": "rt-1",
                                "base_url": sb.hubspot_url}))
    os.chmod(path, 0o600)
    return replica(tmp_path), path, tenant


def replica(tmp_path: Path) -> CredentialStore:
    """One worker's view: the mounted secrets and the token directory every replica shares."""
    return CredentialStore(tmp_path / "secrets", allowed_hosts=SANDBOX_HOSTS, token_dir=tmp_path / "tokens")


def hubspot_client(store: CredentialStore, cache: auth.TokenCache | None = None) -> HubSpotClient:
    """Wired like the deliverer's: rotations kept by the store, refreshes under its lease."""
    return HubSpotClient(store.hubspot("hsco"), timeout=5, tokens=cache, token_key="hsco",
                         reload=lambda: store.hubspot("hsco", fresh=True),
                         persist=lambda changes: store.rotate("hsco", "hubspot", changes),
                         lease=lambda: store.refresh_lease("hsco", "hubspot"))


@pytest.fixture
def read_only_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The secrets directory as both deployments mount it: any write there fails with EROFS
    (the tests run as root, whom file modes do not stop)."""
    import errno
    import tempfile

    secrets = (tmp_path / "secrets").resolve()
    real_mkstemp, real_replace = tempfile.mkstemp, os.replace

    def refuse(target: Any) -> None:
        if str(Path(target).resolve()).startswith(str(secrets)):
            raise OSError(errno.EROFS, "Read-only file system", str(target))

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        refuse(kwargs.get("dir") or tempfile.gettempdir())
        return real_mkstemp(*args, **kwargs)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        refuse(dst)
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    return secrets


def test_hubspot_oauth_refreshes_before_expiry_and_keeps_a_rotated_refresh_token_on_a_read_only_mount(
    sb: CrmSandbox, tmp_path: Path, read_only_secrets: Path
) -> None:
    store, path, tenant = hubspot_company(sb, tmp_path, rotate=True, lifetime=1.0)
    mounted = path.read_bytes()
    cache = auth.TokenCache()
    client = hubspot_client(store, cache)
    assert set(client.find_contacts(["booker@buyer.example"])) == {"booker@buyer.example"}
    first = store.hubspot("hsco").refresh_token
    assert first != "rt-1" and client.refreshes == 1
    kept = tmp_path / "tokens" / "hsco" / "hubspot.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert sorted(p.name for p in kept.parent.iterdir()) == ["hubspot.json", "hubspot.lock"]  # no temp file

    wait_for(lambda: cache.get(("hsco", "client-1", sb.hubspot_url)) is None, 5,
             what="the access token to near its expiry")
    assert set(client.find_contacts(["booker@buyer.example"])) == {"booker@buyer.example"}
    assert client.refreshes == 2
    second = store.hubspot("hsco").refresh_token
    assert second not in ("rt-1", first)
    # Refreshed before it expired: HubSpot never had to answer 401.
    assert sb.calls("hsco").get("hubspot POST /crm/v3/objects/contacts/batch/read") == 2
    assert not tenant.hubspot.revoked
    assert path.read_bytes() == mounted  # the mount was never written

    # A restart reads the rotated token from the token directory and works; the used ones are dead.
    restarted = hubspot_client(replica(tmp_path))
    assert restarted.find_owner("nobody@seller.example") is None
    stale = requests.post(f"{sb.hubspot_url}/oauth/v1/token", timeout=5, data={
        "grant_type": "refresh_token", "client_id": "client-1", "client_secret": "secret-1", "refresh_token": "rt-1"})
    assert stale.status_code == 400 and stale.json()["status"] == "BAD_REFRESH_TOKEN"


def test_replicas_refreshing_at_once_never_spend_one_rotating_refresh_token_twice(
    sb: CrmSandbox, tmp_path: Path, read_only_secrets: Path
) -> None:
    """Each replica has its own store, token cache and client, built before any refresh (so each
    holds rt-1 in memory); they refresh together. The lease makes each one use the token the one
    before it rotated to: every refresh succeeds and HubSpot never sees a spent token."""
    import threading

    _, _, tenant = hubspot_company(sb, tmp_path, rotate=True)
    clients = [hubspot_client(replica(tmp_path)) for _ in range(4)]
    start = threading.Barrier(len(clients))
    errors: list[BaseException] = []

    def run(client: HubSpotClient) -> None:
        start.wait(10)
        try:
            client.find_owner("nobody@seller.example")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and [c.refreshes for c in clients] == [1, 1, 1, 1]
    assert token_calls(sb, "hubspot", "hsco") == 4 and not tenant.hubspot.revoked
    assert hubspot_client(replica(tmp_path)).find_owner("nobody@seller.example") is None  # the last one works


def test_hubspot_access_token_expiring_mid_run_is_refreshed_once_after_a_401(sb: CrmSandbox, tmp_path: Path) -> None:
    store, path, tenant = hubspot_company(sb, tmp_path, rotate=False)
    client = hubspot_client(store)
    client.find_owner("nobody@seller.example")
    for token in list(tenant.hubspot.tokens):
        if token.startswith("CNsandbox-"):
            tenant.hubspot.token_expiry[token] = time.time() - 1  # HubSpot expired it early
    assert client.find_owner("nobody@seller.example") is None
    assert client.refreshes == 2 and token_calls(sb, "hubspot", "hsco") == 2
    assert json.loads(path.read_text())["refresh_token"] == "rt-1"  # not rotated: file untouched
    assert not (tmp_path / "tokens" / "hsco" / "hubspot.json").exists()


def test_a_revoked_refresh_token_is_a_readable_auth_error(sb: CrmSandbox, tmp_path: Path) -> None:
    store, _, tenant = hubspot_company(sb, tmp_path, rotate=False)
    tenant.hubspot.revoke_refresh_token("rt-1")
    with pytest.raises(AuthError) as caught:
        hubspot_client(store).find_contacts(["booker@buyer.example"])
    assert caught.value.code == "BAD_REFRESH_TOKEN"
    assert "revoked" in caught.value.message
    assert HubSpotCredentials.from_dict(json.loads((tmp_path / "secrets/hsco/hubspot.json").read_text()),
                                        SANDBOX).auth_type == "oauth"


def test_the_control_api_sets_up_the_login_flows(sb: CrmSandbox, keys: dict[str, tuple[bytes, str]]) -> None:
    control = f"{sb.hubspot_url}/__sandbox"
    assert requests.post(f"{control}/tenants", json={"name": "ctl"}, timeout=5).status_code == 200
    for route, body in (("salesforce/connected-apps", {"consumer_key": "CK-ctl", "consumer_secret": "s", "run_as": USER}),
                        ("salesforce/session-lifetime", {"seconds": 60}),
                        ("hubspot/oauth-apps", {"client_id": "c", "client_secret": "s", "refresh_token": "r"}),
                        ("hubspot/token-lifetime", {"seconds": 5})):
        answer = requests.post(f"{control}/{route}?tenant=ctl", json=body, timeout=5)
        assert answer.status_code == 200, answer.text
    tenant = sb.tenant("ctl")
    assert tenant.salesforce.session_lifetime == 60 and tenant.hubspot.token_lifetime == 5
    token = auth.salesforce_client_credentials(auth.plain_session(sb.ca_file), consumer_key="CK-ctl",
                                               consumer_secret="s", my_domain_url=sb.salesforce_url)
    assert token.instance_url == sb.salesforce_url and tenant.salesforce.valid_session(token.access_token)
    assert requests.post(f"{control}/hubspot/revoke-refresh-token?tenant=ctl", json={"refresh_token": "r"},
                         timeout=5).status_code == 200
    with pytest.raises(AuthError):
        auth.hubspot_refresh(requests.Session(), token_url=f"{sb.hubspot_url}/oauth/v1/token", client_id="c",
                             client_secret="s", refresh_token="r")
