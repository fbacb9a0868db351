"""Every settings change says who made it (`updated_by`) and leaves an audit record, written in the
same transaction as the change; `crm-sync settings log` shows them."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys

import pytest

from processors.codec import Codec
from processors.kafka.read import read_to_end
from processors.kafka.topics import topic_specs
from tests.integration.harness import ROOT, Deployment

pytestmark = pytest.mark.integration


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "processors.ops.cli", *args], cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run


def test_changes_are_audited_with_their_author_and_shown_by_settings_log(deployment: Deployment) -> None:
    cli(deployment, "settings", "connect", "--company", "acme", "--crm", "salesforce", "--actor", "alice")
    cli(deployment, "settings", "set", "--company", "acme", "--meeting-type", "intro-30", "--crm", "salesforce", "--event", "meeting_booked", "--on")
    cli(deployment, "settings", "apply", "--company", "acme", "--from", "intro-30", "--to", "demo-60,sales-45", "--crm", "salesforce", "--event", "meeting_booked")
    cli(deployment, "settings", "pause", "--company", "acme", "--actor", "bob")
    cli(deployment, "settings", "connect", "--company", "other", "--crm", "hubspot")

    shown = json.loads(cli(deployment, "settings", "show", "--company", "acme", "--json").stdout)
    assert shown["company"]["updated_by"] == "bob"
    assert {m["meeting_type_id"]: m["updated_by"] for m in shown["meeting_types"]} == {
        "intro-30": getpass.getuser(), "demo-60": getpass.getuser(), "sales-45": getpass.getuser(),
    }

    lines = cli(deployment, "settings", "log", "--company", "acme", "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["actor"], r["key"]) for r in records] == [
        ("alice", "company/acme"),
        (getpass.getuser(), "meeting-type/acme/intro-30"),
        (getpass.getuser(), "meeting-type/acme/demo-60"),  # one apply: both targets, one transaction
        (getpass.getuser(), "meeting-type/acme/sales-45"),
        ("bob", "company/acme"),
    ]
    assert records[0]["changes"]["salesforce_connected"] == {"old": None, "new": True}
    assert records[-1]["changes"] == {"paused": {"old": False, "new": True}}
    text = cli(deployment, "settings", "log", "--company", "acme").stdout.splitlines()
    assert text[-1].endswith("  bob  company/acme  paused: false → true")

    last = records[-1]["at"]
    since = cli(deployment, "settings", "log", "--company", "acme", "--since", _iso(last), "--json").stdout.splitlines()
    assert [json.loads(line)["actor"] for line in since] == ["bob"]


def test_the_audit_topic_is_append_only_and_kept_long(deployment: Deployment) -> None:
    cli(deployment, "settings", "connect", "--company", "acme", "--crm", "hubspot")
    spec = topic_specs(deployment.config())[deployment.topics.audit]
    assert spec["cleanup.policy"] == "delete" and int(spec["retention.ms"]) >= 365 * 24 * 3600 * 1000
    committed: list[bytes] = []
    read_to_end({"bootstrap.servers": deployment.bootstrap}, deployment.topics.audit, lambda msg: committed.append(msg.value()))
    assert len(committed) == 1  # visible to read_committed readers: written in the change's transaction
    settings: list[object] = []
    read_to_end({"bootstrap.servers": deployment.bootstrap}, deployment.topics.settings, lambda msg: settings.append(Codec().decode(msg.value())))
    assert len(settings) == 1


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
