"""Every event type, end to end: publisher → real broker → worker → CRM sandbox (SPEC §3, §5, §6).

Each test runs one worker and several scenarios against it (a worker start costs seconds). Events
whose occurred_at is already more than the delay in the past are executed at once (SPEC §4), which is
how the tests pick dates that fall on different days in UTC and in the expected time zone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Producer

from connectors.sandbox.server import CrmSandbox
from processors.ops.admin import SettingsAdmin
from processors.codec import Codec
from processors.domain.model import CompanySettings, Crm, EventType, MeetingTypeSettings
from processors.domain.records import company_to_record, meeting_type_to_record
from processors.ops.publisher import EventPublisher
from processors.domain.rules import company_key, meeting_type_key
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, read_all, wait_for

pytestmark = pytest.mark.integration

TOKYO = ZoneInfo("Asia/Tokyo")
ALL_EVENTS = list(EventType)


def millis(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


def late_evening_utc_yesterday() -> int:
    """15:30 UTC yesterday: already past the delay, and 00:30 of the next day in Tokyo."""
    day = datetime.now(timezone.utc) - timedelta(days=1)
    return millis(day.replace(hour=15, minute=30, second=0, microsecond=0))


def tokyo_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, TOKYO).date()


def person(email: str, name: str, company: str | None = None, phone: str | None = None) -> dict[str, Any]:
    return {"email": email, "name": name, "company_name": company, "phone": phone}


def common(company: str, meeting_type: str, occurred_at: int | None) -> dict[str, Any]:
    return {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "occurred_at": now_ms() if occurred_at is None else occurred_at,
        "company_id": company,
        "meeting_type_id": meeting_type,
    }


def booking(company: str, meeting_type: str, *, booker: dict[str, Any], host: dict[str, Any], start: datetime,
            tz: str = "Asia/Tokyo", occurred_at: int | None = None) -> dict[str, Any]:
    return {
        **common(company, meeting_type, occurred_at),
        "meeting_id": f"mtg-{uuid.uuid4().hex[:8]}",
        "meeting_type_name": "Intro call",
        "host": host,
        "booker": booker,
        "start_at": millis(start),
        "end_at": millis(start) + 30 * 60 * 1000,
        "timezone": tz,
        "meeting_url": "https://meet.example.com/abc",
        "form_answers": [{"question": "Budget?", "answer": "<b>large</b>"}],
    }


def research(company: str, meeting_type: str, *, target: dict[str, Any], occurred_at: int | None = None) -> dict[str, Any]:
    return {
        **common(company, meeting_type, occurred_at),
        "research_kind": "CUSTOMER",
        "target": target,
        "form_answers": [{"question": "Employees", "answer": "120"}],
        "result": "Rising SaaS vendor; <i>hiring</i> sales staff.",
    }


def survey(company: str, meeting_type: str, kind: str, *, respondent: dict[str, Any], host: dict[str, Any] | None = None,
           meeting_start_at: int | None = None, tz: str | None = None, occurred_at: int | None = None) -> dict[str, Any]:
    return {
        **common(company, meeting_type, occurred_at),
        "survey_kind": kind,
        "respondent": respondent,
        "host": host,
        "meeting_start_at": meeting_start_at,
        "timezone": tz,
        "answers": [{"question": "What do you want to discuss?", "answer": "Pricing <script>x</script>"}],
    }


def publisher(deployment: Deployment) -> EventPublisher:
    t = deployment.topics
    return EventPublisher(
        {"bootstrap.servers": deployment.bootstrap},
        t,
    )


def logged(worker: WorkerProcess, event_id: str) -> list[tuple[Any, ...]]:
    """What the worker's JSON log says it did with one event: (msg, crm, outcome, reason), sorted.

    "planned" and "skipped" are DEBUG lines: the tests that read them run their worker at DEBUG."""
    found = []
    for line in worker.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event_id") == event_id:
            found.append((record["msg"], record.get("crm"), record.get("outcome"), record.get("reason")))
    return sorted(found, key=repr)


def tasks_for(sandbox: CrmSandbox, who_id: str) -> list[dict[str, Any]]:
    return [t for t in sandbox.salesforce.list_tasks() if t.get("WhoId") == who_id]


def linked_to(objects: list[dict[str, Any]], contact_id: str) -> list[dict[str, Any]]:
    return [o for o in objects if ("contacts", contact_id) in [(a["to_type"], a["to_id"]) for a in o["associations"]]]


def connect(admin: SettingsAdmin, company: str) -> None:
    admin.set_connected(company, Crm.SALESFORCE, True)
    admin.set_connected(company, Crm.HUBSPOT, True)


def turn_on(admin: SettingsAdmin, company: str, meeting_type: str, crm: Crm, *events: EventType) -> None:
    for event in events:
        admin.set_toggle(company, meeting_type, crm, event, True)


# ---- every event type, with the owner fallbacks, double ToDo and the cases that create nothing ----


def test_each_event_type_creates_what_the_spec_tables_say(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sf, hs = sandbox.salesforce, sandbox.hubspot
    booker = person("Bo.Booker@Buyer.example", "Bo Booker", "Buyer Inc.", "+81-3-0000-0000")
    host = person("hana.host@seller.example", "Hana Host")
    stranger_host = person("new.hire@seller.example", "New Hire")  # neither a Salesforce User nor a HubSpot owner
    target = person("tara@lead.example", "Tara Target", "Lead Co.", "+81-6-1111-2222")
    respondent = person("rio@buyer.example", "Rio Respondent", "Buyer Inc.", "+81-3-3333-4444")
    leaver = person("lee@visitor.example", "Lee Leaver", "Visitor KK", "+81-45-555-6666")
    guest = person("gil@buyer.example", "Gil Guest", "Buyer Inc.")

    record_owner = sf.add_user("record.owner@seller.example")
    lead_owner = sf.add_user("lead.owner@seller.example")
    host_user = sf.add_user(host["email"])
    sf.add_lead(booker["email"].lower(), owner_id=lead_owner, last_modified="2026-01-02T00:00:00Z")
    booker_contact = sf.add_contact(booker["email"].lower(), owner_id=record_owner, last_modified="2025-06-01T00:00:00Z")
    target_lead = sf.add_lead(target["email"], owner_id=lead_owner)
    respondent_contact = sf.add_contact(respondent["email"], owner_id=record_owner)
    leaver_contact = sf.add_contact(leaver["email"], owner_id=lead_owner)
    guest_contact = sf.add_contact(guest["email"], owner_id=lead_owner)
    hs_booker = hs.add_contact(booker["email"], firstname="Bo")
    hs_target = hs.add_contact(target["email"])
    hs_respondent = hs.add_contact(respondent["email"])
    hs_leaver = hs.add_contact(leaver["email"])
    hs_guest = hs.add_contact(guest["email"])
    hs_host = hs.add_owner(host["email"], first_name="Hana")

    admin = SettingsAdmin(deployment.config(), actor="test")
    connect(admin, "acme")
    admin.set_company_todo("acme", EventType.MEETING_BOOKED, True)  # + the meeting type's own → two Tasks
    turn_on(admin, "acme", "intro", Crm.SALESFORCE, *ALL_EVENTS)
    turn_on(admin, "acme", "intro", Crm.HUBSPOT, *ALL_EVENTS)
    admin.set_content("acme", "intro", salesforce_subject="{booker_name}様 {meeting_type_name}",
                      hubspot_meeting_title="Intro with {booker_name}")
    connect(admin, "offco")
    admin.set_company_todo("offco", EventType.MEETING_BOOKED, True)
    turn_on(admin, "offco", "intro", Crm.SALESFORCE, *ALL_EVENTS)
    turn_on(admin, "offco", "intro", Crm.HUBSPOT, *ALL_EVENTS)
    admin.set_connected("offco", Crm.SALESFORCE, False)
    admin.set_connected("offco", Crm.HUBSPOT, False)
    deployment.extra_env["CRM_SYNC_LOG_LEVEL"] = "DEBUG"  # for the "planned" and "skipped" lines
    worker = start_worker(deployment, workers, tmp_path)

    past = late_evening_utc_yesterday()
    pub = publisher(deployment)
    booked_start = datetime(2026, 11, 23, 16, 30, tzinfo=timezone.utc)  # 2026-11-24 01:30 in Tokyo
    pub.publish_meeting_booked(booking("acme", "intro", booker=booker, host=host, start=booked_start))
    pub.publish_research_completed(research("acme", "intro", target=target, occurred_at=past))
    survey_meeting = millis(datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc))  # 2026-11-30 22:00 in New York
    pub.publish_survey_answered(survey("acme", "intro", "PRE_MEETING", respondent=respondent, host=stranger_host,
                                       meeting_start_at=survey_meeting, tz="America/New_York", occurred_at=past))
    pub.publish_survey_answered(survey("acme", "intro", "PRE_EXIT", respondent=leaver, occurred_at=past))
    ny_start = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)  # 2026-11-23 22:00 in New York
    pub.publish_meeting_booked(booking("acme", "intro", booker=guest, host=stranger_host, start=ny_start,
                                       tz="America/New_York", occurred_at=past))
    nobody = booking("acme", "intro", booker=person("nobody@nowhere.example", "No Body"), host=host,
                     start=booked_start, occurred_at=past)
    disconnected = booking("offco", "intro", booker=booker, host=host, start=booked_start, occurred_at=past)
    unknown_type = booking("acme", "unknown-type", booker=booker, host=host, start=booked_start, occurred_at=past)
    for record in (nobody, disconnected, unknown_type):
        pub.publish_meeting_booked(record)
    pub.flush()

    wait_for(lambda: len(sf.list_tasks()) >= 7 and len(hs.list_meetings()) >= 2 and len(hs.list_notes()) >= 3,
             30, what="7 Tasks, 2 meetings and 3 notes")

    # meeting booked: host's User, the Contact (not the newer Lead), meeting date in Tokyo; two ToDos
    tasks = tasks_for(sandbox, booker_contact)
    assert sorted(t["Subject"] for t in tasks) == ["Bo Booker様 Intro call", "面談予約のお知らせ"]
    for task in tasks:
        assert (task["OwnerId"], task["ActivityDate"]) == (host_user, "2026-11-24")
        for text in ("Intro call", "2026-11-24 01:30", "https://meet.example.com/abc", "Bo Booker", "Buyer Inc.",
                     "Budget?", "<b>large</b>"):
            assert text in task["Description"], text
    [meeting] = linked_to(hs.list_meetings(), hs_booker)
    props = meeting["properties"]
    assert props["hs_meeting_title"] == "Intro with Bo Booker"
    assert props["hubspot_owner_id"] == hs_host
    assert props["hs_meeting_start_time"].startswith("2026-11-23T16:30:00")
    assert props["hs_meeting_end_time"].startswith("2026-11-23T17:00:00")
    assert "Bo Booker" in props["hs_meeting_body"] and "&lt;b&gt;large&lt;/b&gt;" in props["hs_meeting_body"]
    assert "<b>large" not in props["hs_meeting_body"]

    # research: the Lead's owner, research date + 1 in the company's zone (Tokyo), form inputs + result
    [task] = tasks_for(sandbox, target_lead)
    assert task["OwnerId"] == lead_owner
    assert task["Subject"] == "リサーチ結果のお知らせ"
    assert task["ActivityDate"] == (tokyo_date(past) + timedelta(days=1)).isoformat()
    for text in ("Tara Target", "Lead Co.", "tara@lead.example", "+81-6-1111-2222", "Employees", "120",
                 "Rising SaaS vendor; <i>hiring</i> sales staff."):
        assert text in task["Description"], text
    [note] = linked_to(hs.list_notes(), hs_target)
    body = note["properties"]["hs_note_body"]
    for text in ("Tara Target", "Lead Co.", "tara@lead.example", "+81-6-1111-2222", "&lt;i&gt;hiring&lt;/i&gt;"):
        assert text in body, text

    # pre-meeting survey: the host is no User → the Contact's owner; the meeting's date in its own zone
    [task] = tasks_for(sandbox, respondent_contact)
    assert task["OwnerId"] == record_owner
    assert task["Subject"] == "面談前アンケート回答のお知らせ"
    assert task["ActivityDate"] == "2026-11-30"
    assert "What do you want to discuss?" in task["Description"] and "Pricing <script>x</script>" in task["Description"]
    [note] = linked_to(hs.list_notes(), hs_respondent)
    body = note["properties"]["hs_note_body"]
    assert "Rio Respondent" in body and "Buyer Inc." in body and "Pricing &lt;script&gt;" in body
    assert "<script>" not in body

    # pre-exit survey: the Contact's owner, answer date + 1 in the company's zone; the note carries email and phone
    [task] = tasks_for(sandbox, leaver_contact)
    assert task["OwnerId"] == lead_owner
    assert task["Subject"] == "離脱前アンケート回答のお知らせ"
    assert task["ActivityDate"] == (tokyo_date(past) + timedelta(days=1)).isoformat()
    assert "Pricing <script>x</script>" in task["Description"]
    [note] = linked_to(hs.list_notes(), hs_leaver)
    body = note["properties"]["hs_note_body"]
    for text in ("Lee Leaver", "Visitor KK", "lee@visitor.example", "+81-45-555-6666", "Pricing &lt;script&gt;"):
        assert text in body, text

    # a booking whose host is unknown to both CRMs: the Contact's owner; a meeting without owner
    tasks = tasks_for(sandbox, guest_contact)
    assert len(tasks) == 2
    assert {(t["OwnerId"], t["ActivityDate"]) for t in tasks} == {(lead_owner, "2026-11-23")}
    [meeting] = linked_to(hs.list_meetings(), hs_guest)
    assert "hubspot_owner_id" not in meeting["properties"]

    # contact not found, a disconnected company, an unknown meeting type: skipped with the reason, nothing created
    wait_for(lambda: len(logged(worker, nobody["event_id"])) == 6, 15, what="the contact_not_found outcomes")
    assert logged(worker, nobody["event_id"]) == sorted([
        ("delivery", "hubspot", "skipped", "contact_not_found"),
        ("delivery", "salesforce", "skipped", "contact_not_found"),
        ("delivery", "salesforce", "skipped", "contact_not_found"),
        ("planned", "hubspot", None, None),
        ("planned", "salesforce", None, None),
        ("planned", "salesforce", None, None),
    ], key=repr)
    wait_for(lambda: logged(worker, unknown_type["event_id"]), 15, what="the no_settings skip")
    assert logged(worker, disconnected["event_id"]) == [("skipped", None, None, "integration_disabled")] * 2
    assert logged(worker, unknown_type["event_id"]) == [("skipped", None, None, "no_settings")]
    assert len(sf.list_tasks()) == 7
    assert len(hs.list_meetings()) == 2
    assert len(hs.list_notes()) == 3
    assert len(tasks_for(sandbox, booker_contact)) == 2 and len(linked_to(hs.list_meetings(), hs_booker)) == 1


# ---- apply to other meeting types, then events on the targets ----------------------------------


def test_apply_to_other_meeting_types_then_events_on_the_targets(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sf, hs = sandbox.salesforce, sandbox.hubspot
    owner = sf.add_user("owner@seller.example")
    people = {
        name: person(f"{name}@buyer.example", name.title())
        for name in ("booker", "skipped-researched", "researched", "leaver", "respondent")
    }
    contacts = {name: sf.add_contact(p["email"], owner_id=owner) for name, p in people.items()}
    hs_contacts = {name: hs.add_contact(p["email"]) for name, p in people.items()}

    admin = SettingsAdmin(deployment.config(), actor="test")
    connect(admin, "applyco")
    turn_on(admin, "applyco", "src", Crm.SALESFORCE, EventType.MEETING_BOOKED, EventType.RESEARCH_COMPLETED)
    turn_on(admin, "applyco", "src", Crm.HUBSPOT, EventType.MEETING_BOOKED, EventType.PRE_EXIT_SURVEY_ANSWERED)
    admin.set_content("applyco", "src", salesforce_subject="Applied: {booker_name}",
                      hubspot_meeting_title="HS applied: {meeting_type_name}")
    turn_on(admin, "applyco", "dst1", Crm.SALESFORCE, EventType.PRE_MEETING_SURVEY_ANSWERED)
    for crm in ("salesforce", "hubspot"):
        done = subprocess.run(
            [sys.executable, "-m", "processors.ops.cli", "settings", "apply", "--company", "applyco", "--from", "src",
             "--to", "dst1,dst2", "--crm", crm, "--event", "meeting_booked"],
            cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
    deployment.extra_env["CRM_SYNC_LOG_LEVEL"] = "DEBUG"  # for the "planned" and "skipped" lines
    worker = start_worker(deployment, workers, tmp_path)

    past = late_evening_utc_yesterday()
    start = datetime(2026, 12, 3, 2, 0, tzinfo=timezone.utc)
    pub = publisher(deployment)
    pub.publish_meeting_booked(booking("applyco", "dst2", booker=people["booker"], host=people["booker"], start=start,
                                       occurred_at=past))
    # not selected → stays off on the target; the record after it on the same partition proves it was read
    unselected_research = research("applyco", "dst2", target=people["skipped-researched"], occurred_at=past)
    unselected_exit = survey("applyco", "dst1", "PRE_EXIT", respondent=people["leaver"], occurred_at=past)
    pub.publish_research_completed(unselected_research)
    pub.publish_research_completed(research("applyco", "src", target=people["researched"], occurred_at=past))
    pub.publish_survey_answered(unselected_exit)
    pub.publish_survey_answered(survey("applyco", "dst1", "PRE_MEETING", respondent=people["respondent"],
                                       meeting_start_at=millis(start), occurred_at=past))
    pub.flush()

    wait_for(lambda: len(sf.list_tasks()) >= 3 and hs.list_meetings(), 30, what="3 Tasks and a meeting")
    [task] = tasks_for(sandbox, contacts["booker"])
    assert task["Subject"] == "Applied: Booker"  # the copied meeting-type text
    [meeting] = linked_to(hs.list_meetings(), hs_contacts["booker"])
    assert meeting["properties"]["hs_meeting_title"] == "HS applied: Intro call"
    assert len(tasks_for(sandbox, contacts["researched"])) == 1
    assert len(tasks_for(sandbox, contacts["respondent"])) == 1  # the target's own setting was kept

    assert logged(worker, unselected_research["event_id"]) == []  # nothing planned, nothing to skip
    assert logged(worker, unselected_exit["event_id"]) == []
    time.sleep(1.0)
    assert tasks_for(sandbox, contacts["skipped-researched"]) == []
    assert tasks_for(sandbox, contacts["leaver"]) == []
    assert hs.list_notes() == []
    assert len(sf.list_tasks()) == 3 and len(hs.list_meetings()) == 1


# ---- malformed settings records ------------------------------------------------------------------


def test_malformed_settings_are_dead_lettered_and_never_change_the_table(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sf, hs = sandbox.salesforce, sandbox.hubspot
    owner = sf.add_user("owner@seller.example")
    booker = person("guarded@buyer.example", "Guarded Booker")
    contact = sf.add_contact(booker["email"], owner_id=owner)
    hs_contact = hs.add_contact(booker["email"])
    admin = SettingsAdmin(deployment.config(), actor="test")
    connect(admin, "guard")
    turn_on(admin, "guard", "intro", Crm.SALESFORCE, EventType.MEETING_BOOKED)
    turn_on(admin, "guard", "intro", Crm.HUBSPOT, EventType.MEETING_BOOKED)
    before = admin.show("guard")
    worker = start_worker(deployment, workers, tmp_path)

    codec = Codec()
    disconnected = CompanySettings("someone-else", updated_at=now_ms())  # right schema, key of another company
    all_off = MeetingTypeSettings("guard", "other-type", updated_at=now_ms())
    malformed = [
        (company_key("guard").encode(), b"\xde\xad\xbe\xef garbage"),
        (company_key("guard").encode(), codec.encode("CompanySettings", company_to_record(disconnected))),
        (meeting_type_key("guard", "intro").encode(), codec.encode("MeetingTypeSettings", meeting_type_to_record(all_off))),
        (b"not-a-settings-key", codec.encode("CompanySettings", company_to_record(disconnected))),
    ]
    raw = Producer({"bootstrap.servers": deployment.bootstrap})
    for key, value in malformed:
        raw.produce(deployment.topics.settings, key=key, value=value)
    assert raw.flush(10) == 0

    def settings_letters() -> list[dict[str, Any]]:
        found = [r for r in read_all(deployment.bootstrap, deployment.topics.dead_letter, codec) if r["stage"] == "settings"]
        return found if len(found) >= len(malformed) else []

    letters = wait_for(settings_letters, 30, what="four settings dead letters")
    assert sorted((r["original_key"], r["original_value"]) for r in letters) == sorted(malformed)
    assert {r["source_topic"] for r in letters} == {deployment.topics.settings}
    assert all(r["message"] and r["error_class"] for r in letters)
    assert admin.show("guard") == before

    time.sleep(1.0)  # the settings table reads the same records on its own thread
    pub = publisher(deployment)
    pub.publish_meeting_booked(booking("guard", "intro", booker=booker, host=booker,
                                       start=datetime(2026, 12, 4, 1, 0, tzinfo=timezone.utc),
                                       occurred_at=late_evening_utc_yesterday()))
    pub.flush()
    wait_for(lambda: tasks_for(sandbox, contact) and linked_to(hs.list_meetings(), hs_contact), 30,
             what="delivery with the previous valid settings")
    assert worker.proc is not None and worker.proc.poll() is None
