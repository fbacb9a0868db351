"""rules.py: settings keys, the due-time decision, admin edits and apply-to-other-meeting-types (SPEC §3)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from processors.domain import rules
from processors.domain.model import (
    CompanySettings,
    Crm,
    EventToggles,
    EventType,
    FieldMapping,
    MeetingTypeSettings,
    Person,
    SurveyAnswered,
)
from processors.domain.planner import plan
from processors.domain.rules import DueDecision, SettingsError

NOW = 1_795_451_400_000
LATER = NOW + 60_000
ALL_ON = EventToggles(True, True, True, True)


# ---- keys ------------------------------------------------------------------------------------

IDS = ["acme", "a/b", "a//b/", "100%", "%2F", "a:b", "日本語/株式会社", "a b", "?#&=+", "mt-1.v2~x", "ü%/:é"]


@pytest.mark.parametrize("company_id", IDS)
def test_company_key_round_trip(company_id):
    key = rules.company_key(company_id)
    assert key.startswith("company/") and key.count("/") == 1
    assert rules.parse_settings_key(key) == rules.SettingsKey("company", company_id)
    key.encode("ascii")  # keys are plain ASCII after percent-encoding


@pytest.mark.parametrize("company_id", IDS)
@pytest.mark.parametrize("meeting_type_id", ["mt-1", "a/b", "50%", "x:y", "面談/タイプ"])
def test_meeting_type_key_round_trip(company_id, meeting_type_id):
    key = rules.meeting_type_key(company_id, meeting_type_id)
    assert key.startswith("meeting-type/") and key.count("/") == 2
    assert rules.parse_settings_key(key) == rules.SettingsKey("meeting_type", company_id, meeting_type_id)


def test_keys_are_injective():
    keys = {
        rules.company_key("a/b"),
        rules.company_key("a%2Fb"),
        rules.meeting_type_key("a", "b/c"),
        rules.meeting_type_key("a/b", "c"),
        rules.meeting_type_key("a", "b%2Fc"),
        rules.meeting_type_key("a%2F", "b"),
    }
    assert len(keys) == 6


@pytest.mark.parametrize(
    "key", ["", "company", "company/", "company/a/b", "meeting-type/a", "meeting-type/a/", "meeting-type//b",
            "meeting-type/a/b/c", "companies/a", "Company/a"]
)
def test_parse_rejects_non_keys(key):
    with pytest.raises(SettingsError, match="not a settings key"):
        rules.parse_settings_key(key)


# ---- decide_when_due (rule 7) -----------------------------------------------------------------

DUE = [
    ("missing company", None, Crm.SALESFORCE, DueDecision.DROP),
    ("missing company hs", None, Crm.HUBSPOT, DueDecision.DROP),
    ("connected", CompanySettings("c", salesforce_connected=True), Crm.SALESFORCE, DueDecision.DELIVER),
    ("other crm connected only", CompanySettings("c", hubspot_connected=True), Crm.SALESFORCE, DueDecision.DROP),
    ("hs connected", CompanySettings("c", hubspot_connected=True), Crm.HUBSPOT, DueDecision.DELIVER),
    ("paused", CompanySettings("c", salesforce_connected=True, paused=True), Crm.SALESFORCE, DueDecision.HOLD),
    ("paused hs", CompanySettings("c", hubspot_connected=True, paused=True), Crm.HUBSPOT, DueDecision.HOLD),
    ("paused and disconnected", CompanySettings("c", paused=True), Crm.SALESFORCE, DueDecision.DROP),
    ("toggles off do not matter when due", CompanySettings("c", salesforce_connected=True,
                                                           salesforce_company_todo=EventToggles()),
     Crm.SALESFORCE, DueDecision.DELIVER),
]


@pytest.mark.parametrize("name,company,crm,expected", DUE, ids=[d[0] for d in DUE])
def test_decide_when_due(name, company, crm, expected):
    assert rules.decide_when_due(crm, company) is expected


def test_pause_then_resume_delivers():
    doc = CompanySettings("c", salesforce_connected=True)
    paused = rules.set_paused(doc, True, NOW)
    assert rules.decide_when_due(Crm.SALESFORCE, paused) is DueDecision.HOLD
    assert rules.decide_when_due(Crm.SALESFORCE, rules.set_paused(paused, False, LATER)) is DueDecision.DELIVER


# ---- company edits ---------------------------------------------------------------------------


def test_new_documents_are_off_by_default():
    company = rules.new_company("acme", NOW, "admin")
    assert company == CompanySettings("acme", updated_at=NOW, updated_by="admin")
    assert company.timezone == "Asia/Tokyo" and not company.paused
    assert not company.salesforce_connected and not company.hubspot_connected
    mt = rules.new_meeting_type("acme", "mt-1", NOW)
    assert mt == MeetingTypeSettings("acme", "mt-1", updated_at=NOW)
    assert not any(mt.toggles(c).get(e) for c in Crm for e in EventType)


@pytest.mark.parametrize("crm", list(Crm))
def test_set_connected_changes_only_that_crm(crm):
    doc = CompanySettings("acme", salesforce_connected=True, hubspot_connected=True, salesforce_company_todo=ALL_ON,
                          paused=True, timezone="UTC")
    off = rules.set_connected(doc, crm, False, LATER, "admin")
    assert not off.connected(crm)
    other = Crm.HUBSPOT if crm is Crm.SALESFORCE else Crm.SALESFORCE
    assert off.connected(other)
    assert replace(off, salesforce_connected=True, hubspot_connected=True, updated_at=0, updated_by=None) == replace(
        doc, updated_at=0
    )
    assert (off.updated_at, off.updated_by) == (LATER, "admin")
    assert rules.set_connected(off, crm, True, LATER + 1).connected(crm)


def test_disconnect_keeps_meeting_type_settings_and_reconnect_resumes_with_them():
    company = CompanySettings("acme", salesforce_connected=True, hubspot_connected=True)
    mt = MeetingTypeSettings("acme", "mt-1", salesforce_todo=ALL_ON, hubspot_sync=ALL_ON, salesforce_subject="S")
    event = SurveyAnswered("e1", NOW, "acme", "mt-1", "PRE_EXIT", Person("a@b.co", "A"))

    disconnected = rules.set_connected(rules.set_connected(company, Crm.SALESFORCE, False, NOW), Crm.HUBSPOT, False, NOW)
    # the edit returns the company document only: there is nothing to publish for the meeting type
    assert isinstance(disconnected, CompanySettings)
    off = plan(event, disconnected, mt, NOW, 600_000)
    assert off.actions == () and {s.reason for s in off.skips} == {"integration_disabled"}

    reconnected = rules.set_connected(rules.set_connected(disconnected, Crm.SALESFORCE, True, LATER), Crm.HUBSPOT, True, LATER)
    on = plan(event, reconnected, mt, NOW, 600_000)
    assert sorted(a.crm.value for a in on.actions) == ["hubspot", "salesforce"]


def test_set_paused_and_company_todo():
    doc = CompanySettings("acme", salesforce_connected=True)
    paused = rules.set_paused(doc, True, NOW, "ops")
    assert paused.paused and paused.salesforce_connected and paused.updated_by == "ops"
    todo = rules.set_company_todo(doc, EventType.RESEARCH_COMPLETED, True, NOW)
    assert [todo.salesforce_company_todo.get(e) for e in EventType] == [False, True, False, False]
    assert not rules.set_company_todo(todo, EventType.RESEARCH_COMPLETED, False, NOW).salesforce_company_todo.get(
        EventType.RESEARCH_COMPLETED
    )
    assert doc.salesforce_company_todo == EventToggles()  # documents are immutable


@pytest.mark.parametrize("crm", list(Crm))
@pytest.mark.parametrize("event_type", list(EventType))
def test_set_meeting_type_toggle_changes_one_cell(crm, event_type):
    doc = MeetingTypeSettings("acme", "mt-1")
    on = rules.set_meeting_type_toggle(doc, crm, event_type, True, NOW, "admin")
    for c in Crm:
        for e in EventType:
            assert on.toggles(c).get(e) is (c is crm and e is event_type)
    assert (on.updated_at, on.updated_by) == (NOW, "admin")


# ---- apply to other meeting types (rule 5) ------------------------------------------------------


def _source() -> MeetingTypeSettings:
    return MeetingTypeSettings(
        "acme", "src",
        salesforce_todo=EventToggles(meeting_booked=True, research_completed=True,
                                     pre_meeting_survey_answered=False, pre_exit_survey_answered=True),
        hubspot_sync=EventToggles(meeting_booked=True, research_completed=False,
                                  pre_meeting_survey_answered=True, pre_exit_survey_answered=False),
        salesforce_subject="src subject", salesforce_comment="src comment",
        hubspot_meeting_title="src title", hubspot_meeting_body="src body",
    )


def _target(mt_id: str = "t1") -> MeetingTypeSettings:
    # the inverse of the source everywhere, so every copied cell is visible
    return MeetingTypeSettings(
        "acme", mt_id, meeting_type_name="target",
        salesforce_todo=EventToggles(meeting_booked=False, research_completed=False,
                                     pre_meeting_survey_answered=True, pre_exit_survey_answered=False),
        hubspot_sync=EventToggles(meeting_booked=False, research_completed=True,
                                  pre_meeting_survey_answered=False, pre_exit_survey_answered=True),
        salesforce_subject="t subject", salesforce_comment="t comment",
        hubspot_meeting_title="t title", hubspot_meeting_body="t body",
        field_mappings=(FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "F", "booker.name"),),
    )


SELECTIONS = [
    [EventType.MEETING_BOOKED],
    [EventType.RESEARCH_COMPLETED],
    [EventType.PRE_MEETING_SURVEY_ANSWERED, EventType.PRE_EXIT_SURVEY_ANSWERED],
    list(EventType),
]


@pytest.mark.parametrize("crm", list(Crm))
@pytest.mark.parametrize("selected", SELECTIONS, ids=lambda s: "+".join(e.value for e in s))
def test_apply_copies_only_selected_event_types_of_one_crm(crm, selected):
    source, target = _source(), _target()
    other = Crm.HUBSPOT if crm is Crm.SALESFORCE else Crm.SALESFORCE
    [result] = rules.apply_to_other_meeting_types(source, [target], crm, selected, NOW, "admin")
    for e in EventType:
        expected = source.toggles(crm).get(e) if e in selected else target.toggles(crm).get(e)
        assert result.toggles(crm).get(e) is expected, e
    assert result.toggles(other) == target.toggles(other)  # the other CRM is left alone
    assert (result.company_id, result.meeting_type_id, result.meeting_type_name) == ("acme", "t1", "target")
    # mappings of the selected events of this CRM become the source's (here: none)
    copied = crm is Crm.SALESFORCE and EventType.MEETING_BOOKED in selected
    assert result.field_mappings == (() if copied else target.field_mappings)
    assert (result.updated_at, result.updated_by) == (NOW, "admin")
    # texts of a booked meeting travel with the meeting_booked selection of their CRM only
    sf_texts = (result.salesforce_subject, result.salesforce_comment)
    hs_texts = (result.hubspot_meeting_title, result.hubspot_meeting_body)
    booked = EventType.MEETING_BOOKED in selected
    assert sf_texts == (("src subject", "src comment") if booked and crm is Crm.SALESFORCE else ("t subject", "t comment"))
    assert hs_texts == (("src title", "src body") if booked and crm is Crm.HUBSPOT else ("t title", "t body"))


def test_apply_copies_off_as_well_as_on_and_to_many_targets():
    source = replace(_source(), salesforce_todo=EventToggles())
    targets = [replace(_target(f"t{i}"), salesforce_todo=ALL_ON) for i in range(3)]
    result = rules.apply_to_other_meeting_types(source, targets, Crm.SALESFORCE, [EventType.RESEARCH_COMPLETED], NOW)
    assert [r.meeting_type_id for r in result] == ["t0", "t1", "t2"]
    for r in result:
        assert r.salesforce_todo == EventToggles(True, False, True, True)


def test_apply_leaves_source_and_inputs_unchanged():
    source, target = _source(), _target()
    rules.apply_to_other_meeting_types(source, [target], Crm.SALESFORCE, list(EventType), NOW)
    assert source == _source() and target == _target()


def test_apply_with_duplicate_event_types():
    [a] = rules.apply_to_other_meeting_types(_source(), [_target()], Crm.HUBSPOT,
                                             [EventType.MEETING_BOOKED, EventType.MEETING_BOOKED], NOW)
    [b] = rules.apply_to_other_meeting_types(_source(), [_target()], Crm.HUBSPOT, [EventType.MEETING_BOOKED], NOW)
    assert a == b


@pytest.mark.parametrize(
    "targets,selected,reason",
    [
        ([_target()], [], "no event type selected"),
        ([], [EventType.MEETING_BOOKED], "no target meeting type given"),
        ([_target("src")], [EventType.MEETING_BOOKED], "cannot be its own target"),
        ([_target(), _target("src")], [EventType.MEETING_BOOKED], "cannot be its own target"),
        ([replace(_target(), company_id="other")], [EventType.MEETING_BOOKED], "source's company"),
        ([_target("t1"), replace(_target("t2"), company_id="other")], [EventType.MEETING_BOOKED], "source's company"),
    ],
    ids=["empty-selection", "no-targets", "self", "self-among-others", "foreign", "foreign-among-others"],
)
def test_apply_rejects_bad_requests_atomically(targets, selected, reason):
    # a rejection raises: no partial list of documents exists for the caller to publish
    with pytest.raises(SettingsError, match=reason):
        rules.apply_to_other_meeting_types(_source(), targets, Crm.SALESFORCE, selected, NOW)


def test_apply_accepts_generators():
    result = rules.apply_to_other_meeting_types(
        _source(), (t for t in [_target()]), Crm.SALESFORCE, (e for e in [EventType.MEETING_BOOKED]), NOW
    )
    assert result[0].salesforce_todo.get(EventType.MEETING_BOOKED)
