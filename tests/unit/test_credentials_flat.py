"""The flat layout: every company's files in one directory (`<company>.<crm>.json`), as a
Kubernetes Secret mounted whole lays them out, and the kubelet's in-place update of it (a new
timestamped directory, then the `..data` link swapped): a company added or changed is read on
its next lookup, with no restart, and no company can name another's key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from connectors.credentials import CredentialsInvalid, CredentialsMissing, CredentialStore


class Kubelet:
    """Lays out a Secret volume the way the kubelet does: `..<stamp>/` holds the files, `..data`
    links to it, and each key is a link `key -> ..data/key`; an update swaps `..data` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    def publish(self, keys: dict[str, str]) -> None:
        self.generation += 1
        stamp = self.root / f"..2026_12_08_00_00_00.{self.generation}"
        stamp.mkdir()
        for key, value in keys.items():
            (stamp / key).write_text(value)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.replace(tmp, self.root / "..data")
        for key in keys:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for old in self.root.iterdir():
            if old.is_symlink() and old.name not in keys and not old.name.startswith(".."):
                old.unlink()


def sf(session: str) -> str:
    return json.dumps({"instance_url": "https://acme.my.salesforce.com", "session_id": session})


def test_a_company_added_to_the_mounted_secret_is_read_on_its_next_lookup(tmp_path: Path) -> None:
    kubelet = Kubelet(tmp_path / "secrets")
    kubelet.publish({"acme.salesforce.json": sf("S-1")})
    store = CredentialStore(kubelet.root)
    assert store.salesforce("acme").session_id == "S-1"
    with pytest.raises(CredentialsMissing, match="newco"):
        store.salesforce("newco")
    kubelet.publish({"acme.salesforce.json": sf("S-2"), "newco.salesforce.json": sf("N-1"), "newco.hubspot.json": json.dumps({"access_token": "pat-n"})})
    assert store.salesforce("newco").session_id == "N-1" and store.hubspot("newco").access_token == "pat-n"
    assert store.salesforce("acme").session_id == "S-2"  # changed in place: read again
    kubelet.publish({"newco.salesforce.json": sf("N-1")})  # acme removed from the Secret
    with pytest.raises(CredentialsMissing):
        store.salesforce("acme")
    assert sorted(c for c, _ in store._companies("salesforce")) == ["newco"]


def test_a_company_directory_wins_over_a_flat_file_and_the_default_is_not_used_for_a_flat_company(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "acme").mkdir(parents=True)
    (secrets / "acme" / "salesforce.json").write_text(sf("DIR"))
    (secrets / "acme.salesforce.json").write_text(sf("FLAT"))
    (secrets / "_default").mkdir()
    (secrets / "_default" / "hubspot.json").write_text(json.dumps({"access_token": "pat-default"}))
    (secrets / "newco.salesforce.json").write_text(sf("N"))
    store = CredentialStore(secrets, allow_default=True)
    assert store.salesforce("acme").session_id == "DIR"
    with pytest.raises(CredentialsMissing):  # newco has files of its own: never another org's default
        store.hubspot("newco")


def jwt(company: str, key_file: str) -> str:
    return json.dumps({"consumer_key": "CK", "username": "u", "private_key_file": key_file})


@pytest.mark.parametrize("key_file", ["other.salesforce.key", "acme.evil.salesforce.key", "../acme.salesforce.key", "keys/acme.salesforce.key"])
def test_in_the_flat_layout_a_company_names_only_its_own_key(tmp_path: Path, key_file: str) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("acme.salesforce.key", "other.salesforce.key", "acme.evil.salesforce.key"):
        (secrets / name).write_text("k")
    (secrets / "acme.salesforce.json").write_text(jwt("acme", key_file))
    with pytest.raises(CredentialsInvalid, match="acme.salesforce.key"):
        CredentialStore(secrets).salesforce("acme")


def test_the_own_key_is_resolved_and_rotations_are_kept_per_company(tmp_path: Path) -> None:
    secrets, tokens = tmp_path / "secrets", tmp_path / "tokens"
    secrets.mkdir()
    (secrets / "acme.salesforce.key").write_text("k")
    (secrets / "acme.salesforce.json").write_text(jwt("acme", "acme.salesforce.key"))
    for company in ("acme", "globex"):
        (secrets / f"{company}.hubspot.json").write_text(json.dumps({"client_id": "c", "client_secret": "s", "refresh_token": f"rt-{company}"}))
    store = CredentialStore(secrets, token_dir=tokens)
    assert store.salesforce("acme").private_key_file == os.path.realpath(secrets / "acme.salesforce.key")
    store.rotate("acme", "hubspot", {"refresh_token": "rt-acme-2"})
    assert (tokens / "acme" / "hubspot.json").exists()
    assert store.hubspot("acme").refresh_token == "rt-acme-2" and store.hubspot("globex").refresh_token == "rt-globex"
