"""Pure parts of issue 13: the JWT assertion, token expiry and cache, token-endpoint errors, the new
credential layouts and their atomic rewrite, the preflight's evaluation and the quota arithmetic."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors import auth
from connectors.credentials import CredentialsInvalid, CredentialStore, HubSpotCredentials, SalesforceCredentials
from connectors.errors import AuthError, TransientError
from processors.domain.deliver import QuotaBook, usage_ratio
from processors.ops import crm

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# ---- JWT ------------------------------------------------------------------------------------------

def test_the_jwt_assertion_carries_salesforces_claims_and_verifies_with_the_public_key(key: rsa.RSAPrivateKey) -> None:
    token = auth.jwt_assertion("CK", "user@example.com", "https://login.salesforce.com/", pem(key), now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"], audience="https://login.salesforce.com",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == "CK" and claims["sub"] == "user@example.com"
    assert claims["aud"] == "https://login.salesforce.com"  # no trailing slash: Salesforce compares exactly
    assert claims["exp"] == int(NOW) + auth.ASSERTION_LIFETIME_S and claims["iat"] == int(NOW)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other.public_key(), algorithms=["RS256"], audience="https://login.salesforce.com",
                   options={"verify_exp": False, "verify_iat": False})


def test_each_assertion_is_unique(key: rsa.RSAPrivateKey) -> None:
    a = auth.jwt_assertion("CK", "u", "https://login.salesforce.com", pem(key), now=NOW)
    b = auth.jwt_assertion("CK", "u", "https://login.salesforce.com", pem(key), now=NOW)
    assert a != b


def test_an_unreadable_or_invalid_key_file_is_a_readable_auth_error(tmp_path: Path) -> None:
    import requests

    with pytest.raises(AuthError) as missing:
        auth.salesforce_jwt(requests.Session(), consumer_key="CK", username="u", login_url="https://x.invalid",
                            private_key_file=str(tmp_path / "nope.pem"))
    assert missing.value.code == "PRIVATE_KEY_UNREADABLE" and "nope" not in missing.value.message
    garbage = tmp_path / "bad.pem"
    garbage.write_text("not a key")
    with pytest.raises(AuthError) as invalid:
        auth.salesforce_jwt(requests.Session(), consumer_key="CK", username="u", login_url="https://x.invalid",
                            private_key_file=str(garbage))
    assert invalid.value.code == "PRIVATE_KEY_INVALID"


# ---- tokens and their cache -----------------------------------------------------------------------

def test_a_token_is_refreshed_before_it_expires() -> None:
    token = auth.token_from({"access_token": "t", "expires_in": 1800}, NOW)
    assert token.expires_at == NOW + 1800 and token.lifetime == 1800
    assert token.fresh(NOW + 1739) and not token.fresh(NOW + 1740)  # 60 s margin
    short = auth.token_from({"access_token": "t", "expires_in": 2}, NOW)
    assert short.fresh(NOW + 1.79) and not short.fresh(NOW + 1.8)  # 10% of a short life
    salesforce = auth.token_from({"access_token": "SECRET-TOKEN", "instance_url": "https://org.my.salesforce.com/"}, NOW)
    assert salesforce.expires_at is None and salesforce.fresh(NOW + 10**9)
    assert salesforce.instance_url == "https://org.my.salesforce.com"
    assert "SECRET-TOKEN" not in repr(salesforce)


def test_the_cache_forgets_expired_and_dropped_tokens() -> None:
    now = [NOW]
    cache = auth.TokenCache(clock=lambda: now[0])
    cache.put(("hubspot", "a"), auth.token_from({"access_token": "A", "expires_in": 600}, NOW))
    cache.put(("hubspot", "b"), auth.token_from({"access_token": "B"}, NOW))
    assert cache.get(("hubspot", "a")).access_token == "A"  # type: ignore[union-attr]
    now[0] = NOW + 599
    assert cache.get(("hubspot", "a")) is None
    assert cache.get(("hubspot", "b")).access_token == "B"  # type: ignore[union-attr]
    cache.drop(("hubspot", "b"))
    assert cache.get(("hubspot", "b")) is None and cache.get("unknown") is None


# ---- token endpoint errors -----------------------------------------------------------------------

@pytest.mark.parametrize(("crm", "status", "body", "code", "words"), [
    ("salesforce", 400, {"error": "invalid_grant", "error_description": "invalid assertion"}, "invalid_grant", "wrong private key"),
    ("salesforce", 400, {"error": "invalid_grant", "error_description": "expired authorization code"}, "invalid_grant", "clock"),
    ("salesforce", 400, {"error": "invalid_grant", "error_description": "something new"}, "invalid_grant", "invalid grant"),
    ("salesforce", 400, {"error": "invalid_client", "error_description": "invalid client credentials"}, "invalid_client", "secret"),
    ("salesforce", 400, {"error": "invalid_client_id", "error_description": "client identifier invalid"}, "invalid_client_id", "consumer key"),
    ("hubspot", 400, {"status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token"}, "BAD_REFRESH_TOKEN", "revoked"),
    ("hubspot", 400, {"status": "BAD_CLIENT_SECRET", "message": "x"}, "BAD_CLIENT_SECRET", "secret"),
    ("hubspot", 401, None, "HTTP_401", "refused"),
])
def test_token_errors_are_auth_errors_with_our_own_sentences(crm: str, status: int, body: object, code: str, words: str) -> None:
    error = auth.token_error(crm, status, body)
    assert isinstance(error, AuthError) and error.code == code and words in error.message
    assert "missing or invalid" not in error.message  # never the CRM's raw text


def test_a_login_service_outage_is_transient() -> None:
    error = auth.token_error("salesforce", 503, None, {"Retry-After": "7"})
    assert isinstance(error, TransientError) and error.retry_after == 7.0
    assert isinstance(auth.token_error("hubspot", 429, {}), TransientError)


# ---- credentials ------------------------------------------------------------------------------------

def test_salesforce_flows_are_told_apart() -> None:
    jwt_creds = SalesforceCredentials.from_dict({"consumer_key": "CK", "username": "u", "private_key_file": "/k.pem"})
    assert jwt_creds.auth_type == "jwt" and jwt_creds.oauth and jwt_creds.token_base_url == "https://login.salesforce.com"
    cc = SalesforceCredentials.from_dict({"consumer_key": "CK", "consumer_secret": "SECRET-S", "my_domain_url": "https://acme.my.salesforce.com/"})
    assert cc.auth_type == "client_credentials" and cc.token_base_url == "https://acme.my.salesforce.com"
    legacy = SalesforceCredentials.from_dict({"consumer_key": "CK", "consumer_secret": "s", "domain": "acme.my"})
    assert legacy.token_base_url == "https://acme.my.salesforce.com"
    password = SalesforceCredentials.from_dict({"username": "u", "password": "p", "consumer_key": "CK", "private_key_file": "/k"})
    assert password.auth_type == "password" and not password.oauth
    assert "SECRET-S" not in repr(cc)
    with pytest.raises(CredentialsInvalid):
        SalesforceCredentials.from_dict({"consumer_key": "CK", "consumer_secret": "s"})
    with pytest.raises(CredentialsInvalid):
        SalesforceCredentials.from_dict({"consumer_key": "CK", "username": "u", "private_key_file": "/k", "login_url": "http://x"})


def test_hubspot_oauth_or_private_app() -> None:
    oauth = HubSpotCredentials.from_dict({"client_id": "c", "client_secret": "SECRET-S", "refresh_token": "SECRET-R"})
    assert oauth.auth_type == "oauth" and oauth.oauth_token_url == "https://api.hubapi.com/oauth/v1/token"
    assert HubSpotCredentials.from_dict({"access_token": "pat"}).auth_type == "private_app"
    with pytest.raises(CredentialsInvalid):
        HubSpotCredentials.from_dict({"client_id": "c", "client_secret": "s"})
    assert "SECRET" not in repr(oauth)


def test_update_rewrites_the_file_atomically_keeping_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "acme" / "hubspot.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"client_id": "c", "client_secret": "s", "refresh_token": "r1"}))
    os.chmod(path, 0o600)
    store = CredentialStore(tmp_path)
    assert store.hubspot("acme").refresh_token == "r1"
    inode = path.stat().st_ino
    store.update("acme", "hubspot", {"refresh_token": "r2"})
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["hubspot.json"]
    assert json.loads(path.read_text()) == {"client_id": "c", "client_secret": "s", "refresh_token": "r2"}
    assert store.hubspot("acme").refresh_token == "r2"


# ---- the preflight's evaluation ---------------------------------------------------------------------

DESCRIBE = {"createable": True, "fields": [{"name": "Subject"}, {"name": "CrmSyncActionId__c", "externalId": True, "unique": True},
                                            {"name": "Legacy__c", "externalId": True, "unique": False}]}


def test_task_checks() -> None:
    [create, field] = crm.task_checks(DESCRIBE, "crmsyncactionid__c")
    assert create.ok and field.ok and "unique" in field.detail
    [_, none] = crm.task_checks(DESCRIBE, None)
    assert none.ok and "none configured" in none.detail
    [_, absent] = crm.task_checks(DESCRIBE, "Missing__c")
    assert not absent.ok and "prepare" in absent.detail
    [_, weak] = crm.task_checks(DESCRIBE, "Legacy__c")
    assert not weak.ok and "not unique" in weak.detail
    [denied, _] = crm.task_checks({**DESCRIBE, "createable": False}, None)
    assert not denied.ok and "may not create Tasks" in denied.detail


def test_scope_check() -> None:
    assert crm.scope_check(crm.HUBSPOT_SCOPES).ok
    missing = crm.scope_check(["crm.objects.contacts.read"])
    assert not missing.ok and "crm.objects.owners.read" in missing.detail and "crm.objects.contacts.write" in missing.detail


def test_quota_check_and_limits_parsing() -> None:
    assert crm.salesforce_limits_usage({"DailyApiRequests": {"Max": 15000, "Remaining": 14000}}) == (1000, 15000)
    assert crm.salesforce_limits_usage({}) is None
    assert crm.salesforce_limits_usage({"DailyApiRequests": {"Max": "x"}}) is None
    ok = crm.quota_check("salesforce", (1000, 15000), 0.95)
    assert ok.ok and "14000 of 15000 daily calls left (7% used)" in ok.detail
    full = crm.quota_check("hubspot", (96, 100), 0.95)
    assert not full.ok and "deferred" in full.detail
    assert crm.quota_check("hubspot", None, 0.95).ok


def test_lines_and_exit_codes() -> None:
    good = crm.Check("salesforce", "login", True, "logged in")
    bad = crm.Check("hubspot", "lookups", False, "boom")
    assert good.line().split() == ["salesforce", "login", "ok", "logged", "in"]
    assert "FAILED" in bad.line()
    assert crm.exit_code([good]) == 0 and crm.exit_code([good, bad]) == 1 and crm.exit_code([]) == 1


# ---- quota arithmetic ------------------------------------------------------------------------------

def test_usage_ratio() -> None:
    assert usage_ratio(0, 100) == 0.0 and usage_ratio(95, 100) == 0.95
    assert usage_ratio(110, 100) == 1.1  # orgs may briefly run over
    assert usage_ratio(1, 0) is None and usage_ratio(-1, 10) is None


def test_quota_book_defers_until_a_probe_and_reports_the_worst_tenant() -> None:
    now = [0.0]
    book = QuotaBook(defer_ratio=0.95, probe_after=600, clock=lambda: now[0])
    book.record(("salesforce", "a"), 960, 1000)
    book.record(("salesforce", "b"), 500, 1000)
    book.record(("salesforce", "c"), 850, 1000)
    book.record(("hubspot", "a"), 10, 0)  # unknown limit: ignored
    assert book.wait(("salesforce", "a")) == 600 and book.wait(("salesforce", "b")) == 0
    assert book.wait(("hubspot", "a")) == 0 and book.ratio(("hubspot", "a")) is None
    assert book.worst("salesforce") == 0.96 and book.worst("hubspot") == 0.0
    assert book.above("salesforce") == 2 and book.above("salesforce", 0.95) == 1
    now[0] = 600.0
    assert book.wait(("salesforce", "a")) == 0  # one probe batch goes through and reads it again
    book.record(("salesforce", "a"), 400, 1000)
    assert book.wait(("salesforce", "a")) == 0 and book.worst("salesforce") == 0.85


def test_companies_on_the_retiring_password_flow_are_named_at_start_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from connectors.retry import RetryPolicy
    from processors.metrics import Metrics
    from processors.stages.deliverer import Deliverer

    for company, data in (("old-co", {"username": "u", "password": "p", "security_token": "t"}),
                          ("new-co", {"consumer_key": "CK", "username": "u", "private_key_file": "/k.pem"}),
                          ("broken-co", None)):
        (tmp_path / company).mkdir()
        (tmp_path / company / "salesforce.json").write_text(json.dumps(data) if data else "{not json")
    store = CredentialStore(tmp_path)
    assert store.salesforce_password_companies() == ["old-co"]
    deliverer = Deliverer(store, None, RetryPolicy(), Metrics.create())
    with caplog.at_level("WARNING"):
        deliverer.warn_retiring_logins()
    [record] = [r for r in caplog.records if "retiring" in r.getMessage()]
    assert record.company_id == "old-co" and "p" not in record.getMessage().split()  # type: ignore[attr-defined]


def test_a_token_answers_instance_url_off_salesforce_is_refused_before_any_request(tmp_path: Path) -> None:
    """A token endpoint (or a man in the middle of a mis-set login URL) names where the session goes."""
    from connectors.errors import PermanentError
    from connectors.salesforce import SalesforceClient

    creds = SalesforceCredentials(consumer_key="CK", consumer_secret="s", my_domain_url="https://acme.my.salesforce.com")
    for instance in ("http://acme.my.salesforce.com", "https://10.0.0.1", "https://acme.my.salesforce.com.evil.example"):
        cache = auth.TokenCache()
        client = SalesforceClient(creds, tokens=cache, token_key="acme")
        cache.put(client._cache_key(), auth.Token("00Dsecret!session", instance_url=instance, expires_at=None))
        with pytest.raises(PermanentError) as info:
            client.sf
        assert info.value.code == "ENDPOINT_REFUSED" and "00Dsecret" not in str(info.value)
    cache = auth.TokenCache()
    client = SalesforceClient(creds, tokens=cache, token_key="acme")
    cache.put(client._cache_key(), auth.Token("00Dsecret!session", instance_url="https://acme.my.salesforce.com"))
    assert client.sf.sf_instance == "acme.my.salesforce.com"


def test_companies_whose_credentials_are_refused_are_named_at_start_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from connectors.retry import RetryPolicy
    from processors.metrics import Metrics
    from processors.stages.deliverer import Deliverer

    for company, crm, data in (("ok-co", "hubspot", {"access_token": "pat-na1-SECRET"}),
                               ("evil-co", "hubspot", {"access_token": "pat-na1-SECRET", "base_url": "http://10.0.0.1"}),
                               ("thief-co", "salesforce", {"consumer_key": "CK", "username": "u", "private_key_file": "/k.pem"})):
        (tmp_path / company).mkdir()
        (tmp_path / company / f"{crm}.json").write_text(json.dumps(data))
    store = CredentialStore(tmp_path)
    assert [(c, crm, e.code) for c, crm, e in store.refused()] == [
        ("thief-co", "salesforce", "CREDENTIALS_INVALID"), ("evil-co", "hubspot", "ENDPOINT_REFUSED")]
    with caplog.at_level("ERROR"):
        Deliverer(store, None, RetryPolicy(), Metrics.create()).warn_retiring_logins()
    named = {(r.company_id, r.error_code) for r in caplog.records if "credentials refused" in r.getMessage()}  # type: ignore[attr-defined]
    assert named == {("thief-co", "CREDENTIALS_INVALID"), ("evil-co", "ENDPOINT_REFUSED")}
    assert all("SECRET" not in r.getMessage() for r in caplog.records)


def test_a_password_logins_answered_instance_off_salesforce_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SOAP login answer names the server, like a token answer: checked the same way (no request
    is sent: the login itself is replaced here)."""
    import simple_salesforce.api

    from connectors.errors import PermanentError
    from connectors.salesforce import SalesforceClient

    creds = SalesforceCredentials(username="u", password="PW-SECRET", security_token="t", domain="login")
    for instance, ok in (("acme.my.salesforce.com", True), ("10.0.0.1", False), ("acme.my.salesforce.com.evil.example", False)):
        monkeypatch.setattr(simple_salesforce.api, "SalesforceLogin", lambda **kw: ("00Dx!session", instance))
        client = SalesforceClient(creds)
        if ok:
            assert client.sf.sf_instance == instance
            continue
        with pytest.raises(PermanentError) as info:
            client.sf
        assert info.value.code == "ENDPOINT_REFUSED" and "PW-SECRET" not in str(info.value)


def test_prepare_on_a_read_only_mount_says_what_to_add(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hubspot.json").write_text(json.dumps({"access_token": "pat-na1-x"}))
    store = CredentialStore(tmp_path)

    def read_only(*args: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store, "update", read_only)
    with pytest.raises(ValueError) as info:
        crm._record(store, "acme", "hubspot", {"action_id_property": "crm_sync_action_id"}, "created meetings.p")
    assert str(info.value) == ('hubspot: created meetings.p, but hubspot.json could not be written (Read-only file '
                               'system): add {"action_id_property": "crm_sync_action_id"} to the company\'s '
                               'hubspot.json where it is kept')
