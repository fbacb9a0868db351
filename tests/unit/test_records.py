"""records.py: record → domain validation (readable ValidationError reasons) and settings/action round trips."""

from __future__ import annotations

import copy

import pytest

from processors.domain import records
from processors.domain.model import (
    MAX_ID,
    MAX_QA_ITEMS,
    MAX_TEXT,
    QA,
    Action,
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
    ValidationError,
)
from processors.domain.records import (
    action_from_record,
    action_to_record,
    check_recheck_delays,
    company_from_record,
    company_to_record,
    event_from_record,
    meeting_type_from_record,
    meeting_type_to_record,
)

T0 = 1_795_451_400_000  # 2026-11-23T16:30Z
HOST = {"email": "host@example.com", "name": "Hana Host", "company_name": "Booking Inc", "phone": "+81-3-0000-0000"}
BOOKER = {"email": "lead@example.org", "name": "Lee Lead", "company_name": None, "phone": None}
QAS = [{"question": "Team size?", "answer": "12"}, {"question": "Budget?", "answer": "未定"}]
COMMON = {"event_id": "evt-1", "occurred_at": T0, "company_id": "acme", "meeting_type_id": "mt-1"}

RECORDS = {
    "MeetingBooked": {
        **COMMON, "meeting_id": "m-1", "meeting_type_name": "製品デモ", "host": HOST, "booker": BOOKER,
        "start_at": T0 + 86_400_000, "end_at": T0 + 86_400_000 + 1_800_000, "timezone": "Asia/Tokyo",
        "meeting_url": "https://meet.example.com/x", "form_answers": QAS,
    },
    "ResearchCompleted": {
        **COMMON, "research_kind": "CUSTOMER", "target": BOOKER, "form_answers": QAS, "result": "research text",
    },
    "SurveyAnswered": {
        **COMMON, "survey_kind": "PRE_MEETING", "respondent": BOOKER, "host": HOST,
        "meeting_start_at": T0 + 86_400_000, "timezone": "Asia/Tokyo", "answers": QAS,
    },
}


def record(schema: str, **changes):
    value = copy.deepcopy(RECORDS[schema])
    for path, new in changes.items():
        target = value
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        if new is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = new
    return value


DELETE = object()


# ---- valid records ---------------------------------------------------------------------------


def test_meeting_booked_from_record():
    event = event_from_record("MeetingBooked", record("MeetingBooked"))
    assert isinstance(event, MeetingBooked)
    assert event.event_type is EventType.MEETING_BOOKED
    assert event.host == Person("host@example.com", "Hana Host", "Booking Inc", "+81-3-0000-0000")
    assert event.booker == Person("lead@example.org", "Lee Lead")
    assert event.form_answers == (QA("Team size?", "12"), QA("Budget?", "未定"))
    assert (event.event_id, event.occurred_at, event.company_id, event.meeting_type_id) == ("evt-1", T0, "acme", "mt-1")


def test_research_from_record():
    event = event_from_record("ResearchCompleted", record("ResearchCompleted"))
    assert isinstance(event, ResearchCompleted)
    assert event.event_type is EventType.RESEARCH_COMPLETED
    assert event.research_kind == "CUSTOMER" and event.result == "research text" and event.target.name == "Lee Lead"


@pytest.mark.parametrize(
    "kind,event_type",
    [("PRE_MEETING", EventType.PRE_MEETING_SURVEY_ANSWERED), ("PRE_EXIT", EventType.PRE_EXIT_SURVEY_ANSWERED)],
)
def test_survey_kind_gives_event_type(kind, event_type):
    event = event_from_record("SurveyAnswered", record("SurveyAnswered", survey_kind=kind))
    assert isinstance(event, SurveyAnswered) and event.event_type is event_type


def test_survey_optional_fields_may_be_absent():
    value = record("SurveyAnswered", survey_kind="PRE_EXIT", host=None, meeting_start_at=None, timezone=None)
    del value["answers"]
    event = event_from_record("SurveyAnswered", value)
    assert event.host is None and event.meeting_start_at is None and event.timezone is None and event.answers == ()


