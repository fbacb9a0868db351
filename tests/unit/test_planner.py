"""planner.py: event + settings snapshot → actions with deterministic ids, or skips (SPEC §3, §4, §5, §6)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from processors.domain import planner, render
from processors.domain.model import (
    QA,
    CompanySettings,
    Crm,
    EventToggles,
    EventType,
    FieldMapping,
    MeetingBooked,
    MeetingTypeSettings,
    ObjectType,
    Origin,
    Person,
    ResearchCompleted,
    SurveyAnswered,
)
from processors.domain.planner import Skip, plan

DELAY = 600_000
T = int(datetime(2026, 11, 23, 16, 30, tzinfo=timezone.utc).timestamp() * 1000)  # 2026-11-24 01:30 in Tokyo
NOW = T + 2_000
HOST = Person("host@example.com", "Hana Host", "Booking Inc", "+81-3-0000-0000")
BOOKER = Person("lead@example.org", "Lee Lead", "Lead Co", "+81-90-1111-2222")
OFF = EventToggles()
ALL_ON = EventToggles(True, True, True, True)


def make_event(event_type: EventType, event_id: str = "evt-1", **kw):
    common = dict(event_id=event_id, occurred_at=T, company_id="acme", meeting_type_id="mt-1")
    if event_type is EventType.MEETING_BOOKED:
        base = dict(common, meeting_id="m-1", meeting_type_name="製品デモ", host=HOST, booker=BOOKER,
                    start_at=T + 86_400_000, end_at=T + 86_400_000 + 1_800_000, timezone="Asia/Tokyo",
                    meeting_url="https://meet.example.com/x", form_answers=(QA("Team?", "12"),))
        return MeetingBooked(**{**base, **kw})
    if event_type is EventType.RESEARCH_COMPLETED:
        base = dict(common, research_kind="COMPANY", target=BOOKER, result="result text",
                    form_answers=(QA("Team?", "12"),))
        return ResearchCompleted(**{**base, **kw})
    pre = event_type is EventType.PRE_MEETING_SURVEY_ANSWERED
    base = dict(common, survey_kind="PRE_MEETING" if pre else "PRE_EXIT", respondent=BOOKER,
                host=HOST if pre else None, meeting_start_at=T + 86_400_000 if pre else None,
                timezone="Asia/Tokyo" if pre else None, answers=(QA("Why?", "Because"),))
    return SurveyAnswered(**{**base, **kw})


def company(sf=True, hs=True, todo=OFF, **kw) -> CompanySettings:
    return CompanySettings("acme", salesforce_connected=sf, hubspot_connected=hs, salesforce_company_todo=todo, **kw)


def meeting_type(sf=OFF, hs=OFF, **kw) -> MeetingTypeSettings:
    return MeetingTypeSettings("acme", "mt-1", salesforce_todo=sf, hubspot_sync=hs, **kw)


def only(event_type: EventType) -> EventToggles:
    return OFF.with_(event_type, True)


def run(event, c, m, now=NOW, delay=DELAY):
    return plan(event, c, m, now, delay)


def shape(p) -> tuple:
    return (
        sorted((a.crm.value, a.object_type.value, a.origin.value) for a in p.actions),
        sorted((s.crm.value if s.crm else None, s.reason) for s in p.skips),
    )


# ---- the gate: connection × toggles (rules 1, 2, 6) ----------------------------------------------

SF_C, SF_M = ("salesforce", "TASK", "company"), ("salesforce", "TASK", "meeting_type")
SF_OFF, HS_OFF = ("salesforce", "integration_disabled"), ("hubspot", "integration_disabled")

CASES = [
    # name, sf connected, hs connected, company todo on, mt sf on, mt hs on, actions (hs object filled in), skips
    ("all off", True, True, False, False, False, [], []),
    ("mt salesforce", True, True, False, True, False, [SF_M], []),
    ("company salesforce", True, True, True, False, False, [SF_C], []),
    ("both salesforce → two tasks", True, True, True, True, False, [SF_C, SF_M], []),
    ("hubspot", True, True, False, False, True, ["HS"], []),
    ("everything", True, True, True, True, True, [SF_C, SF_M, "HS"], []),
    ("sf disconnected", False, True, True, True, False, [], [SF_OFF]),
    ("sf disconnected, hs goes on", False, True, True, True, True, ["HS"], [SF_OFF]),
    ("hs disconnected", True, False, False, False, True, [], [HS_OFF]),
    ("hs disconnected, sf goes on", True, False, False, True, True, [SF_M], [HS_OFF]),
    ("both disconnected", False, False, True, True, True, [], [HS_OFF, SF_OFF]),
    ("disconnected and all off: nothing to report", False, False, False, False, False, [], []),
]


@pytest.mark.parametrize("event_type", list(EventType))
@pytest.mark.parametrize("name,sf,hs,todo,mt_sf,mt_hs,actions,skips", CASES, ids=[c[0] for c in CASES])
def test_gate(event_type, name, sf, hs, todo, mt_sf, mt_hs, actions, skips):
    hs_object = "MEETING" if event_type is EventType.MEETING_BOOKED else "NOTE"
    expected = sorted(("hubspot", hs_object, "meeting_type") if a == "HS" else a for a in actions)
    p = run(
        make_event(event_type),
        company(sf, hs, only(event_type) if todo else OFF),
        meeting_type(only(event_type) if mt_sf else OFF, only(event_type) if mt_hs else OFF),
    )
    assert shape(p) == (expected, sorted(skips))
    assert len({a.action_id for a in p.actions}) == len(p.actions)  # distinct idempotency keys
    for a in p.actions:
        assert a.event_type is event_type


@pytest.mark.parametrize("event_type", list(EventType))
def test_toggles_of_other_event_types_do_not_count(event_type):
    others = EventToggles(**{e.value: e is not event_type for e in EventType})
    p = run(make_event(event_type), company(todo=others), meeting_type(others, others))
    assert p.actions == () and p.skips == ()


@pytest.mark.parametrize("event_type", list(EventType))
@pytest.mark.parametrize(
    "c,m",
    [(None, meeting_type(ALL_ON, ALL_ON)), (company(todo=ALL_ON), None), (None, None)],
    ids=["unknown-company", "unknown-meeting-type", "both-unknown"],
)
def test_unknown_company_or_meeting_type_is_no_settings(event_type, c, m):
    p = run(make_event(event_type), c, m)
    assert p.actions == ()
    assert p.skips == (Skip(None, "no_settings"),)


def test_disconnected_company_overrides_meeting_type_settings():
    p = run(make_event(EventType.MEETING_BOOKED), company(False, False, ALL_ON), meeting_type(ALL_ON, ALL_ON))
    assert p.actions == ()
    assert set(p.skips) == {Skip(Crm.SALESFORCE, "integration_disabled"), Skip(Crm.HUBSPOT, "integration_disabled")}


def test_paused_company_still_plans():
    # pause is looked at when due (rule 7: held, then delivered): nothing is lost at ingest
    p = run(make_event(EventType.MEETING_BOOKED), company(paused=True, todo=ALL_ON), meeting_type(ALL_ON, ALL_ON))
    assert len(p.actions) == 3


# ---- deterministic ids -----------------------------------------------------------------------


def test_ids_are_deterministic_and_distinct():
    c, m = company(todo=ALL_ON), meeting_type(ALL_ON, ALL_ON)
    first = run(make_event(EventType.MEETING_BOOKED), c, m, now=NOW)
    again = run(make_event(EventType.MEETING_BOOKED), c, m, now=NOW + 3_600_000, delay=1)
    assert [a.action_id for a in first.actions] == [a.action_id for a in again.actions]
    assert len({a.action_id for a in first.actions}) == 3
    for a in first.actions:
        assert a.action_id == planner.action_id(a.company_id, "evt-1", a.crm, a.origin)
        assert len(a.action_id) == 32 and int(a.action_id, 16) >= 0
    other = run(make_event(EventType.MEETING_BOOKED, event_id="evt-2"), c, m)
    assert not {a.action_id for a in first.actions} & {a.action_id for a in other.actions}


def test_action_id_is_stable_value():
    # a regression guard: the ids are persisted in the delay store and used as CRM idempotency keys
    ids = {planner.action_id("acme", "evt-1", crm, origin) for crm in Crm for origin in Origin}
    assert len(ids) == 4
    assert planner.action_id("acme", "evt-1", Crm.SALESFORCE, Origin.COMPANY) == "642fab1a724cb5a2ffdd74776071d4de"
    assert planner.action_id("acme", "a\x1fb", Crm.HUBSPOT, Origin.COMPANY) != planner.action_id("acme", "a", Crm.HUBSPOT, Origin.COMPANY)


def test_two_companies_with_the_same_event_id_plan_different_actions():
    """SPEC §11: event ids are unique within a company only (eight companies, one event id)."""
    ids = {planner.action_id(f"co-{n}", "evt-1", Crm.SALESFORCE, Origin.MEETING_TYPE) for n in range(8)}
    assert len(ids) == 8
    c, m = company(todo=ALL_ON), meeting_type(ALL_ON, ALL_ON)
    first = run(make_event(EventType.MEETING_BOOKED), c, m)
    assert all(a.first_due_at == a.due_at for a in first.actions)


# ---- due time (SPEC §4) ------------------------------------------------------------------------

DUE = [
    ("on time", T, T + 2_000, T + DELAY),
    ("arrives exactly at occurred_at", T, T, T + DELAY),
    ("late: due already past", T - 3_600_000, T, T - 3_600_000 + DELAY),
    ("very late", T - 86_400_000, T, T - 86_400_000 + DELAY),
    ("future occurred_at capped", T + 3_600_000, T, T + DELAY),
    ("slightly future", T + 1, T, T + DELAY),
]


@pytest.mark.parametrize("name,occurred,now,expected", DUE, ids=[d[0] for d in DUE])
def test_due_at(name, occurred, now, expected):
    assert planner.due_at(occurred, now, DELAY) == expected
    p = run(make_event(EventType.RESEARCH_COMPLETED, occurred_at=occurred), company(), meeting_type(ALL_ON, ALL_ON), now=now)
    assert {a.due_at for a in p.actions} == {expected}
    assert {a.planned_at for a in p.actions} == {now}
    assert {a.occurred_at for a in p.actions} == {occurred}


def test_late_event_is_due_in_the_past():
    p = run(make_event(EventType.MEETING_BOOKED, occurred_at=T - 3_600_000), company(), meeting_type(ALL_ON), now=T)
    assert p.actions[0].due_at < T


@pytest.mark.parametrize("delay", [0, 1_000, DELAY])
def test_operator_delay(delay):
    p = run(make_event(EventType.MEETING_BOOKED), company(), meeting_type(ALL_ON), now=NOW, delay=delay)
    assert p.actions[0].due_at == T + delay


# ---- action contents --------------------------------------------------------------------------

PEOPLE = [
    # event type, extra kwargs, contact (WhoId source), owner e-mail (host lookup first, or None = record owner)
    (EventType.MEETING_BOOKED, {}, "lead@example.org", "host@example.com"),
    (EventType.RESEARCH_COMPLETED, {}, "lead@example.org", None),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, {}, "lead@example.org", "host@example.com"),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, {"host": None}, "lead@example.org", None),
    (EventType.PRE_EXIT_SURVEY_ANSWERED, {}, "lead@example.org", None),
    (EventType.PRE_EXIT_SURVEY_ANSWERED, {"host": HOST}, "lead@example.org", None),  # a host there is ignored
]


@pytest.mark.parametrize("event_type,kw,contact,owner", PEOPLE)
def test_contact_and_owner_emails(event_type, kw, contact, owner):
    kw = dict(kw)
    person = Person("who@example.net", "Who")
    key = {EventType.MEETING_BOOKED: "booker", EventType.RESEARCH_COMPLETED: "target"}.get(event_type, "respondent")
    kw[key] = person
    event = make_event(event_type, **kw)
    assert planner.contact_email(event) == "who@example.net"
    assert planner.owner_email(event) == owner
    p = run(event, company(todo=ALL_ON), meeting_type(ALL_ON, ALL_ON))
    assert {(a.contact_email, a.owner_email) for a in p.actions} == {("who@example.net", owner)}


@pytest.mark.parametrize("event_type", list(EventType))
def test_action_fields(event_type):
    event = make_event(event_type)
    p = run(event, company(todo=ALL_ON), meeting_type(ALL_ON, ALL_ON))
    for a in p.actions:
        assert (a.event_id, a.company_id, a.meeting_type_id, a.attempt) == ("evt-1", "acme", "mt-1", 0)
        if a.crm is Crm.SALESFORCE:
            assert set(a.properties) == {"Subject", "Description", "ActivityDate"}
            assert a.properties["Subject"] == render.DEFAULT_SUBJECTS[event_type]
            assert a.properties["Description"] == render.event_text(event)
        elif a.object_type is ObjectType.MEETING:
            assert a.properties == render.hubspot_meeting(event, "Asia/Tokyo", meeting_type())
        else:
            assert a.properties == render.hubspot_note(event)


def test_meeting_type_texts_only_in_meeting_type_task():
    m = meeting_type(ALL_ON, ALL_ON, salesforce_subject="S {booker_name}", salesforce_comment="C",
                     hubspot_meeting_title="H {meeting_type_name}", hubspot_meeting_body="B <x>")
    p = run(make_event(EventType.MEETING_BOOKED), company(todo=ALL_ON), m)
    by_origin = {(a.crm, a.origin): a.properties for a in p.actions}
    assert by_origin[(Crm.SALESFORCE, Origin.MEETING_TYPE)]["Subject"] == "S Lee Lead"
    assert by_origin[(Crm.SALESFORCE, Origin.MEETING_TYPE)]["Description"] == "C"
    assert by_origin[(Crm.SALESFORCE, Origin.COMPANY)]["Subject"] == "面談予約のお知らせ"
    assert by_origin[(Crm.HUBSPOT, Origin.MEETING_TYPE)]["hs_meeting_title"] == "H 製品デモ"
    assert by_origin[(Crm.HUBSPOT, Origin.MEETING_TYPE)]["hs_meeting_body"] == "B &lt;x&gt;"


@pytest.mark.parametrize(
    "company_tz,expected",
    [("Asia/Tokyo", "2026-11-25"), ("UTC", "2026-11-24")],
)
def test_company_time_zone_reaches_the_activity_date(company_tz, expected):
    p = run(make_event(EventType.RESEARCH_COMPLETED), company(timezone=company_tz), meeting_type(ALL_ON))
    assert p.actions[0].properties["ActivityDate"] == expected


def test_meeting_activity_date_uses_event_time_zone_even_when_utc_date_differs():
    p = run(make_event(EventType.MEETING_BOOKED, start_at=T, end_at=T + 1), company(timezone="UTC"), meeting_type(ALL_ON))
    assert p.actions[0].properties["ActivityDate"] == "2026-11-24"


# ---- snapshot / no back-fill (rules 4, 7) ------------------------------------------------------


def test_plan_depends_only_on_the_snapshot_passed():
    event = make_event(EventType.MEETING_BOOKED)
    off = meeting_type()
    assert run(event, company(), off).actions == ()
    on = meeting_type(ALL_ON, salesforce_subject="before")
    planned = run(make_event(EventType.MEETING_BOOKED, event_id="evt-2"), company(), on)
    assert [a.event_id for a in planned.actions] == ["evt-2"]
    # editing settings later changes neither the earlier "nothing" nor an action already planned
    edited = replace(on, salesforce_subject="after")
    assert run(event, company(), off).actions == ()
    assert planned.actions[0].properties["Subject"] == "before"
    assert run(make_event(EventType.MEETING_BOOKED, event_id="evt-2"), company(), edited).actions[0].properties[
        "Subject"
    ] == "after"


def test_plan_is_pure_and_repeatable():
    event, c, m = make_event(EventType.PRE_EXIT_SURVEY_ANSWERED), company(todo=ALL_ON), meeting_type(ALL_ON, ALL_ON)
    assert run(event, c, m) == run(event, c, m)


# ---- field mappings (SPEC §7) -------------------------------------------------------------------

MAPPINGS = (
    FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Phone__c", "booker.phone"),
    FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Start__c", "start_at"),
    FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Fax__c", "booker.fax"),  # no such field: ignored
    FieldMapping(Crm.SALESFORCE, EventType.RESEARCH_COMPLETED, "Research__c", "result"),  # other event type
    FieldMapping(Crm.HUBSPOT, EventType.MEETING_BOOKED, "lead_company", "booker.company_name"),
    FieldMapping(Crm.HUBSPOT, EventType.PRE_EXIT_SURVEY_ANSWERED, "exit_phone", "respondent.phone"),
)


def test_field_mappings_for_matching_crm_and_event_type_only():
    p = run(make_event(EventType.MEETING_BOOKED), company(todo=ALL_ON), meeting_type(ALL_ON, ALL_ON, field_mappings=MAPPINGS))
    props = {(a.crm, a.origin): a.properties for a in p.actions}
    sf = props[(Crm.SALESFORCE, Origin.MEETING_TYPE)]
    assert sf["Phone__c"] == "+81-90-1111-2222"
    assert sf["Start__c"] == "2026-11-25T01:30:00.000+09:00"  # the company time zone
    assert "Fax__c" not in sf and "Research__c" not in sf and "lead_company" not in sf
    hs = props[(Crm.HUBSPOT, Origin.MEETING_TYPE)]
    assert hs["lead_company"] == "Lead Co"
    assert "Phone__c" not in hs and "exit_phone" not in hs
    # the company-level ToDo belongs to no meeting type: no mapping
    assert set(props[(Crm.SALESFORCE, Origin.COMPANY)]) == {"Subject", "Description", "ActivityDate"}


def test_field_mapping_with_missing_value_is_ignored():
    event = make_event(EventType.MEETING_BOOKED, booker=Person("lead@example.org", "Lee Lead"))
    p = run(event, company(), meeting_type(ALL_ON, ALL_ON, field_mappings=MAPPINGS))
    sf = next(a for a in p.actions if a.crm is Crm.SALESFORCE).properties
    hs = next(a for a in p.actions if a.crm is Crm.HUBSPOT).properties
    assert "Phone__c" not in sf and "lead_company" not in hs
    assert sf["Start__c"] == "2026-11-25T01:30:00.000+09:00"  # the company time zone


def test_field_mapping_on_note():
    p = run(make_event(EventType.PRE_EXIT_SURVEY_ANSWERED), company(), meeting_type(hs=ALL_ON, field_mappings=MAPPINGS))
    [a] = p.actions
    assert a.object_type is ObjectType.NOTE and a.properties["exit_phone"] == "+81-90-1111-2222"


def test_field_mappings_never_overwrite_core_fields_unless_allowed():
    mappings = (
        FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Subject", "booker.name"),  # stored before the check
        FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "description", "booker.company_name", allow_core=True),
        FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Class__c", "__class__"),
        FieldMapping(Crm.HUBSPOT, EventType.MEETING_BOOKED, "hs_meeting_title", "booker.name"),
        FieldMapping(Crm.HUBSPOT, EventType.MEETING_BOOKED, "hs_meeting_body", "booker.company_name", allow_core=True),
        FieldMapping(Crm.HUBSPOT, EventType.MEETING_BOOKED, "start_day", "start_at:date"),
    )
    event = make_event(EventType.MEETING_BOOKED, booker=Person("lead@example.org", "Lee", "<b>R&D</b>"))
    p = run(event, company(timezone="America/New_York"), meeting_type(ALL_ON, ALL_ON, field_mappings=mappings))
    sf = next(a for a in p.actions if a.crm is Crm.SALESFORCE).properties
    hs = next(a for a in p.actions if a.crm is Crm.HUBSPOT).properties
    assert sf["Subject"] == "面談予約のお知らせ" and "Class__c" not in sf
    assert sf["description"] == "<b>R&D</b>"
    assert hs["hs_meeting_title"] == "製品デモ"
    assert hs["hs_meeting_body"] == "&lt;b&gt;R&amp;D&lt;/b&gt;"
    assert hs["start_day"] == "2026-11-24"  # 2026-11-24 16:30 UTC is the 24th in New York
