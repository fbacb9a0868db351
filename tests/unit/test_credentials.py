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
    assert CredentialStore(secrets, allow_default=True).hubspot("other").access_token == "pat-DEFAULT"


def test_default_directory_only_when_company_has_none(secrets: Path) -> None:
    store = CredentialStore(secrets, allow_default=True)
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
