"""preview.py: the planner and the delivery's field functions, shown action by action (a table of
settings → what would happen), and the event formats an admin gives it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest

from processors.codec import Codec
from processors.domain.model import CompanySettings, Crm, EventToggles, EventType, MeetingTypeSettings
from processors.ops.preview import Person, PreviewError, decode_event, format_text, preview
from tests.unit.test_planner import ALL_ON, BOOKER, DELAY, HOST, NOW, OFF, make_event

EVENT = make_event(EventType.MEETING_BOOKED)


@dataclass
class Settings:
    c: CompanySettings | None
    m: MeetingTypeSettings | None

    def company(self, company_id: str) -> CompanySettings | None:
        return self.c

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        return self.m


class FakeCrm:
    """The lookups a delivery makes, answered from a table (None: not found)."""

    def __init__(self, people: dict[str, Person] | None = None, users: dict[str, str] | None = None,
                 contacts: dict[str, str] | None = None, owners: dict[str, str] | None = None) -> None:
        self.people, self.users, self.contacts, self.owners = people or {}, users or {}, contacts or {}, owners or {}

    def salesforce_person(self, email: str) -> Person | None:
        return self.people.get(email)

    def salesforce_user(self, email: str) -> str | None:
        return self.users.get(email)

    def hubspot_contact(self, email: str) -> str | None:
        return self.contacts.get(email)

    def hubspot_owner(self, email: str) -> str | None:
        return self.owners.get(email)


def company(**kw: object) -> CompanySettings:
    return CompanySettings("acme", **{"salesforce_connected": True, "hubspot_connected": True, **kw})  # type: ignore[arg-type]


def mt(sf: EventToggles = ALL_ON, hs: EventToggles = ALL_ON) -> MeetingTypeSettings:
    return MeetingTypeSettings("acme", "mt-1", salesforce_todo=sf, hubspot_sync=hs)


FOUND = FakeCrm(people={BOOKER.email: Person("003C", "005RECORD")}, users={HOST.email: "005HOST"},
                contacts={BOOKER.email: "901"}, owners={HOST.email: "77"})

CASES = [
    # name, settings, resolver, [(crm, origin, outcome, contact, owner)], skips
    ("both CRMs, resolved", Settings(company(), mt()), FOUND,
     [("salesforce", "meeting_type", "create", "003C", "005HOST"), ("hubspot", "meeting_type", "create", "901", "77")], []),
    ("the double ToDo", Settings(company(salesforce_company_todo=ALL_ON), mt(hs=OFF)), FOUND,
     [("salesforce", "company", "create", "003C", "005HOST"), ("salesforce", "meeting_type", "create", "003C", "005HOST")], []),
    ("host is no User: the record's owner", Settings(company(), mt(hs=OFF)), FakeCrm(people={BOOKER.email: Person("003C", "005RECORD")}),
     [("salesforce", "meeting_type", "create", "003C", "005RECORD")], []),
    ("no contact in either CRM", Settings(company(), mt()), FakeCrm(),
     [("salesforce", "meeting_type", "skip: contact_not_found", None, None), ("hubspot", "meeting_type", "skip: contact_not_found", None, None)], []),
    ("not connected", Settings(company(salesforce_connected=False, hubspot_connected=False), mt()), FOUND, [],
     [{"crm": "salesforce", "reason": "integration_disabled"}, {"crm": "hubspot", "reason": "integration_disabled"}]),
    ("toggles off", Settings(company(), mt(sf=OFF, hs=OFF)), FOUND, [], []),
    ("unknown meeting type", Settings(company(), None), FOUND, [], [{"crm": "any", "reason": "no_settings"}]),
    ("unknown company", Settings(None, None), FOUND, [], [{"crm": "any", "reason": "no_settings"}]),
]


@pytest.mark.parametrize(("name", "settings", "resolver", "actions", "skips"), CASES, ids=[c[0] for c in CASES])
def test_what_would_happen(name: str, settings: Settings, resolver: FakeCrm, actions: list[tuple[object, ...]], skips: list[dict[str, str]]) -> None:
    shown = preview(EVENT, "acme", settings, NOW, DELAY, resolver)
    got = [(a.crm, a.origin, a.outcome, a.contact if a.outcome == "create" else None, a.owner) for a in shown.actions]
    assert sorted(got, key=repr) == sorted(actions, key=repr)
    assert shown.skipped == skips
    assert shown.nothing == (not actions)


def test_the_fields_are_the_delivery_s_own_with_the_id_field_filled() -> None:
    shown = preview(EVENT, "acme", Settings(company(), mt()), NOW, DELAY, FOUND, {Crm.SALESFORCE: "CrmSync_Action_Id__c", Crm.HUBSPOT: None})
    task = next(a for a in shown.actions if a.crm == "salesforce")
    assert task.fields["WhoId"] == "003C" and task.fields["OwnerId"] == "005HOST"
    assert task.fields["CrmSync_Action_Id__c"] == task.action_id
    assert task.fields["Subject"] and task.fields["ActivityDate"] and task.fields["Description"]
    meeting = next(a for a in shown.actions if a.crm == "hubspot")
    assert meeting.fields["hubspot_owner_id"] == "77" and meeting.fields["hs_meeting_title"]


def test_a_paused_company_s_actions_are_shown_held() -> None:
    shown = preview(EVENT, "acme", Settings(company(paused=True), mt()), NOW, DELAY, FOUND)
    assert shown.actions and all(a.held and "paused" in a.held for a in shown.actions)
    assert "held until it resumes" in format_text(shown)


def test_without_lookups_it_says_what_it_would_look_up() -> None:
    shown = preview(EVENT, "acme", Settings(company(), mt(hs=OFF)), NOW, DELAY)
    [task] = shown.actions
    assert task.contact == f"the Lead/Contact with e-mail {BOOKER.email}" and task.owner == f"the owner with e-mail {HOST.email}"
    assert "--resolve" in format_text(shown)


def test_an_old_event_is_due_at_once() -> None:
    shown = preview(EVENT, "acme", Settings(company(), mt(hs=OFF)), EVENT.occurred_at + 2 * DELAY, DELAY, FOUND)
    assert shown.actions[0].due_now and "at once" in format_text(shown)


def test_another_company_s_event_is_refused() -> None:
    with pytest.raises(PreviewError, match="belongs to company acme"):
        preview(EVENT, "globex", Settings(company(), mt()), NOW, DELAY)


def test_events_come_as_json_bare_or_wrapped_or_as_avro() -> None:
    record = asdict(EVENT)  # the publisher's record: the event's fields, people and Q&A as maps
    codec = Codec()
    assert decode_event(json.dumps(record).encode(), codec) == EVENT
    assert decode_event(json.dumps({"schema": "MeetingBooked", "value": record}).encode(), codec) == EVENT
    assert decode_event(codec.encode("MeetingBooked", record), codec) == EVENT


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{not json", "not JSON"),
        (b'{"event_id": "x"}', "needs a meeting_id"),
        (b"\x01\x02garbage", "not an event record"),
        (json.dumps({"schema": "MeetingBooked", "value": {"event_id": "x"}}).encode(), "would dead-letter"),
    ],
)
def test_bad_input_gets_a_clear_error(raw: bytes, why: str) -> None:
    with pytest.raises(PreviewError, match=why):
        decode_event(raw, Codec())
