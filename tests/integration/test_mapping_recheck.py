"""Field mapping and the contact re-check end to end (issue 15 items 3 and 4): settings changed with
`crm-sync settings …`, a real worker, the real broker and the CRM sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.server import CrmSandbox
from processors.domain.history import HistoryRecord
from processors.domain.mapping import MappingError
from processors.domain.model import Crm, EventType
from processors.ops.admin import SettingsAdmin
from processors.ops.publisher import EventPublisher
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, read_all, wait_for

pytestmark = pytest.mark.integration

COMPANY = "map-co"
MEETING_TYPE = "demo-45"
HOST = "hana@seller.example"
URL = "https://meet.example.com/"
START = int(datetime(2026, 12, 24, 23, 30, tzinfo=timezone.utc).timestamp() * 1000)  # 18:30 in New York


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processors.ops.cli", *args, *(("--actor", "tester") if args[0] == "settings" else ())],
        cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=60,
    )


def ok(deployment: Deployment, *args: str) -> str:
    done = cli(deployment, *args)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def connect(deployment: Deployment) -> SettingsAdmin:
    admin = SettingsAdmin(deployment.config(), actor="test")
    for crm in Crm:
        admin.set_connected(COMPANY, crm, True)
        admin.set_toggle(COMPANY, MEETING_TYPE, crm, EventType.MEETING_BOOKED, True)
    return admin


def book(deployment: Deployment, booker: str, company_name: str = "Buyer Inc.") -> str:
    """One booking now; its meeting id tells its Task (Description) and meeting (external URL) apart."""
    meeting_id = f"m-{uuid.uuid4().hex[:12]}"
    pub = EventPublisher({"bootstrap.servers": deployment.bootstrap}, deployment.topics)
    pub.publish_meeting_booked({
        "event_id": f"evt-{uuid.uuid4().hex}", "occurred_at": int(time.time() * 1000), "company_id": COMPANY,
        "meeting_type_id": MEETING_TYPE, "meeting_id": meeting_id, "meeting_type_name": "Demo (45 min)",
        "host": {"email": HOST, "name": "Hana Host"},
        "booker": {"email": booker, "name": "Bo Booker", "company_name": company_name, "phone": "+81-90-1234-5678"},
        "start_at": START, "end_at": START + 45 * 60 * 1000, "timezone": "Asia/Tokyo",
        "meeting_url": URL + meeting_id, "form_answers": [],
    })
    pub.flush()
    return meeting_id


def task_of(sandbox: CrmSandbox, meeting_id: str) -> dict[str, Any] | None:
    return next((t for t in sandbox.salesforce.list_tasks() if URL + meeting_id in str(t.get("Description", ""))), None)


def meeting_of(sandbox: CrmSandbox, meeting_id: str) -> dict[str, Any] | None:
    found = [m for m in sandbox.hubspot.list_meetings() if m["properties"].get("hs_meeting_external_url") == URL + meeting_id]
    return found[0]["properties"] if found else None


def history(deployment: Deployment) -> list[HistoryRecord]:
    return [HistoryRecord.from_json(msg.value()) for msg in read_all(deployment.bootstrap, deployment.topics.history)]


def test_a_mapping_set_with_the_cli_arrives_converted_on_the_task_and_the_meeting(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sandbox.salesforce.task_custom_fields |= {"Booker_Phone__c", "Meeting_Start__c", "Meeting_Day__c"}
    sandbox.hubspot.custom_properties |= {"booker_company", "meeting_start"}
    sandbox.salesforce.add_user(HOST)
    booker = "bo@buyer.example"
    sandbox.salesforce.add_contact(booker, owner_id=sandbox.salesforce.add_user("owner@seller.example"))
    sandbox.hubspot.add_contact(booker, firstname="Bo")
    admin = connect(deployment)
    admin.set_timezone(COMPANY, "America/New_York")
    ok(deployment, "settings", "map", "--company", COMPANY, "--meeting-type", MEETING_TYPE, "--crm", "salesforce",
       "--event", "meeting_booked", "--field", "Booker_Phone__c", "--from", "booker.phone")
    sf = (COMPANY, MEETING_TYPE, Crm.SALESFORCE, EventType.MEETING_BOOKED)  # the same API, without a process each
    hs = (COMPANY, MEETING_TYPE, Crm.HUBSPOT, EventType.MEETING_BOOKED)
    admin.map_field(*sf, "Meeting_Start__c", "start_at")
    admin.map_field(*sf, "Meeting_Day__c", "start_at:date")
    admin.map_field(*hs, "booker_company", "booker.company_name")
    admin.map_field(*hs, "meeting_start", "start_at")
    admin.map_field(*hs, "hs_meeting_body", "booker.company_name", allow_core=True)
    with pytest.raises(MappingError, match="pass allow_core"):
        admin.map_field(*sf, "Subject", "booker.name")

    start_worker(deployment, workers, tmp_path)
    meeting_id = book(deployment, booker, company_name="<b>Buyer & Co</b>")

    task = wait_for(lambda: task_of(sandbox, meeting_id), 60, 0.2, "the Task")
    assert task["Booker_Phone__c"] == "+81-90-1234-5678"
    assert task["Meeting_Start__c"] == "2026-12-24T18:30:00.000-05:00"  # the company's time zone
    assert task["Meeting_Day__c"] == "2026-12-24"
    assert task["Subject"] == "面談予約のお知らせ"  # the core field kept its rendering
    meeting = wait_for(lambda: meeting_of(sandbox, meeting_id), 60, 0.2, "the HubSpot meeting")
    assert meeting["booker_company"] == "<b>Buyer & Co</b>"  # a plain property: as typed
    assert meeting["meeting_start"] == "2026-12-24T23:30:00.000Z"
    assert meeting["hs_meeting_body"] == "&lt;b&gt;Buyer &amp; Co&lt;/b&gt;"  # an HTML body: escaped


def test_a_contact_added_late_is_found_by_a_recheck_and_a_missing_one_skipped_after_the_last(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 1.0
    sandbox.salesforce.add_user(HOST)
    owner = sandbox.salesforce.add_user("owner@seller.example")
    connect(deployment)
    ok(deployment, "settings", "recheck", "--company", COMPANY, "--after", "4s,12s")
    start_worker(deployment, workers, tmp_path)
    late, never = "late@buyer.example", "never@buyer.example"
    late_id, never_id = book(deployment, late), book(deployment, never)

    def rechecks(crm: str, number: str) -> set[str]:
        return {r.action_id or "" for r in history(deployment) if r.outcome == "rechecked" and r.crm == crm and r.ref == number}

    # Both were looked for at their due time and found missing: each of their 4 actions is re-checked.
    wait_for(lambda: len(rechecks("salesforce", "1")) == 2 and len(rechecks("hubspot", "1")) == 2, 60, 0.2, "first re-checks")
    assert task_of(sandbox, late_id) is None and meeting_of(sandbox, late_id) is None
    sandbox.salesforce.add_contact(late, owner_id=owner)
    sandbox.hubspot.add_contact(late, firstname="Late")

    task = wait_for(lambda: task_of(sandbox, late_id), 30, 0.2, "the late contact's Task")
    assert task["WhoId"] and wait_for(lambda: meeting_of(sandbox, late_id), 30, 0.2, "the late contact's meeting")

    def skipped() -> list[HistoryRecord]:
        return [r for r in history(deployment) if r.outcome == "skipped" and r.reason == "contact_not_found"]

    wait_for(lambda: len(skipped()) == 2, 30, 0.2, "the missing contact's actions skipped")
    records = history(deployment)
    never_actions = {r.action_id for r in skipped()}
    for action_id in never_actions:  # both re-checks happened before the skip
        assert {r.ref for r in records if r.action_id == action_id and r.outcome == "rechecked"} == {"1", "2"}
    assert not any(r.outcome == "skipped" for r in records if r.action_id not in never_actions)
    assert task_of(sandbox, never_id) is None and meeting_of(sandbox, never_id) is None

    report = json.loads(ok(deployment, "history", "--company", COMPANY, "--json"))
    # each re-check counted once: 4 first ones, the missing contact's 2 second ones, and the late
    # contact's second ones if it appeared only after its first re-check
    assert report["totals"]["rechecked"] == len({r.key for r in records if r.outcome == "rechecked"}) >= 6
    assert report["totals"]["created"] == 2
    assert report["totals"]["skipped"] == {"contact_not_found": 2}
