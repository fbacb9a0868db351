"""`crm-sync preview` against the real broker and the CRM sandbox: what it prints for an event is,
field for field, what the worker then creates for it; and it creates nothing itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.server import CrmSandbox
from processors.domain.model import Crm, EventType
from processors.kafka.read import TopicReader
from processors.ops.admin import SettingsAdmin
from processors.ops.publisher import EventPublisher
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

BOOKER = {"email": "pia.preview@buyer.example", "name": "Pia Preview", "company_name": "Buyer KK", "phone": None}
HOST = {"email": "hal.host@seller.example", "name": "Hal Host", "company_name": None, "phone": None}


def booking(start: datetime) -> dict[str, Any]:
    return {
        "event_id": f"evt-{uuid.uuid4().hex}", "occurred_at": int(time.time() * 1000) - 3_600_000,  # due at once
        "company_id": "acme", "meeting_type_id": "intro", "meeting_id": f"mtg-{uuid.uuid4().hex[:8]}",
        "meeting_type_name": "Intro <call>", "host": HOST, "booker": BOOKER,
        "start_at": int(start.timestamp() * 1000), "end_at": int(start.timestamp() * 1000) + 1_800_000,
        "timezone": "Asia/Tokyo", "meeting_url": "https://meet.example/x",
        "form_answers": [{"question": "Team size?", "answer": "12 & growing"}],
    }


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processors.ops.cli", *args], cwd=ROOT, env=deployment.env(),
                          capture_output=True, text=True, timeout=120)


def where(deployment: Deployment, event_id: str) -> str:
    """TOPIC:PARTITION:OFFSET of the event's record on the meetings topic."""
    found: list[str] = []
    topic = deployment.topics.meetings
    with TopicReader({"bootstrap.servers": deployment.bootstrap}, topic) as reader:
        reader.assign(reader.partitions())
        reader.read_to_end(lambda m: found.append(f"{topic}:{m.partition()}:{m.offset()}") if event_id.encode() in (m.value() or b"") else None)
    [spot] = found
    return spot


def test_preview_agrees_field_for_field_with_the_delivery_and_creates_nothing(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sf, hs = sandbox.salesforce, sandbox.hubspot
    owner = sf.add_user("record.owner@seller.example")
    host_user = sf.add_user(HOST["email"])
    contact = sf.add_contact(BOOKER["email"], owner_id=owner)
    hs_contact = hs.add_contact(BOOKER["email"])
    hs_owner = hs.add_owner(HOST["email"])
    admin = SettingsAdmin(deployment.config(), actor="test")
    admin.set_connected("acme", Crm.SALESFORCE, True)
    admin.set_connected("acme", Crm.HUBSPOT, True)
    admin.set_company_todo("acme", EventType.MEETING_BOOKED, True)
    admin.set_toggle("acme", "intro", Crm.HUBSPOT, EventType.MEETING_BOOKED, True)
    admin.set_content("acme", "intro", hubspot_meeting_title="Intro with {booker_name}")

    event = booking(datetime.now(timezone.utc) + timedelta(days=2))
    publisher = EventPublisher({"bootstrap.servers": deployment.bootstrap}, deployment.topics)
    publisher.publish_meeting_booked(event)
    publisher.flush()
    spot = where(deployment, event["event_id"])

    # Before any worker runs: preview shows both actions, and creates nothing.
    shown = cli(deployment, "preview", "--company", "acme", "--from-topic", spot, "--resolve", "--json")
    assert shown.returncode == 0, shown.stderr
    preview = json.loads(shown.stdout)
    assert sorted((a["crm"], a["origin"], a["outcome"]) for a in preview["actions"]) == [
        ("hubspot", "meeting_type", "create"), ("salesforce", "company", "create"),
    ]
    assert sf.list_tasks() == [] and hs.list_meetings() == []
    task_fields = next(a for a in preview["actions"] if a["crm"] == "salesforce")["fields"]
    meeting_fields = next(a for a in preview["actions"] if a["crm"] == "hubspot")["fields"]
    assert (task_fields["WhoId"], task_fields["OwnerId"]) == (contact, host_user)
    assert meeting_fields["hubspot_owner_id"] == hs_owner

    start_worker(deployment, workers, tmp_path)
    [task] = wait_for(lambda: sf.list_tasks() or None, 60, 0.3, "the Task")
    [meeting] = wait_for(lambda: hs.list_meetings() or None, 60, 0.3, "the meeting")
    assert {k: str(task[k]) for k in task_fields} == task_fields
    assert {k: str(meeting["properties"][k]) for k in meeting_fields} == meeting_fields
    assert ("contacts", hs_contact) in [(a["to_type"], a["to_id"]) for a in meeting["associations"]]


def test_preview_of_a_file_says_why_nothing_would_happen(deployment: Deployment, tmp_path: Path) -> None:
    admin = SettingsAdmin(deployment.config(), actor="test")
    admin.set_connected("acme", Crm.SALESFORCE, True)
    event = dict(booking(datetime.now(timezone.utc)), meeting_type_id="unknown-type")
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    shown = cli(deployment, "preview", "--company", "acme", "--event", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "nothing would be created (any: no_settings)" in shown.stdout
    wrong = cli(deployment, "preview", "--company", "globex", "--event", str(path))
    assert wrong.returncode != 0 and wrong.stderr.strip() == "crm-sync: error: the event belongs to company acme, not globex"
    missing = cli(deployment, "preview", "--company", "acme", "--from-topic", f"{deployment.topics.meetings}:0:999999")
    assert missing.returncode != 0 and "no record at" in missing.stderr