def test_optional_meeting_fields_may_be_absent():
    value = record("MeetingBooked", meeting_url=None, form_answers=None)
    event = event_from_record("MeetingBooked", value)
    assert event.meeting_url is None and event.form_answers == ()


def test_email_is_trimmed():
    event = event_from_record("MeetingBooked", record("MeetingBooked", booker__email="  lead@example.org "))
    assert event.booker.email == "lead@example.org"


def test_end_equal_to_start_is_valid():
    event = event_from_record("MeetingBooked", record("MeetingBooked", end_at=T0 + 86_400_000))
    assert event.end_at == event.start_at


def test_qa_with_missing_parts_becomes_empty_strings():
    event = event_from_record("SurveyAnswered", record("SurveyAnswered", answers=[{"question": "q"}, {"answer": "a"}]))
    assert event.answers == (QA("q", ""), QA("", "a"))


# ---- invalid records -------------------------------------------------------------------------

INVALID = [
    # missing / empty required fields
    ("MeetingBooked", {"event_id": DELETE}, "required field missing: event_id"),
    ("MeetingBooked", {"event_id": ""}, "required field is empty: event_id"),
    ("ResearchCompleted", {"event_id": "   "}, "required field is empty: event_id"),
    ("SurveyAnswered", {"company_id": None}, "required field missing: company_id"),
    ("SurveyAnswered", {"company_id": ""}, "required field is empty: company_id"),
    ("ResearchCompleted", {"meeting_type_id": ""}, "required field is empty: meeting_type_id"),
    ("MeetingBooked", {"occurred_at": DELETE}, "required field missing: occurred_at"),
    ("MeetingBooked", {"occurred_at": "2026-11-23"}, "occurred_at must be a timestamp"),
    ("MeetingBooked", {"occurred_at": True}, "occurred_at must be a timestamp"),
    ("MeetingBooked", {"start_at": DELETE}, "required field missing: start_at"),
    ("MeetingBooked", {"end_at": None}, "required field missing: end_at"),
    ("MeetingBooked", {"meeting_id": ""}, "required field is empty: meeting_id"),
    ("MeetingBooked", {"meeting_type_name": DELETE}, "required field missing: meeting_type_name"),
    ("MeetingBooked", {"host": None}, "required field missing: host"),
    ("MeetingBooked", {"booker": DELETE}, "required field missing: booker"),
    ("MeetingBooked", {"booker__name": ""}, "required field is empty: booker.name"),
    ("MeetingBooked", {"host__email": DELETE}, "required field missing: host.email"),
    ("ResearchCompleted", {"target": None}, "required field missing: target"),
    ("ResearchCompleted", {"research_kind": DELETE}, "required field missing: research_kind"),
    ("ResearchCompleted", {"research_kind": "PERSON"}, "research_kind must be one of COMPANY, CUSTOMER"),
    ("SurveyAnswered", {"respondent": DELETE}, "required field missing: respondent"),
    ("SurveyAnswered", {"survey_kind": ""}, "required field is empty: survey_kind"),
    ("SurveyAnswered", {"survey_kind": "POST_MEETING"}, "survey_kind must be one of PRE_MEETING, PRE_EXIT"),
    ("SurveyAnswered", {"host__name": None}, "required field missing: host.name"),
    ("MeetingBooked", {"booker__name": 42}, "field booker.name must be a string"),
    # bad e-mail
    ("MeetingBooked", {"booker__email": "no-at-sign"}, "field booker.email is not an e-mail address"),
    ("MeetingBooked", {"booker__email": "@example.org"}, "field booker.email is not an e-mail address"),
    ("MeetingBooked", {"booker__email": "lee@localhost"}, "field booker.email is not an e-mail address"),
    ("MeetingBooked", {"booker__email": "lee lead@example.org"}, "field booker.email is not an e-mail address"),
    ("MeetingBooked", {"host__email": "host@"}, "field host.email is not an e-mail address"),
    ("ResearchCompleted", {"target__email": "x" * 330 + "@example.org"}, "target.email is too long"),
    ("SurveyAnswered", {"respondent__email": ""}, "required field is empty: respondent.email"),
    # unknown time zone
    ("MeetingBooked", {"timezone": "Mars/Olympus_Mons"}, "field timezone is not an IANA time zone: 'Mars/Olympus_Mons'"),
    ("MeetingBooked", {"timezone": "Asia"}, "field timezone is not an IANA time zone: 'Asia'"),
    ("MeetingBooked", {"timezone": "asia/tokyo"}, "not an IANA time zone"),
    ("MeetingBooked", {"timezone": "../../etc/passwd"}, "not an IANA time zone"),
    ("MeetingBooked", {"timezone": DELETE}, "required field missing: timezone"),
    ("SurveyAnswered", {"timezone": "JST+9"}, "field timezone is not an IANA time zone"),
    # end before start
    ("MeetingBooked", {"end_at": T0 + 86_400_000 - 1}, "end_at is before start_at"),
    # oversized text
    ("MeetingBooked", {"event_id": "e" * (MAX_ID + 1)}, f"field event_id is too long ({MAX_ID + 1} > {MAX_ID} characters)"),
    ("MeetingBooked", {"company_id": "c" * (MAX_ID + 1)}, "field company_id is too long"),
    ("MeetingBooked", {"booker__name": "n" * 1_001}, "field booker.name is too long"),
    ("MeetingBooked", {"booker__phone": "1" * 101}, "field booker.phone is too long"),
    ("MeetingBooked", {"meeting_url": "u" * 4_001}, "field meeting_url is too long"),
    ("ResearchCompleted", {"result": "r" * (MAX_TEXT + 1)}, "field result is too long"),
    ("SurveyAnswered", {"answers": [{"question": "q", "answer": "a" * (MAX_TEXT + 1)}]}, "field answers[0].answer is too long"),
    ("MeetingBooked", {"form_answers": [{"question": 7, "answer": "a"}]}, "field form_answers[0].question must be a string"),
    # too many Q&A items
    ("SurveyAnswered", {"answers": [{"question": "q", "answer": "a"}] * (MAX_QA_ITEMS + 1)},
     f"field answers has too many items ({MAX_QA_ITEMS + 1} > {MAX_QA_ITEMS})"),
    ("MeetingBooked", {"form_answers": [{"question": "q", "answer": "a"}] * (MAX_QA_ITEMS + 1)},
     "field form_answers has too many items"),
]


