"""Crash-reconciliation lookups through the real client libraries against the CRM sandbox.

After a crash the worker knows what it meant to create, not whether the CRM did: it asks for
the Tasks on the people it meant to write to (Salesforce) and for the meetings/notes linked to
the contacts (HubSpot), without relying on an external-id field.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from connectors.errors import PermanentError, TransientError
from connectors.hubspot import HubSpotClient
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
         "Description": "line 1\nline 2"},
        {"Id": later, "WhoId": lead, "Subject": "later", "ActivityDate": "", "Description": ""},
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
