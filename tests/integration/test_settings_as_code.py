"""Settings as code through the real CLI and broker: export, diff, apply (one transaction, audited),
a round trip that gives the same text, a concurrent edit reported and never overwritten, and an
unknown key refused with its line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from processors.domain.model import Crm, EventType
from processors.ops.admin import SettingsAdmin
from tests.integration.test_cli import Cli

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(kafka_bootstrap: str) -> Cli:
    return Cli(kafka_bootstrap)


def seed(cli: Cli) -> None:
    cli.ok("settings", "connect", "--company", "acme", "--crm", "salesforce")
    cli.ok("settings", "set", "--company", "acme", "--meeting-type", "intro", "--crm", "salesforce", "--event", "meeting_booked", "--on")
    cli.ok("settings", "content", "--company", "acme", "--meeting-type", "intro", "--hubspot-title", "Intro with {booker_name}")
    cli.ok("settings", "connect", "--company", "globex", "--crm", "hubspot")


def test_export_apply_export_is_the_same_text_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    seed(cli)
    exported = cli.ok("settings", "export", "--all")
    assert "  acme:\n" in exported and "  globex:\n" in exported and "Intro with {booker_name}" in exported
    path = tmp_path / "settings.yaml"
    path.write_text(exported)
    log_before = cli.ok("settings", "log", "--company", "acme")
    assert cli.ok("settings", "apply", str(path)) == "0 document(s) changed (the file matches the settings)\n"
    assert cli.ok("settings", "export", "--all") == exported
    assert cli.ok("settings", "log", "--company", "acme") == log_before  # nothing written, nothing audited


def test_an_edited_file_is_diffed_then_applied_in_one_audited_change(cli: Cli, tmp_path: Path) -> None:
    seed(cli)
    exported = cli.ok("settings", "export", "--company", "acme")
    edited = exported.replace("    paused: false", "    paused: true").replace("        hubspot_sync: []", "        hubspot_sync:\n        - meeting_booked")
    path = tmp_path / "settings.yaml"
    path.write_text(edited)
    diff = cli.ok("settings", "diff", str(path)).splitlines()
    assert len(diff) == 3 and diff[0] == "company/acme: paused: false → true" and diff[2] == "2 document(s) would change"
    assert diff[1].startswith("meeting-type/acme/intro: hubspot_sync: ") and '"meeting_booked": true' in diff[1]
    assert json.loads(cli.ok("settings", "apply", str(path), "--dry-run", "--json"))["dry_run"] is True
    assert cli.show("acme")["company"]["paused"] is False  # a dry run writes nothing
    assert cli.ok("settings", "apply", str(path)).splitlines()[-1] == "2 document(s) changed"
    shown = cli.show("acme")
    assert shown["company"]["paused"] is True
    assert [m["hubspot_sync"]["meeting_booked"] for m in shown["meeting_types"]] == [True]
    again = cli.ok("settings", "export", "--company", "acme")
    bump = lambda text: re.sub(r"version: (\d+)", lambda m: f"version: {int(m.group(1)) + 1}", text)  # noqa: E731
    assert again == bump(edited)  # the same text, each changed document one version on
    log = [json.loads(line) for line in cli.ok("settings", "log", "--company", "acme", "--json").splitlines()]
    last = {entry["key"]: entry for entry in log[-2:]}
    assert set(last) == {"company/acme", "meeting-type/acme/intro"}  # one audited change of the two documents
    assert last["company/acme"]["changes"]["paused"] == {"old": False, "new": True}


def test_a_change_made_since_the_export_is_a_conflict_and_nothing_is_overwritten(cli: Cli, tmp_path: Path, kafka_bootstrap: str) -> None:
    seed(cli)
    exported = cli.ok("settings", "export", "--company", "acme")
    SettingsAdmin(cli_config(cli), actor="console-user").set_paused("acme", True)  # someone else, meanwhile
    path = tmp_path / "settings.yaml"
    path.write_text(exported.replace("    timezone: Asia/Tokyo", "    timezone: Europe/Paris"))
    done = cli.run("settings", "apply", str(path))
    assert done.returncode == 4 and done.stderr.startswith("crm-sync: conflict: company/acme was changed meanwhile")
    shown = cli.show("acme")
    assert shown["company"]["paused"] is True and shown["company"]["timezone"] == "Asia/Tokyo"


def test_an_unknown_key_is_a_clear_error_naming_the_line(cli: Cli, tmp_path: Path) -> None:
    seed(cli)
    exported = cli.ok("settings", "export", "--company", "acme")
    path = tmp_path / "settings.yaml"
    path.write_text(exported.replace("    paused: false", "    paused: false\n    pased: true"))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "pased" in text)
    assert cli.fails("settings", "apply", str(path)) == f"crm-sync: error: line {line}: unknown key 'pased' in company acme (known: " \
        "version, salesforce_connected, hubspot_connected, paused, timezone, salesforce_company_todo, contact_recheck_seconds, meeting_types)"


def cli_config(cli: Cli) -> object:
    from processors.config import Config

    return Config.from_env(cli.env)