@pytest.mark.parametrize("schema,changes,reason", INVALID, ids=[f"{s}:{r[:40]}" for s, _, r in INVALID])
def test_invalid_record_raises_readable_reason(schema, changes, reason):
    with pytest.raises(ValidationError) as info:
        event_from_record(schema, record(schema, **changes))
    assert reason in str(info.value)


def test_limits_are_inclusive():
    value = record(
        "SurveyAnswered",
        event_id="e" * MAX_ID,
        answers=[{"question": "q", "answer": "a" * MAX_TEXT}] + [{"question": "q", "answer": "a"}] * (MAX_QA_ITEMS - 1),
    )
    event = event_from_record("SurveyAnswered", value)
    assert len(event.answers) == MAX_QA_ITEMS and len(event.event_id) == MAX_ID


def test_unknown_schema_is_rejected():
    with pytest.raises(ValidationError, match="schema CompanySettings is not an input event"):
        event_from_record("CompanySettings", {"company_id": "acme"})


def test_validation_error_is_a_value_error():
    assert issubclass(ValidationError, ValueError)


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "UTC", "America/Los_Angeles", "Europe/London"])
def test_valid_timezone(tz):
    assert records.valid_timezone(tz)


@pytest.mark.parametrize("tz", ["", "Asia", "America", "Nope/Nope", "Asia/Tokyo ", "../x", "/etc/passwd"])
def test_invalid_timezone(tz):
    assert not records.valid_timezone(tz)


# ---- settings documents -----------------------------------------------------------------------

TOGGLES = {
    "meeting_booked": True,
    "research_completed": False,
    "pre_meeting_survey_answered": True,
    "pre_exit_survey_answered": False,
}


