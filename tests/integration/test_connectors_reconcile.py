"""Crash-reconciliation lookups through the real client libraries against the CRM sandbox.

After a crash the worker knows what it meant to create, not whether the CRM did: it asks for
the Tasks on the people it meant to write to (Salesforce) and for the meetings/notes linked to
the contacts (HubSpot), without relying on an external-id field.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from connectors import hubspot
from connectors.credentials import SalesforceCredentials
from connectors.errors import PermanentError, TransientError
from connectors.hubspot import NO_ASSOCIATIONS, HubSpotClient
from connectors.salesforce import SalesforceClient, soql_datetime
from connectors.sandbox import CrmSandbox, Fault, hubspot_objects, soql

SINCE = "2026-12-01T09:00:00Z"
SINCE_MS = int(datetime(2026, 12, 1, 9, tzinfo=timezone.utc).timestamp() * 1000)


# --- Salesforce: find_tasks_for --------------------------------------------------------------


def test_soql_datetime_literal_is_utc_whole_seconds() -> None:
    assert soql_datetime(SINCE_MS) == SINCE
    assert soql_datetime(SINCE_MS + 999) == SINCE
    assert soql_datetime(0) == "1970-01-01T00:00:00Z"


def test_find_tasks_for_filters_by_who_and_created_date(sb: CrmSandbox, sf: SalesforceClient) -> None:
    owner = sb.salesforce.add_user("owner@example.com")
    contact = sb.salesforce.add_contact("c@example.com", owner_id=owner)
    lead = sb.salesforce.add_lead("l@example.com", owner_id=owner)
    other = sb.salesforce.add_contact("other@example.com", owner_id=owner)
    sb.salesforce.add_task({"Subject": "before", "WhoId": contact}, created_at="2026-12-01T08:59:59Z")
    at = sb.salesforce.add_task({"Subject": "at", "WhoId": contact, "ActivityDate": "2026-12-02",
                                 "Description": "line 1\nline 2"}, created_at=SINCE)
    later = sb.salesforce.add_task({"Subject": "later", "WhoId": lead},
                                   created_at="2026-12-01T09:30:00.250+00:00")
    sb.salesforce.add_task({"Subject": "someone else", "WhoId": other}, created_at="2026-12-01T10:00:00Z")

    found = sf.find_tasks_for([contact, lead, contact], SINCE_MS + 500)

    assert sorted(found, key=lambda t: t["Subject"]) == [
        {"Id": at, "WhoId": contact, "Subject": "at", "ActivityDate": "2026-12-02",
         "Description": "line 1\nline 2", "CreatedDate": "2026-12-01T09:00:00.000+0000"},
        {"Id": later, "WhoId": lead, "Subject": "later", "ActivityDate": "", "Description": "",
         "CreatedDate": "2026-12-01T09:30:00.250+0000"},
    ]
    assert sb.calls()["salesforce GET query"] == 1


def test_find_tasks_for_sees_tasks_created_through_the_api(sb: CrmSandbox, sf: SalesforceClient) -> None:
    owner = sb.salesforce.add_user("owner@example.com")
    who = sb.salesforce.add_contact("c@example.com", owner_id=owner)
    one = sf.create_task({"Subject": "one", "OwnerId": owner, "WhoId": who})
    [two] = sf.create_tasks([{"Subject": "two", "OwnerId": owner, "WhoId": who}])

    created = sb.salesforce.list_tasks()[0]["created_at"]
    since_ms = int(datetime.fromisoformat(created).timestamp() * 1000)
    assert {t["Id"] for t in sf.find_tasks_for([who], since_ms)} == {one, two.id}
    assert sf.find_tasks_for([who], since_ms + 3_600_000) == []
    assert sf.find_tasks_for([], 0) == []


def test_find_tasks_for_chunks_the_in_list_by_100(sb: CrmSandbox, sf: SalesforceClient) -> None:
    owner = sb.salesforce.add_user("owner@example.com")
    people = [sb.salesforce.add_contact(f"p{i}@example.com", owner_id=owner) for i in range(150)]
    for who in (people[0], people[120]):
        sb.salesforce.add_task({"Subject": "s", "WhoId": who}, created_at=SINCE)

    found = sf.find_tasks_for(people, SINCE_MS)

    assert sorted(t["WhoId"] for t in found) == sorted([people[0], people[120]])
    assert sb.calls()["salesforce GET query"] == 2


def test_find_tasks_for_errors_are_classified(sb: CrmSandbox, sf: SalesforceClient) -> None:
    sb.inject(Fault("salesforce", 503, path_contains="/query"))
    with pytest.raises(TransientError):
        sf.find_tasks_for(["003000000000000AAA"], SINCE_MS)


def test_sandbox_soql_datetimes_are_unquoted_and_typed() -> None:
    query = soql.parse(f"SELECT Id, Description, CreatedDate FROM Task WHERE WhoId IN ('a') "
                       f"AND CreatedDate >= {SINCE}")
    assert [(c.field, c.op) for c in query.conditions] == [("WhoId", "IN"), ("CreatedDate", ">=")]
    row = {"WhoId": "A", "CreatedDate": "2026-12-01T09:00:00.000+0000"}
    assert soql.matches(row, query)
    assert not soql.matches({**row, "CreatedDate": "2026-12-01T08:59:59.999+0000"}, query)
    for op, expected in (("<", False), ("<=", True), (">", False), ("=", True)):
        assert soql.matches(row, soql.parse(f"SELECT Id FROM Task WHERE CreatedDate {op} {SINCE}")) \
            is expected
    for bad in (f"SELECT Id FROM Task WHERE CreatedDate >= '{SINCE}'",
                f"SELECT Id FROM Task WHERE WhoId = {SINCE}",
                "SELECT Id FROM Task WHERE WhoId >= 'a'"):
        with pytest.raises(soql.SoqlError) as info:
            soql.parse(bad)
        assert info.value.code == "INVALID_FIELD"


# --- HubSpot: associated_objects -------------------------------------------------------------


def test_associated_objects_reads_meetings_and_notes_per_contact(sb: CrmSandbox, hs: HubSpotClient) -> None:
    first = sb.hubspot.add_contact("first@example.com")
    second = sb.hubspot.add_contact("second@example.com")
    lonely = sb.hubspot.add_contact("lonely@example.com")
    meeting = hs.create_meeting({"hs_timestamp": "2026-12-01T09:00:00Z", "hs_meeting_title": "面談"}, first)
    batch = hs.create_meetings([({"hs_timestamp": "1", "hs_meeting_title": "a"}, second),
                                ({"hs_timestamp": "2", "hs_meeting_title": "b"}, second)])
    note = hs.create_note({"hs_timestamp": "1", "hs_note_body": "<p>x</p>"}, first)
    hs.associate("meetings", meeting, "contacts", second)

    meetings = hs.associated_objects("meetings", [first, second, lonely, "999999"],
                                     ["hs_meeting_title", "hs_meeting_body"])

    assert list(meetings) == [first, second, lonely, "999999"]
    assert [m["id"] for m in meetings[first]] == [meeting]
    assert meetings[first][0]["properties"]["hs_meeting_title"] == "面談"
    assert meetings[first][0]["properties"]["hs_meeting_body"] is None
    assert meetings[first][0]["properties"]["hs_object_id"] == meeting
    assert sorted(m["id"] for m in meetings[second]) == sorted([str(batch[0].id), str(batch[1].id), meeting])
    assert meetings[lonely] == [] and meetings["999999"] == []
    assert hs.associated_objects("notes", [first, second], ["hs_note_body"]) == {
        first: [{"id": note, "properties": {**_defaults(sb, note), "hs_note_body": "<p>x</p>"}}],
        second: [],
    }
    calls = sb.calls()
    assert calls["hubspot POST /crm/v4/associations/contacts/meetings/batch/read"] == 1
    assert calls["hubspot POST /crm/v3/objects/meetings/batch/read"] == 1


def _defaults(sb: CrmSandbox, note_id: str) -> dict[str, str]:
    created = next(n["created_at"] for n in sb.hubspot.list_notes() if n["id"] == note_id)
    return {"hs_createdate": created, "hs_lastmodifieddate": created, "hs_object_id": note_id}


def test_associated_objects_follows_association_pages(
    sb: CrmSandbox, hs: HubSpotClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hubspot_objects, "ASSOCIATION_PAGE", 2)
    contact = sb.hubspot.add_contact("c@example.com")
    results = hs.create_notes([({"hs_timestamp": str(i), "hs_note_body": str(i)}, contact)
                               for i in range(5)])

    notes = hs.associated_objects("notes", [contact], ["hs_note_body"])[contact]

    assert [n["id"] for n in notes] == [r.id for r in results]
    assert sb.calls()["hubspot POST /crm/v4/associations/contacts/notes/batch/read"] == 3


def test_associated_objects_nothing_to_read(sb: CrmSandbox, hs: HubSpotClient) -> None:
    assert hs.associated_objects("meetings", [], ["hs_meeting_title"]) == {}
    contact = sb.hubspot.add_contact("c@example.com")
    assert hs.associated_objects("meetings", [contact], ["hs_meeting_title"]) == {contact: []}
    assert "hubspot POST /crm/v3/objects/meetings/batch/read" not in sb.calls()
    with pytest.raises(ValueError):
        hs.associated_objects("tasks", [contact], [])


def test_associated_objects_errors_are_classified(sb: CrmSandbox, hs: HubSpotClient) -> None:
    contact = sb.hubspot.add_contact("c@example.com")
    hs.create_meeting({"hs_timestamp": "1"}, contact)
    sb.inject(Fault("hubspot", 429, retry_after=2, path_contains="/crm/v4/associations"))
    with pytest.raises(TransientError) as info:
        hs.associated_objects("meetings", [contact], [])
    assert info.value.retry_after == 2.0
    sb.inject(Fault("hubspot", 403, error_code="MISSING_SCOPES", path_contains="/batch/read"))
    with pytest.raises(PermanentError) as failed:
        hs.associated_objects("meetings", [contact], [])
    assert failed.value.code == "MISSING_SCOPES"
    assert len(hs.associated_objects("meetings", [contact], [])[contact]) == 1


def test_sandbox_v4_batch_read_has_hubspots_shapes(sb: CrmSandbox) -> None:
    contact = sb.hubspot.add_contact("c@example.com")
    lonely = sb.hubspot.add_contact("l@example.com")
    token = {"Authorization": f"Bearer {sb.hubspot_token}"}
    created = requests.post(f"{sb.hubspot_url}/crm/v3/objects/meetings", headers=token, timeout=5, json={
        "properties": {"hs_timestamp": "1"},
        "associations": [{"to": {"id": contact}, "types": [
            {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 200}]}]}).json()

    resp = requests.post(f"{sb.hubspot_url}/crm/v4/associations/contacts/meetings/batch/read",
                         headers=token, json={"inputs": [{"id": contact}, {"id": lonely}]}, timeout=5)

    assert resp.status_code == 207
    body = resp.json()
    assert body["results"] == [{"from": {"id": contact}, "to": [{
        "toObjectId": int(created["id"]),
        "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 199, "label": None}]}]}]
    assert body["numErrors"] == 1
    assert body["errors"][0]["subCategory"] == "crm.associations.NO_ASSOCIATIONS_FOUND"
    assert body["errors"][0]["context"]["fromObjectId"] == [lonely]
    back = requests.post(f"{sb.hubspot_url}/crm/v4/associations/meetings/contacts/batch/read",
                         headers=token, json={"inputs": [{"id": created["id"]}]}, timeout=5).json()
    assert back["results"][0]["to"][0]["associationTypes"][0]["typeId"] == 200
    read = requests.post(f"{sb.hubspot_url}/crm/v3/objects/meetings/batch/read", headers=token,
                         json={"inputs": [{"id": created["id"]}, {"id": "1"}], "properties": []},
                         timeout=5)
    assert read.status_code == 207
    assert [r["id"] for r in read.json()["results"]] == [created["id"]]
    assert read.json()["errors"][0]["context"]["ids"] == ["1"]


# --- HubSpot: "none found" answers, the external-id check without search, unique conflicts -----


def test_a_404_that_only_says_no_associations_means_none_found(sb: CrmSandbox, hs: HubSpotClient) -> None:
    contact = sb.hubspot.add_contact("c@example.com")
    sb.inject(Fault("hubspot", 404, error_code=NO_ASSOCIATIONS, path_contains="/crm/v4/associations"))
    assert hs.associated_objects("meetings", [contact], ["hs_meeting_title"]) == {contact: []}
    sb.inject(Fault("hubspot", 404, path_contains="/crm/v4/associations"))  # a 404 that says something else
    with pytest.raises(PermanentError):
        hs.associated_objects("meetings", [contact], ["hs_meeting_title"])


def test_a_207_whose_errors_word_no_associations_differently_means_none_found() -> None:
    for category, sub, message in (
        ("OBJECT_NOT_FOUND", NO_ASSOCIATIONS, "whatever"),
        ("VALIDATION_ERROR", None, "No meeting is associated with contact 123."),
        ("OBJECT_NOT_FOUND", None, "No associations found for 123"),
    ):
        assert hubspot._benign(NO_ASSOCIATIONS, category, sub, message)
    assert not hubspot._benign(NO_ASSOCIATIONS, "OBJECT_NOT_FOUND", None, "Resource not found")
    assert not hubspot._benign(NO_ASSOCIATIONS, "RATE_LIMITS", None, "You have reached your limit")


def _unique_property(sb: CrmSandbox, name: str = "crm_sync_action_id") -> str:
    sb.hubspot.custom_properties.add(name)
    sb.hubspot.unique_properties.setdefault("meetings", set()).add(name)
    return name


def test_the_external_id_check_sees_a_meeting_the_lagging_search_does_not(sb: CrmSandbox, hs: HubSpotClient) -> None:
    prop = _unique_property(sb)
    sb.hubspot.search_lag_seconds = 30.0
    contact = sb.hubspot.add_contact("c@example.com")
    [created] = hs.create_meetings([({"hs_timestamp": "1", prop: "act-1"}, contact)])

    assert hs.find_by_property("meetings", prop, ["act-1", "act-2"]) == {"act-1": created.id}
    assert "hubspot POST /crm/v3/objects/meetings/search" not in sb.calls()  # read by the unique property


def test_the_external_id_check_falls_back_to_search_for_a_property_without_unique_values(sb: CrmSandbox, hs: HubSpotClient) -> None:
    sb.hubspot.custom_properties.add("plain_id")
    contact = sb.hubspot.add_contact("c@example.com")
    [created] = hs.create_meetings([({"hs_timestamp": "1", "plain_id": "act-1"}, contact)])
    assert hs.find_by_property("meetings", "plain_id", ["act-1"]) == {"act-1": created.id}


def test_a_unique_value_conflict_resolves_to_the_existing_object(sb: CrmSandbox, hs: HubSpotClient) -> None:
    prop = _unique_property(sb)
    contact = sb.hubspot.add_contact("c@example.com")
    [first] = hs.create_meetings([({"hs_timestamp": "1", prop: "act-1"}, contact)])

    again, fresh = hs.create_meetings([({"hs_timestamp": "1", prop: "act-1"}, contact),
                                       ({"hs_timestamp": "1", prop: "act-2"}, contact)])

    assert (again.id, again.existing, again.ok) == (first.id, True, True)
    assert fresh.ok and not fresh.existing and fresh.id != first.id
    assert len(sb.hubspot.list_meetings()) == 2
    single = hs._create_single("meetings", {"properties": {"hs_timestamp": "1", prop: "act-2"}, "associations": []})
    assert (single.id, single.existing) == (fresh.id, True)


def test_sandbox_search_lag_and_clock_skew(sb: CrmSandbox, hs: HubSpotClient) -> None:
    from connectors.sandbox import records

    contact = sb.hubspot.add_contact("c@example.com")
    sb.hubspot.search_lag_seconds = 30.0
    prop = _unique_property(sb)
    hs.create_meetings([({"hs_timestamp": "1", prop: "act-1"}, contact)])
    assert hs._search_by_property("meetings", prop, ["act-1"]) == {}
    sb.hubspot.search_lag_seconds = 0.0
    assert list(hs._search_by_property("meetings", prop, ["act-1"])) == ["act-1"]

    try:
        records.clock_skew_seconds = -90.0
        owner = sb.salesforce.add_user("owner@example.com")
        who = sb.salesforce.add_contact("p@example.com", owner_id=owner)
        sf_client = SalesforceClient(SalesforceCredentials(instance_url=sb.salesforce_url, session_id=sb.session_id), sb.ca_file, timeout=5)
        sf_client.create_task({"Subject": "s", "OwnerId": owner, "WhoId": who})
        [task] = sf_client.find_tasks_for([who], 0)
        behind = datetime.now(timezone.utc).timestamp() - datetime.fromisoformat(task["CreatedDate"].replace("+0000", "+00:00")).timestamp()
        assert 85 < behind < 120
    finally:
        records.clock_skew_seconds = 0.0
