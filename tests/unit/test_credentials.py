"""Per-company credentials: files, the _default fallback behind its switch, rotation, no secrets shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from connectors.credentials import (
    CredentialsInvalid, CredentialsMissing, CredentialStore, HubSpotCredentials, SalesforceCredentials,
)
from connectors.errors import PermanentError


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    write(tmp_path / "acme" / "salesforce.json",
          {"instance_url": "https://acme.my.salesforce.com", "session_id": "SESSION-SECRET"})
    write(tmp_path / "acme" / "hubspot.json", {"access_token": "pat-SECRET"})
    write(tmp_path / "_default" / "salesforce.json",
          {"username": "u@example.com", "password": "PW-SECRET", "security_token": "TOK-SECRET",
           "domain": "test"})
    write(tmp_path / "_default" / "hubspot.json",
          {"access_token": "pat-DEFAULT", "base_url": "http://127.0.0.1:9/"})
    return tmp_path


def test_reads_company_files(secrets: Path) -> None:
    store = CredentialStore(secrets)
    sf = store.salesforce("acme")
    assert (sf.auth_type, sf.session_id) == ("session", "SESSION-SECRET")
    assert sf.salesforce_kwargs() == {"session_id": "SESSION-SECRET",
                                      "instance_url": "https://acme.my.salesforce.com"}
    hs = store.hubspot("acme")
    assert (hs.access_token, hs.base_url) == ("pat-SECRET", "https://api.hubapi.com")


SECRETS = ("SESSION-SECRET", "PW-SECRET", "TOK-SECRET", "pat-SECRET", "pat-DEFAULT")


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
def test_no_company_directory_is_missing_without_the_switch(secrets: Path, crm: str) -> None:
    store = CredentialStore(secrets)
    assert store.allow_default is False
    with pytest.raises(CredentialsMissing) as info:
        getattr(store, crm)("other")
    error = info.value
    assert isinstance(error, PermanentError) and error.code == "CREDENTIALS_MISSING"
    assert error.crm == crm
    assert error.message == (
        f"no {crm} credentials for this company: create {secrets / 'other' / f'{crm}.json'}")
    shown = " ".join([str(error), repr(error), json.dumps(error.as_dict())])
    assert all(secret not in shown for secret in SECRETS)
    assert not (secrets / "other").exists()


def test_a_company_directory_without_the_file_names_the_file(secrets: Path) -> None:
    (secrets / "acme" / "hubspot.json").unlink()
    for allow in (False, True):
        with pytest.raises(CredentialsMissing) as info:
            CredentialStore(secrets, allow_default=allow).hubspot("acme")
        assert info.value.message.endswith(f"create {secrets / 'acme' / 'hubspot.json'}")
        assert "pat-DEFAULT" not in str(info.value)


def test_the_default_is_never_read_without_the_switch(secrets: Path) -> None:
    store = CredentialStore(secrets)
    with pytest.raises(CredentialsMissing):
        store.hubspot("other")
    assert store.hubspot("acme").access_token == "pat-SECRET"
    allowed = CredentialStore(secrets, allow_default=True, allowed_hosts="http://127.0.0.1")
    assert allowed.hubspot("other").access_token == "pat-DEFAULT"


def test_default_directory_only_when_company_has_none(secrets: Path) -> None:
    store = CredentialStore(secrets, allow_default=True, allowed_hosts="http://127.0.0.1")
    sf = store.salesforce("other")
    assert sf.auth_type == "password" and sf.can_login
    assert sf.salesforce_kwargs()["domain"] == "test"
    assert store.hubspot("other").base_url == "http://127.0.0.1:9"
    (secrets / "acme" / "hubspot.json").unlink()
    with pytest.raises(CredentialsMissing) as info:
        store.hubspot("acme")
    assert isinstance(info.value, PermanentError) and info.value.code == "CREDENTIALS_MISSING"


def test_missing_everything_and_unsafe_company_ids(tmp_path: Path) -> None:
    for allow in (False, True):
        store = CredentialStore(tmp_path, allow_default=allow)
        with pytest.raises(CredentialsMissing) as info:
            store.salesforce("acme")
        assert str(tmp_path / "acme" / "salesforce.json") in info.value.message
        for bad in ("../acme", "a/b", "", "_default", ".hidden"):
            with pytest.raises(CredentialsMissing) as info:
                store.hubspot(bad)
            assert info.value.message == "the company id cannot name a secrets directory"


def test_invalid_files(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hubspot.json").write_text("{not json")
    write(tmp_path / "acme" / "salesforce.json", {"instance_url": "https://x"})
    store = CredentialStore(tmp_path)
    with pytest.raises(CredentialsInvalid):
        store.hubspot("acme")
    with pytest.raises(CredentialsInvalid) as info:
        store.salesforce("acme")
    assert "SECRET" not in str(info.value)


def test_rotation_is_picked_up_and_fresh_forces_a_reread(secrets: Path) -> None:
    store = CredentialStore(secrets)
    path = secrets / "acme" / "hubspot.json"
    assert store.hubspot("acme").access_token == "pat-SECRET"
    write(path, {"access_token": "pat-ROTATED"})
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert store.hubspot("acme").access_token == "pat-ROTATED"
    assert store.hubspot("acme", fresh=True).access_token == "pat-ROTATED"
    store.reload()
    assert store.hubspot("acme").access_token == "pat-ROTATED"


def test_env_var_sets_the_directory(secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_SYNC_SECRETS_DIR", str(secrets))
    assert CredentialStore().secrets_dir == secrets


def test_repr_never_shows_secrets(secrets: Path) -> None:
    store = CredentialStore(secrets, allow_default=True)
    shown = " ".join(repr(x) for x in (store.salesforce("acme"), store.salesforce("x"),
                                      store.hubspot("acme"), store))
    for secret in SECRETS:
        assert secret not in shown
    assert repr(store) == f"CredentialStore(secrets_dir={str(secrets)!r}, allow_default=True)"
    assert repr(HubSpotCredentials("t0ken")) == "HubSpotCredentials(base_url='https://api.hubapi.com')"
    assert "s3cret" not in repr(SalesforceCredentials(instance_url="https://x", session_id="s3cret"))
    assert "s3cret" not in str([SalesforceCredentials(instance_url="https://x", session_id="s3cret")])


# ---- endpoints: https, on the CRMs' own domains, unless the allow-list names the host --------------

BAD_HUBSPOT = [
    {"access_token": "pat-SECRET", "base_url": "http://10.0.0.1/"},
    {"access_token": "pat-SECRET", "base_url": "https://10.0.0.1/"},
    {"access_token": "pat-SECRET", "base_url": "http://api.hubapi.com"},
    {"access_token": "pat-SECRET", "base_url": "https://api.hubapi.com.evil.example"},
    {"access_token": "pat-SECRET", "base_url": "https://api.hubapi.com@10.0.0.1/"},
    {"access_token": "pat-SECRET", "base_url": "https://10.0.0.1\\@api.hubapi.com/"},
    {"access_token": "pat-SECRET", "base_url": "https://evilhubapi.com"},
    {"access_token": "pat-SECRET", "base_url": "ftp://api.hubapi.com"},
    {"access_token": "pat-SECRET", "base_url": "https://acme.my.salesforce.com"},  # another CRM's host
    {"client_id": "c", "client_secret": "CS-SECRET", "refresh_token": "RT-SECRET", "token_url": "http://10.0.0.1/"},
    {"client_id": "c", "client_secret": "CS-SECRET", "refresh_token": "RT-SECRET",
     "token_url": "https://10.0.0.1/oauth/v1/token"},
    {"client_id": "c", "client_secret": "CS-SECRET", "refresh_token": "RT-SECRET", "base_url": "http://10.0.0.1"},
]
BAD_SALESFORCE = [
    {"instance_url": "http://acme.my.salesforce.com", "session_id": "SESSION-SECRET"},
    {"instance_url": "https://10.0.0.1", "session_id": "SESSION-SECRET"},
    {"instance_url": "10.0.0.1:443", "session_id": "SESSION-SECRET"},
    {"instance_url": "https://acme.my.salesforce.com.evil.example", "session_id": "SESSION-SECRET"},
    {"consumer_key": "CK", "username": "u", "private_key_file": "key.pem", "login_url": "https://10.0.0.1"},
    {"consumer_key": "CK", "consumer_secret": "CS-SECRET", "my_domain_url": "https://evil.example"},
    {"consumer_key": "CK", "consumer_secret": "CS-SECRET", "domain": "evil.example/x?"},
    {"username": "u", "password": "PW-SECRET", "security_token": "T", "domain": "10.0.0.1:80/x#"},
]


def company_file(tmp_path: Path, crm: str, data: dict[str, str]) -> CredentialStore:
    write(tmp_path / "acme" / f"{crm}.json", data)
    (tmp_path / "acme" / "key.pem").write_text("not read here")
    return CredentialStore(tmp_path)


@pytest.mark.parametrize("data", BAD_HUBSPOT)
def test_a_hubspot_url_off_hubspots_domains_or_not_https_is_refused(tmp_path: Path, data: dict[str, str]) -> None:
    with pytest.raises(PermanentError) as info:
        company_file(tmp_path, "hubspot", data).hubspot("acme")
    assert info.value.code == "ENDPOINT_REFUSED" and "refused" in info.value.message
    assert not any(s in str(info.value) for s in ("SECRET", "oauth/v1"))


@pytest.mark.parametrize("data", BAD_SALESFORCE)
def test_a_salesforce_url_off_salesforces_domains_or_not_https_is_refused(tmp_path: Path, data: dict[str, str]) -> None:
    with pytest.raises(PermanentError) as info:
        company_file(tmp_path, "salesforce", data).salesforce("acme")
    assert info.value.code == "ENDPOINT_REFUSED" and "SECRET" not in str(info.value)


@pytest.mark.parametrize("crm, data", [
    ("hubspot", {"access_token": "pat-SECRET"}),
    ("hubspot", {"access_token": "pat-SECRET", "base_url": "https://api.hubspot.com/"}),
    ("hubspot", {"access_token": "pat-SECRET", "base_url": "https://api-eu1.hubapi.com"}),
    ("hubspot", {"client_id": "c", "client_secret": "s", "refresh_token": "r",
                 "token_url": "https://api.hubapi.com/oauth/v1/token"}),
    ("salesforce", {"instance_url": "https://acme.my.salesforce.com", "session_id": "s"}),
    ("salesforce", {"instance_url": "acme.my.salesforce.com", "session_id": "s"}),
    ("salesforce", {"instance_url": "https://acme--uat.sandbox.my.salesforce.com", "session_id": "s"}),
    ("salesforce", {"consumer_key": "CK", "username": "u", "private_key_file": "key.pem"}),
    ("salesforce", {"consumer_key": "CK", "username": "u", "private_key_file": "key.pem",
                    "login_url": "https://test.salesforce.com"}),
    ("salesforce", {"consumer_key": "CK", "consumer_secret": "s", "my_domain_url": "https://acme.my.salesforce.com"}),
    ("salesforce", {"consumer_key": "CK", "consumer_secret": "s", "domain": "acme.my"}),
    ("salesforce", {"instance_url": "https://acme.lightning.force.com", "session_id": "s"}),
])
def test_the_crms_own_https_hosts_are_accepted(tmp_path: Path, crm: str, data: dict[str, str]) -> None:
    store = company_file(tmp_path, crm, data)
    assert getattr(store, crm)("acme").auth_type


def test_the_allow_list_names_other_hosts_https_only_unless_listed_as_http(tmp_path: Path) -> None:
    write(tmp_path / "acme" / "hubspot.json", {"access_token": "t", "base_url": "https://127.0.0.1:8443"})
    write(tmp_path / "http-co" / "hubspot.json", {"access_token": "t", "base_url": "http://127.0.0.1:8080"})
    write(tmp_path / "other" / "hubspot.json", {"access_token": "t", "base_url": "http://10.0.0.1:8080"})
    https_only = CredentialStore(tmp_path, allowed_hosts="127.0.0.1")
    assert https_only.hubspot("acme").base_url == "https://127.0.0.1:8443"
    with pytest.raises(PermanentError, match="only https"):
        https_only.hubspot("http-co")
    plain = CredentialStore(tmp_path, allowed_hosts="http://127.0.0.1")
    assert plain.hubspot("http-co").base_url == "http://127.0.0.1:8080"
    with pytest.raises(PermanentError, match="only https"):
        plain.hubspot("other")  # http is allowed to the listed host only
    with pytest.raises(ValueError, match="CRM_SYNC_CRM_ALLOWED_HOSTS"):
        CredentialStore(tmp_path, allowed_hosts="http://*.example")


# ---- private_key_file: inside the company's own secrets directory ----------------------------------

def jwt_file(tmp_path: Path, company: str, key_file: str) -> CredentialStore:
    write(tmp_path / company / "salesforce.json", {"consumer_key": "CK", "username": "u", "private_key_file": key_file})
    return CredentialStore(tmp_path)


def test_a_key_file_inside_the_company_directory_is_resolved_there(tmp_path: Path) -> None:
    write(tmp_path / "acme" / "keys" / "jwt.pem", "k")
    assert jwt_file(tmp_path, "acme", "keys/jwt.pem").salesforce("acme").private_key_file == \
        os.path.realpath(tmp_path / "acme" / "keys" / "jwt.pem")
    absolute = str(tmp_path / "acme" / "keys" / "jwt.pem")
    assert jwt_file(tmp_path, "acme", absolute).salesforce("acme").private_key_file == os.path.realpath(absolute)


@pytest.mark.parametrize("where", ["other-tenant", "outside", "dotdot", "symlink", "nul"])
def test_a_key_file_outside_the_company_directory_is_refused(tmp_path: Path, where: str) -> None:
    write(tmp_path / "secrets" / "other" / "jwt.pem", "another tenant's key")
    write(tmp_path / "elsewhere.pem", "k")
    secrets = tmp_path / "secrets"
    (secrets / "acme").mkdir(parents=True)
    if where == "symlink":
        os.symlink(secrets / "other" / "jwt.pem", secrets / "acme" / "jwt.pem")
    key_file = {"other-tenant": str(secrets / "other" / "jwt.pem"), "outside": str(tmp_path / "elsewhere.pem"),
                "dotdot": "../other/jwt.pem", "symlink": "jwt.pem", "nul": "jwt.pem\x00../../x"}[where]
    with pytest.raises(PermanentError) as info:
        jwt_file(secrets, "acme", key_file).salesforce("acme")
    assert info.value.code == "CREDENTIALS_INVALID" and "private_key_file" in info.value.message
    assert "another tenant" not in str(info.value)


# ---- a rotated refresh token goes to the writable token directory, never into the mounted file ------

def oauth_company(tmp_path: Path, refresh: str = "rt-1") -> tuple[Path, Path]:
    secrets, tokens = tmp_path / "secrets", tmp_path / "tokens"
    write(secrets / "acme" / "hubspot.json", {"client_id": "c", "client_secret": "s", "refresh_token": refresh})
    return secrets, tokens


def test_a_rotated_refresh_token_is_kept_in_the_token_directory_and_read_back(tmp_path: Path) -> None:
    secrets, tokens = oauth_company(tmp_path)
    mounted = (secrets / "acme" / "hubspot.json").read_bytes()
    store = CredentialStore(secrets, token_dir=tokens)
    assert store.hubspot("acme").refresh_token == "rt-1"
    store.rotate("acme", "hubspot", {"refresh_token": "rt-2"})
    assert (secrets / "acme" / "hubspot.json").read_bytes() == mounted  # the read-only mount is never written
    kept = tokens / "acme" / "hubspot.json"
    assert (kept.stat().st_mode & 0o777) == 0o600 and "rt-2" in kept.read_text()
    assert store.hubspot("acme").refresh_token == "rt-2"
    assert CredentialStore(secrets, token_dir=tokens).hubspot("acme").refresh_token == "rt-2"  # a restart
    store.rotate("acme", "hubspot", {"refresh_token": "rt-3"})
    assert CredentialStore(secrets, token_dir=tokens).hubspot("acme").refresh_token == "rt-3"
    assert "rt-1" not in kept.read_text()  # only a digest of the mounted token it replaces


def test_a_new_authorization_in_the_mounted_file_wins_over_an_older_rotation(tmp_path: Path) -> None:
    secrets, tokens = oauth_company(tmp_path)
    store = CredentialStore(secrets, token_dir=tokens)
    store.rotate("acme", "hubspot", {"refresh_token": "rt-2"})
    write(secrets / "acme" / "hubspot.json", {"client_id": "c", "client_secret": "s", "refresh_token": "rt-NEW"})
    assert store.hubspot("acme", fresh=True).refresh_token == "rt-NEW"
    assert CredentialStore(secrets, token_dir=tokens).hubspot("acme").refresh_token == "rt-NEW"


def test_the_refresh_lease_serialises_refreshers_and_yields_the_latest_token(tmp_path: Path) -> None:
    import threading
    import time

    secrets, tokens = oauth_company(tmp_path)
    replicas = [CredentialStore(secrets, token_dir=tokens) for _ in range(2)]
    inside: list[str] = []
    order: list[str] = []

    def refresher(i: int) -> None:
        with replicas[i].refresh_lease("acme", "hubspot") as latest:
            inside.append(str(i))
            assert len(inside) == 1, "two refreshers held the lease at once"
            order.append(latest.refresh_token or "")
            time.sleep(0.05)
            replicas[i].rotate("acme", "hubspot", {"refresh_token": f"rt-after-{i}"})
            inside.remove(str(i))

    threads = [threading.Thread(target=refresher, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert order[0] == "rt-1" and all(token.startswith("rt-after-") for token in order[1:])
    assert (tokens / "acme" / "hubspot.lock").exists()


def test_a_refused_endpoint_is_its_own_permanent_error_class() -> None:
    from connectors.credentials import EndpointRefused
    from processors.domain.errors import error_class

    refused = EndpointRefused("hubspot", "token_url http://10.0.0.1 is refused")
    assert isinstance(refused, PermanentError) and isinstance(refused, CredentialsInvalid)
    assert error_class(refused) == "EndpointRefused" and refused.as_dict()["code"] == "ENDPOINT_REFUSED"
    assert error_class(CredentialsInvalid("hubspot", "x")) == "CredentialsInvalid"


@pytest.mark.parametrize("allowed, url, ok", [
    ("", "https://API.HUBAPI.COM./crm/v3", True),
    ("", "https://hubapi.com", False),  # *.hubapi.com is below the domain, not the domain itself
    ("", "https://api.hubapi.com:8443", True),
    ("", "https://[::1]:8443", False),
    ("[::1]", "https://[::1]:8443", True),
    ("*.proxy.example", "https://crm.proxy.example", True),
    ("*.proxy.example", "http://crm.proxy.example", False),
    ("http://127.0.0.1", "https://127.0.0.1:8443", True),
    ("http://127.0.0.1", "http://127.0.0.2:8080", False),
    ("", "https://api.hubapi.com\t.evil.example", False),
    ("", "https://api.hubapi.com%2F@10.0.0.1", False),
    ("", "https:///api.hubapi.com", False),
    ("", "javascript://api.hubapi.com", False),
])
def test_the_endpoint_policy_as_a_table(allowed: str, url: str, ok: bool) -> None:
    from connectors.credentials import EndpointPolicy, EndpointRefused

    policy = EndpointPolicy.parse(allowed)
    if ok:
        assert policy.check("hubspot", "base_url", url) == url.rstrip("/")
    else:
        with pytest.raises(EndpointRefused):
            policy.check("hubspot", "base_url", url)


def test_an_unusable_token_directory_defers_the_refresh_instead_of_crashing(tmp_path: Path) -> None:
    from connectors.errors import TransientError

    secrets, _ = oauth_company(tmp_path)
    (tmp_path / "not-a-dir").write_text("a file where the token directory should be")
    store = CredentialStore(secrets, token_dir=tmp_path / "not-a-dir")
    for _ in range(2):  # the thread lock was released: the second try fails as fast as the first
        with pytest.raises(TransientError) as info:
            with store.refresh_lease("acme", "hubspot"):
                pass
        assert info.value.code == "TOKEN_DIR_UNAVAILABLE" and "CRM_SYNC_TOKEN_DIR" in info.value.message