def test_event_toggles_get_and_with():
    t = EventToggles()
    assert not any(t.get(e) for e in EventType)
    on = t.with_(EventType.RESEARCH_COMPLETED, True)
    assert on.get(EventType.RESEARCH_COMPLETED) and not t.get(EventType.RESEARCH_COMPLETED)
    assert [on.get(e) for e in EventType] == [False, True, False, False]


def test_company_round_trip():
    doc = CompanySettings(
        company_id="acme/日本", salesforce_connected=True, hubspot_connected=False,
        salesforce_company_todo=EventToggles(meeting_booked=True, pre_exit_survey_answered=True),
        paused=True, timezone="America/New_York", updated_at=T0, updated_by="admin@acme",
    )
    rec = company_to_record(doc)
    assert rec["salesforce_company_todo"] == {
        "meeting_booked": True, "research_completed": False,
        "pre_meeting_survey_answered": False, "pre_exit_survey_answered": True,
    }
    assert company_from_record(rec) == doc
    assert company_from_record(company_to_record(CompanySettings("c"))) == CompanySettings("c")


def test_company_defaults():
    doc = company_from_record({"company_id": "acme", "updated_at": T0})
    assert doc == CompanySettings(company_id="acme", updated_at=T0)
    assert doc.timezone == "Asia/Tokyo" and not doc.paused
    assert not doc.connected(Crm.SALESFORCE) and not doc.connected(Crm.HUBSPOT)


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"company_id": ""}, "required field is empty: company_id"),
        ({"company_id": None}, "required field missing: company_id"),
        ({"timezone": "Mars/Base"}, "not an IANA time zone"),
        ({"timezone": "Asia"}, "not an IANA time zone"),
        ({"updated_at": "yesterday"}, "updated_at must be a timestamp"),
    ],
)
def test_company_invalid(changes, reason):
    with pytest.raises(ValidationError, match=reason):
        company_from_record({"company_id": "acme", "salesforce_company_todo": TOGGLES, "updated_at": T0, **changes})


def test_company_connected_per_crm():
    doc = CompanySettings("acme", salesforce_connected=True)
    assert doc.connected(Crm.SALESFORCE) and not doc.connected(Crm.HUBSPOT)


def _meeting_type() -> MeetingTypeSettings:
    return MeetingTypeSettings(
        company_id="acme", meeting_type_id="mt/1%:日本", meeting_type_name="製品デモ",
        salesforce_todo=EventToggles(meeting_booked=True), hubspot_sync=EventToggles(research_completed=True),
        salesforce_subject="件名 {booker_name}", salesforce_comment="comment", hubspot_meeting_title="title",
        hubspot_meeting_body="body",
        field_mappings=(
            FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Phone__c", "booker.phone"),
            FieldMapping(Crm.HUBSPOT, EventType.RESEARCH_COMPLETED, "lead_company", "target.company_name"),
        ),
        updated_at=T0, updated_by="admin",
    )


def test_meeting_type_round_trip():
    doc = _meeting_type()
    rec = meeting_type_to_record(doc)
    assert rec["field_mappings"][0] == {
        "crm": "SALESFORCE", "event_type": "meeting_booked", "crm_field": "Phone__c", "source": "booker.phone",
        "allow_core": False,
    }
    assert meeting_type_from_record(rec) == doc
    empty = MeetingTypeSettings("acme", "mt-2")
    assert meeting_type_from_record(meeting_type_to_record(empty)) == empty


def test_meeting_type_toggles_per_crm():
    doc = _meeting_type()
    assert doc.toggles(Crm.SALESFORCE).get(EventType.MEETING_BOOKED)
    assert not doc.toggles(Crm.HUBSPOT).get(EventType.MEETING_BOOKED)
    assert doc.toggles(Crm.HUBSPOT).get(EventType.RESEARCH_COMPLETED)


@pytest.mark.parametrize("crm", ["SALESFORCE", "salesforce", "HubSpot"])
def test_field_mapping_crm_case_insensitive(crm):
    rec = meeting_type_to_record(_meeting_type())
    rec["field_mappings"] = [{"crm": crm, "event_type": "meeting_booked", "crm_field": "F", "source": "booker.name"}]
    assert meeting_type_from_record(rec).field_mappings[0].crm is Crm(crm.lower())


