"""deliverer_module.py resolution: WhoId / OwnerId for Salesforce Tasks (SPEC §5), HubSpot owner and contact (§6).

The pure functions are tested directly; the per-event-type owner rule (host's User first, else the record
owner, or the record owner only) is then checked end to end through `Deliverer.deliver` with in-memory fake
CRM clients (no network).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from connectors.errors import Result
from connectors.retry import RetryPolicy
from connectors.salesforce import Person as SfPerson
from processors.stages import deliverer as deliverer_module
from processors.metrics import Metrics
from processors.domain.model import (
    QA,
    Action,
    CompanySettings,
    Crm,
    EventToggles,
    EventType,
    MeetingBooked,
    MeetingTypeSettings,
    ObjectType,
    Origin,
    Person,
    ResearchCompleted,
    SurveyAnswered,
)
from processors.domain.planner import plan
from processors.domain.deliver import CREATED, SKIPPED, hubspot_properties, salesforce_task_fields

T = int(datetime(2026, 11, 23, 16, 30, tzinfo=timezone.utc).timestamp() * 1000)
HOST = Person("Host@Example.com", "Hana Host")
LEAD = Person("Lead@Example.org", "Lee Lead", "Lead Co", "+81-90-1111-2222")
ALL_ON = EventToggles(True, True, True, True)


def action(**kw) -> Action:
    base = dict(
        action_id="a1", event_id="e1", event_type=EventType.MEETING_BOOKED, company_id="acme", meeting_type_id="mt-1",
        crm=Crm.SALESFORCE, object_type=ObjectType.TASK, origin=Origin.MEETING_TYPE, occurred_at=T,
        due_at=T + 600_000, planned_at=T, contact_email="lead@example.org", owner_email="host@example.com",
        properties={"Subject": "s", "Description": "d", "ActivityDate": "2026-11-24"},
    )
    base.update(kw)
    return Action(**base)


# ---- pure: salesforce_task_fields ------------------------------------------------------------

WHO = SfPerson("003CONTACT", "005RECORDOWNER", "Contact")


@pytest.mark.parametrize(
    "who,host_user,expected",
    [
        (WHO, "005HOSTUSER", {"WhoId": "003CONTACT", "OwnerId": "005HOSTUSER"}),
        (WHO, None, {"WhoId": "003CONTACT", "OwnerId": "005RECORDOWNER"}),
        (WHO, "", {"WhoId": "003CONTACT", "OwnerId": "005RECORDOWNER"}),
        (SfPerson("00QLEAD", "005LEADOWNER", "Lead"), None, {"WhoId": "00QLEAD", "OwnerId": "005LEADOWNER"}),
        (SfPerson("00QLEAD", "", "Lead"), None, {"WhoId": "00QLEAD"}),  # no owner at all: Salesforce defaults it
    ],
)
def test_salesforce_task_fields(who, host_user, expected):
    resolved = salesforce_task_fields(action(), who, host_user)
    assert resolved.skip_reason is None
    assert resolved.fields == {"Subject": "s", "Description": "d", "ActivityDate": "2026-11-24", **expected}


@pytest.mark.parametrize("host_user", [None, "005HOSTUSER"])
def test_no_lead_or_contact_means_no_task(host_user):
    resolved = salesforce_task_fields(action(), None, host_user)
    assert resolved.fields is None and resolved.skip_reason == "contact_not_found"


def test_salesforce_task_fields_does_not_mutate_the_action():
    a = action()
    salesforce_task_fields(a, WHO, "005HOSTUSER")
    assert "WhoId" not in a.properties and "OwnerId" not in a.properties


# ---- pure: hubspot_properties ----------------------------------------------------------------


@pytest.mark.parametrize("owner,expected", [("77", {"hubspot_owner_id": "77"}), (None, {}), ("", {})])
def test_hubspot_properties_owner_only_when_found(owner, expected):
    a = action(crm=Crm.HUBSPOT, object_type=ObjectType.MEETING, properties={"hs_meeting_title": "t"})
    assert hubspot_properties(a, owner) == {"hs_meeting_title": "t", **expected}
    assert "hubspot_owner_id" not in a.properties


# ---- end to end through Deliverer with fake clients ------------------------------------------


@dataclass
class FakeSalesforce:
    people: dict[str, SfPerson]
    users: dict[str, str]
    calls: list = field(default_factory=list)
    created: list = field(default_factory=list)

    def find_people(self, emails):
        self.calls.append(("find_people", list(emails)))
        return {e.lower(): self.people[e.lower()] for e in emails if e.lower() in self.people}

    def find_users(self, emails, active_only=True):
        self.calls.append(("find_users", list(emails)))
        return {e.lower(): self.users[e.lower()] for e in emails if e.lower() in self.users}

    def create_tasks(self, records):
        self.created.extend(dict(r) for r in records)
        return [Result(id=f"00T00000000000{i + 1}") for i in range(len(records))]


@dataclass
class FakeHubSpot:
    contacts: dict[str, str]
    owners: dict[str, str]
    calls: list = field(default_factory=list)
    created: list = field(default_factory=list)

    def find_contacts(self, emails):
        self.calls.append(("find_contacts", list(emails)))
        return {e.lower(): self.contacts[e.lower()] for e in emails if e.lower() in self.contacts}

    def find_owner(self, email):
        self.calls.append(("find_owner", email))
        return self.owners.get(email.lower())

    def create_meetings(self, items):
        self.created.extend(("MEETING", dict(p), c) for p, c in items)
        return [Result(id=f"m{i + 1}") for i in range(len(items))]

    def create_notes(self, items):
        self.created.extend(("NOTE", dict(p), c) for p, c in items)
        return [Result(id=f"n{i + 1}") for i in range(len(items))]


class FakeCredentials:
    def salesforce(self, company_id):
        return ("sf", company_id)

    def hubspot(self, company_id):
        return ("hs", company_id)

    def invalidate(self, company_id, crm):
        pass


@pytest.fixture
def fakes(monkeypatch):
    sf = FakeSalesforce(people={}, users={})
    hs = FakeHubSpot(contacts={}, owners={})
    monkeypatch.setattr(deliverer_module, "SalesforceClient", lambda creds, ca, reload=None, throttle=None, **kw: sf)
    monkeypatch.setattr(deliverer_module, "HubSpotClient", lambda creds, ca, reload=None, throttle=None, **kw: hs)
    deliverer = deliverer_module.Deliverer(FakeCredentials(), None, RetryPolicy(base=0.0, cap=0.0, max_elapsed=0.0), Metrics.create())
    return deliverer, sf, hs


def deliver(deliverer, a):
    [outcome] = asyncio.run(deliverer.deliver_batch(a.crm, a.company_id, [a]))
    return outcome


def make_event(event_type: EventType, host: Person | None = HOST):
    common = dict(event_id="e-" + event_type.value, occurred_at=T, company_id="acme", meeting_type_id="mt-1")
    if event_type is EventType.MEETING_BOOKED:
        return MeetingBooked(**common, meeting_id="m", meeting_type_name="Demo", host=host or HOST, booker=LEAD,
                             start_at=T, end_at=T + 1_800_000, timezone="Asia/Tokyo", form_answers=(QA("q", "a"),))
    if event_type is EventType.RESEARCH_COMPLETED:
        return ResearchCompleted(**common, research_kind="CUSTOMER", target=LEAD, result="r")
    kind = "PRE_MEETING" if event_type is EventType.PRE_MEETING_SURVEY_ANSWERED else "PRE_EXIT"
    return SurveyAnswered(**common, survey_kind=kind, respondent=LEAD, host=host, answers=(QA("q", "a"),))


def planned(event, crm: Crm) -> Action:
    company = CompanySettings("acme", salesforce_connected=True, hubspot_connected=True)
    mt = MeetingTypeSettings("acme", "mt-1", salesforce_todo=ALL_ON, hubspot_sync=ALL_ON)
    [a] = [a for a in plan(event, company, mt, T, 600_000).actions if a.crm is crm]
    return a


OWNER_TABLE = [
    # event type, host on the event, host is a Salesforce User, expected OwnerId
    (EventType.MEETING_BOOKED, HOST, True, "005HOST"),
    (EventType.MEETING_BOOKED, HOST, False, "005LEADOWNER"),
    (EventType.RESEARCH_COMPLETED, None, True, "005LEADOWNER"),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, HOST, True, "005HOST"),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, HOST, False, "005LEADOWNER"),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, None, True, "005LEADOWNER"),
    (EventType.PRE_EXIT_SURVEY_ANSWERED, None, True, "005LEADOWNER"),
    (EventType.PRE_EXIT_SURVEY_ANSWERED, HOST, True, "005LEADOWNER"),  # record owner only, whatever the event says
]


@pytest.mark.parametrize("event_type,host,host_is_user,owner", OWNER_TABLE)
def test_salesforce_owner_and_who_per_event_type(fakes, event_type, host, host_is_user, owner):
    deliverer, sf, _ = fakes
    sf.people["lead@example.org"] = SfPerson("00QLEAD", "005LEADOWNER", "Lead")
    if host_is_user:
        sf.users["host@example.com"] = "005HOST"
    outcome = deliver(deliverer, planned(make_event(event_type, host), Crm.SALESFORCE))
    assert outcome.status == CREATED and outcome.object_id == "00T000000000001"
    [fields] = sf.created
    assert fields["WhoId"] == "00QLEAD"  # the booker / target / respondent
    assert fields["OwnerId"] == owner
    assert fields["Subject"] and fields["ActivityDate"]
    if event_type in (EventType.RESEARCH_COMPLETED, EventType.PRE_EXIT_SURVEY_ANSWERED):
        assert not any(c[0] == "find_users" for c in sf.calls)


@pytest.mark.parametrize("event_type", list(EventType))
def test_salesforce_contact_not_found_creates_nothing(fakes, event_type):
    deliverer, sf, _ = fakes
    sf.users["host@example.com"] = "005HOST"
    outcome = deliver(deliverer, planned(make_event(event_type), Crm.SALESFORCE))
    assert (outcome.status, outcome.reason) == (SKIPPED, "contact_not_found")
    assert sf.created == []


def test_salesforce_match_is_case_insensitive(fakes):
    deliverer, sf, _ = fakes
    sf.people["lead@example.org"] = SfPerson("003C", "005O", "Contact")
    outcome = deliver(deliverer, planned(make_event(EventType.RESEARCH_COMPLETED), Crm.SALESFORCE))
    assert outcome.status == CREATED and sf.created[0]["WhoId"] == "003C"


@pytest.mark.parametrize("owner_found", [True, False])
def test_hubspot_meeting_owner_only_when_found(fakes, owner_found):
    deliverer, _, hs = fakes
    hs.contacts["lead@example.org"] = "c-1"
    if owner_found:
        hs.owners["host@example.com"] = "own-1"
    outcome = deliver(deliverer, planned(make_event(EventType.MEETING_BOOKED), Crm.HUBSPOT))
    assert outcome.status == CREATED
    [(kind, props, contact)] = hs.created
    assert (kind, contact) == ("MEETING", "c-1")
    assert props.get("hubspot_owner_id") == ("own-1" if owner_found else None)
    assert props["hs_meeting_title"] == "Demo"


@pytest.mark.parametrize("event_type", list(EventType))
def test_hubspot_contact_not_found_creates_nothing(fakes, event_type):
    deliverer, _, hs = fakes
    hs.owners["host@example.com"] = "own-1"
    outcome = deliver(deliverer, planned(make_event(event_type), Crm.HUBSPOT))
    assert (outcome.status, outcome.reason) == (SKIPPED, "contact_not_found")
    assert hs.created == []


@pytest.mark.parametrize(
    "event_type", [EventType.RESEARCH_COMPLETED, EventType.PRE_MEETING_SURVEY_ANSWERED, EventType.PRE_EXIT_SURVEY_ANSWERED]
)
def test_hubspot_note_associated_with_contact(fakes, event_type):
    deliverer, _, hs = fakes
    hs.contacts["lead@example.org"] = "c-9"
    outcome = deliver(deliverer, planned(make_event(event_type), Crm.HUBSPOT))
    assert outcome.status == CREATED
    [(kind, props, contact)] = hs.created
    assert (kind, contact) == ("NOTE", "c-9") and "hs_note_body" in props


def test_a_company_cooling_down_after_a_slow_crm_is_deferred_until_the_cool_down_ends(monkeypatch):
    """Deferrals during the cool-down come back when it ends, not at the next short backoff (which
    spent the give-up window bouncing through the retry topic without asking the CRM once)."""
    import threading
    import time as time_module

    release = threading.Event()

    class HungSalesforce(FakeSalesforce):
        def find_people(self, emails):
            release.wait(5)
            return super().find_people(emails)

    sf = HungSalesforce(people={"lead@example.org": WHO}, users={})
    monkeypatch.setattr(deliverer_module, "SalesforceClient", lambda creds, ca, reload=None, throttle=None, **kw: sf)
    deliverer = deliverer_module.Deliverer(
        FakeCredentials(), None, RetryPolicy(base=0.0, cap=0.0, max_elapsed=0.0), Metrics.create(), company_budget_seconds=0.05
    )
    try:
        assert deliver(deliverer, action()).reason == "crm_timeout"
    finally:
        release.set()
    deadline = time_module.monotonic() + 5
    while deliverer.busy(Crm.SALESFORCE, "acme") and time_module.monotonic() < deadline:
        time_module.sleep(0.01)  # the hung call's thread finishes
    cooling = deliver(deliverer, action(action_id="a2"))
    assert cooling.status == "deferred" and cooling.reason == "crm_slow"
    assert cooling.retry_after is not None and 0.0 < cooling.retry_after <= deliverer_module.SLOW_COOLDOWN.base
