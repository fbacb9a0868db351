"""`crm-sync backfill` against the real broker, a worker and the CRM sandbox: a company connected
after its bookings gets them, under the current settings; a second run creates nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.server import CrmSandbox
from processors.domain.model import Crm, EventType
from processors.ops.admin import SettingsAdmin
from processors.ops.publisher import EventPublisher
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def booking(company: str, email: str) -> dict[str, Any]:
    start = int(time.time() * 1000) + 86_400_000
    person = {"email": email, "name": "Bea Backfill", "company_name": None, "phone": None}
    return {
        "event_id": f"evt-{uuid.uuid4().hex}", "occurred_at": int(time.time() * 1000) - 60_000, "company_id": company,
        "meeting_type_id": "intro", "meeting_id": f"mtg-{uuid.uuid4().hex[:8]}", "meeting_type_name": "Intro",
        "host": {"email": "host@seller.example", "name": "Host", "company_name": None, "phone": None}, "booker": person,
        "start_at": start, "end_at": start + 1_800_000, "timezone": "Asia/Tokyo", "meeting_url": None, "form_answers": [],
    }


def backfill(deployment: Deployment, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "processors.ops.cli", "backfill", "--json", *args], cwd=ROOT,
                          env=deployment.env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_backfill_delivers_a_newly_connected_company_s_bookings_once(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    emails = [f"b{i}@buyer.example" for i in range(3)]
    contacts = [sf.add_contact(email, owner_id=sf.add_user(f"owner.{email}")) for email in emails]
    admin = SettingsAdmin(deployment.config(), actor="test")
    admin.set_connected("newco", Crm.HUBSPOT, True)  # known, but its Salesforce not connected yet
    worker = start_worker(deployment, workers, tmp_path)
    publisher = EventPublisher({"bootstrap.servers": deployment.bootstrap}, deployment.topics)
    for email in emails:
        publisher.publish_meeting_booked(booking("newco", email))
    publisher.publish_meeting_booked(booking("otherco", "x@other.example"))  # never touched by newco's backfill
    publisher.flush()
    wait_for(lambda: _ingested(worker) >= 4, 60, 0.3, "the bookings ingested")
    assert sf.list_tasks() == []

    admin.set_connected("newco", Crm.SALESFORCE, True)
    admin.set_toggle("newco", "intro", Crm.SALESFORCE, EventType.MEETING_BOOKED, True)
    dry = backfill(deployment, "--company", "newco", "--since", "1h", "--dry-run")
    assert (dry["dry_run"], dry["events"], dry["planned"], dry["to_deliver"], dry["sent"]) == (True, 3, 3, 3, 0)
    time.sleep(1)  # a dry run sends nothing: nothing may appear
    assert sf.list_tasks() == []

    first = backfill(deployment, "--company", "newco", "--since", "1h", "--wait", "60")
    assert (first["events"], first["to_deliver"], first["sent"], first["created"], first["still_waiting"]) == (3, 3, 3, 3, 0)
    assert sorted(t["WhoId"] for t in sf.list_tasks()) == sorted(contacts)

    again = backfill(deployment, "--company", "newco", "--since", "1h", "--wait", "5")
    assert (again["already_delivered"], again["to_deliver"], again["sent"]) == (3, 0, 0)
    assert len(sf.list_tasks()) == 3
    text = subprocess.run([sys.executable, "-m", "processors.ops.cli", "backfill", "--company", "newco", "--since", "1h"],
                          cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=180)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        "backfill of newco", "  events found:       3  (meeting_booked 3)", "  actions planned:    3",
        "  already delivered:  3", "  to deliver:         0", "  events re-sent:     0",
    ]


def _ingested(worker: WorkerProcess) -> float:
    """Input records the worker has read (its own counter, summed over topics)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in worker.metrics().splitlines()
               if line.startswith("crm_sync_records_ingested_total{"))