@pytest.mark.parametrize(
    "mapping,reason",
    [
        ({"crm": "zoho", "event_type": "meeting_booked", "crm_field": "F", "source": "s"}, "field_mappings[0] is invalid"),
        ({"crm": "SALESFORCE", "event_type": "nope", "crm_field": "F", "source": "s"}, "field_mappings[0] is invalid"),
        ({"event_type": "meeting_booked", "crm_field": "F", "source": "s"}, "field_mappings[0] is invalid"),
        ({"crm": "SALESFORCE", "event_type": "meeting_booked", "crm_field": "", "source": "s"}, "crm_field"),
        ({"crm": "SALESFORCE", "event_type": "meeting_booked", "crm_field": "F", "source": None}, "source"),
    ],
)
def test_field_mapping_invalid(mapping, reason):
    rec = meeting_type_to_record(_meeting_type())
    rec["field_mappings"] = [mapping]
    with pytest.raises(ValidationError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        meeting_type_from_record(rec)


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"meeting_type_id": ""}, "required field is empty: meeting_type_id"),
        ({"company_id": None}, "required field missing: company_id"),
        ({"salesforce_subject": 5}, "salesforce_subject must be a string"),
        ({"hubspot_meeting_body": "b" * (MAX_TEXT + 1)}, "hubspot_meeting_body is too long"),
    ],
)
def test_meeting_type_invalid(changes, reason):
    rec = {**meeting_type_to_record(_meeting_type()), **changes}
    with pytest.raises(ValidationError, match=reason):
        meeting_type_from_record(rec)


# ---- actions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("crm,object_type,origin,owner", [
    (Crm.SALESFORCE, ObjectType.TASK, Origin.COMPANY, "host@example.com"),
    (Crm.SALESFORCE, ObjectType.TASK, Origin.MEETING_TYPE, None),
    (Crm.HUBSPOT, ObjectType.MEETING, Origin.MEETING_TYPE, "host@example.com"),
    (Crm.HUBSPOT, ObjectType.NOTE, Origin.MEETING_TYPE, None),
])
def test_action_round_trip(crm, object_type, origin, owner):
    action = Action(
        action_id="a" * 32, event_id="evt-1", event_type=EventType.PRE_EXIT_SURVEY_ANSWERED, company_id="acme",
        meeting_type_id="mt-1", crm=crm, object_type=object_type, origin=origin, occurred_at=T0,
        due_at=T0 + 600_000, planned_at=T0 + 5, contact_email="lead@example.org", owner_email=owner,
        properties={"Subject": "s", "Description": "<script>"}, attempt=3,
    )
    rec = action_to_record(action)
    assert rec["crm"] == crm.name and rec["object_type"] == object_type.value and rec["origin"] == origin.value
    assert action_from_record(rec) == action
    rec.pop("attempt")
    rec.pop("owner_email")
    assert action_from_record(rec).attempt == 0 and action_from_record(rec).owner_email is None


@pytest.mark.parametrize("delays,ok", [
    ([], True), ([1200, 3600], True), ([1], True), ([7 * 86_400], True), (list(range(1, 11)), True),
    ([0], False), ([-5], False), ([3600, 1200], False), ([60, 60], False), ([7 * 86_400 + 1], False),
    (list(range(1, 12)), False), ([1.5], False), ([True], False), (["60"], False),
])
def test_contact_recheck_delays(delays, ok):
    rec = company_to_record(CompanySettings("acme"))
    rec["contact_recheck_seconds"] = delays
    if ok:
        assert company_from_record(rec).contact_recheck_seconds == tuple(delays)
        assert check_recheck_delays(delays) == tuple(delays)
    else:
        with pytest.raises(ValidationError):
            company_from_record(rec)


def test_company_without_recheck_delays_is_off():
    rec = company_to_record(CompanySettings("acme"))
    del rec["contact_recheck_seconds"]
    assert company_from_record(rec).contact_recheck_seconds == ()
