"""A booked meeting travels the whole way: upstream producer → real broker → worker → CRM sandbox."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from connectors.sandbox.server import CrmSandbox
from processors.ops.admin import SettingsAdmin
from processors.codec import Codec
from processors.domain.model import Crm, EventType
from processors.ops.publisher import EventPublisher
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, read_all, wait_for

pytestmark = pytest.mark.integration

COMPANY = "acme"
MEETING_TYPE = "intro-30"


def millis(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def configure(deployment: Deployment, *, company: str = COMPANY, meeting_type: str = MEETING_TYPE) -> None:
    admin = SettingsAdmin(deployment.config(), actor="test")
    admin.set_connected(company, Crm.SALESFORCE, True)
    admin.set_connected(company, Crm.HUBSPOT, True)
    admin.set_toggle(company, meeting_type, Crm.SALESFORCE, EventType.MEETING_BOOKED, True)
    admin.set_toggle(company, meeting_type, Crm.HUBSPOT, EventType.MEETING_BOOKED, True)


def publisher(deployment: Deployment) -> EventPublisher:
    t = deployment.topics
    return EventPublisher(
        {"bootstrap.servers": deployment.bootstrap},
        t,
    )


def booking(*, booker: str, host: str, start: datetime, occurred_at: int | None = None) -> dict[str, Any]:
    return {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "occurred_at": occurred_at if occurred_at is not None else int(time.time() * 1000),
        "company_id": COMPANY,
        "meeting_type_id": MEETING_TYPE,
        "meeting_id": f"mtg-{uuid.uuid4().hex[:8]}",
        "meeting_type_name": "Intro call (30 min)",
        "host": {"email": host, "name": "Hana Host"},
        "booker": {"email": booker, "name": "Bo Booker", "company_name": "Buyer Inc.", "phone": "+81-3-0000-0000"},
        "start_at": millis(start),
        "end_at": millis(start) + 30 * 60 * 1000,
        "timezone": "Asia/Tokyo",
        "meeting_url": "https://meet.example.com/abc",
        "form_answers": [{"question": "Budget?", "answer": "<b>large</b>"}],
    }


def seed_people(sandbox: CrmSandbox, *, booker: str, host: str) -> dict[str, str]:
    sf, hs = sandbox.salesforce, sandbox.hubspot
    record_owner = sf.add_user("record.owner@seller.example")
    host_user = sf.add_user(host)
    sf.add_lead(booker, owner_id=record_owner, last_modified="2026-01-02T00:00:00Z")
    contact = sf.add_contact(booker, owner_id=record_owner, last_modified="2025-06-01T00:00:00Z")
    return {
        "host_user": host_user,
        "contact": contact,
        "hs_contact": hs.add_contact(booker, firstname="Bo"),
        "hs_owner": hs.add_owner(host, first_name="Hana"),
    }


def test_booked_meeting_reaches_both_crms_after_the_delay(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    booker, host = "Bo.Booker@Buyer.example", "hana.host@seller.example"
    ids = seed_people(sandbox, booker=booker, host=host)
    configure(deployment)
    start_worker(deployment, workers, tmp_path)

    start = datetime(2026, 11, 23, 16, 30, tzinfo=timezone.utc)  # 2026-11-24 01:30 in Tokyo
    pub = publisher(deployment)
    published_at = time.time()
    pub.publish_meeting_booked(booking(booker=booker, host=host, start=start))
    pub.flush()

    time.sleep(1.0)
    assert sandbox.salesforce.list_tasks() == []
    assert sandbox.hubspot.list_meetings() == []

    tasks = wait_for(sandbox.salesforce.list_tasks, 30, what="the Salesforce Task")
    meetings = wait_for(sandbox.hubspot.list_meetings, 30, what="the HubSpot meeting")
    assert time.time() - published_at >= deployment.delay_seconds

    [task] = tasks
    assert task["OwnerId"] == ids["host_user"]
    assert task["WhoId"] == ids["contact"]
    assert task["Subject"] == "面談予約のお知らせ"
    assert task["ActivityDate"] == "2026-11-24"
    assert "Intro call (30 min)" in task["Description"]
    assert "https://meet.example.com/abc" in task["Description"]

    [meeting] = meetings
    props = meeting["properties"]
    assert props["hs_meeting_title"] == "Intro call (30 min)"
    assert props["hubspot_owner_id"] == ids["hs_owner"]
    assert props["hs_meeting_start_time"].startswith("2026-11-23T16:30:00")
    assert "&lt;b&gt;large&lt;/b&gt;" in props["hs_meeting_body"]
    assert [(a["to_type"], a["to_id"]) for a in meeting["associations"]] == [("contacts", ids["hs_contact"])]


def test_garbage_goes_to_the_dead_letter_topic_and_the_next_record_is_delivered(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    booker, host = "next@buyer.example", "host2@seller.example"
    seed_people(sandbox, booker=booker, host=host)
    configure(deployment)
    start_worker(deployment, workers, tmp_path)

    raw = Producer({"bootstrap.servers": deployment.bootstrap})
    raw.produce(deployment.topics.meetings, key=COMPANY.encode(), value=b"\xde\xad\xbe\xef not avro")
    raw.flush(10)
    pub = publisher(deployment)
    pub.publish_meeting_booked(booking(booker=booker, host=host, start=datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc)))
    pub.flush()

    codec = Codec()
    letters = wait_for(lambda: read_all(deployment.bootstrap, deployment.topics.dead_letter, codec), 30, what="a dead letter")
    [letter] = letters
    assert letter["stage"] == "decode"
    assert letter["error_class"] == "DecodeError"
    assert letter["message"]
    assert letter["original_value"] == b"\xde\xad\xbe\xef not avro"
    assert letter["source_topic"] == deployment.topics.meetings
    wait_for(sandbox.salesforce.list_tasks, 30, what="the Task of the valid record")
    wait_for(sandbox.hubspot.list_meetings, 30, what="the meeting of the valid record")
    assert workers[0].proc is not None and workers[0].proc.poll() is None


def test_an_action_held_across_a_restart_is_delivered_exactly_once(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 8.0
    booker, host = "held@buyer.example", "host3@seller.example"
    seed_people(sandbox, booker=booker, host=host)
    configure(deployment)
    first = start_worker(deployment, workers, tmp_path)

    pub = publisher(deployment)
    pub.publish_meeting_booked(booking(booker=booker, host=host, start=datetime(2026, 12, 2, 1, 0, tzinfo=timezone.utc)))
    pub.flush()
    wait_for(lambda: len(read_all(deployment.bootstrap, deployment.topics.delay)) == 2, 20, what="actions on the delay topic")
    first.stop()
    assert sandbox.salesforce.list_tasks() == [] and sandbox.hubspot.list_meetings() == []

    start_worker(deployment, workers, tmp_path)
    wait_for(lambda: sandbox.salesforce.list_tasks() and sandbox.hubspot.list_meetings(), 40, what="delivery after restart")
    time.sleep(3.0)
    assert len(sandbox.salesforce.list_tasks()) == 1
    assert len(sandbox.hubspot.list_meetings()) == 1
