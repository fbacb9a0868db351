"""The real simple-salesforce and hubspot-api-client code paths against the CRM sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from connectors.credentials import HubSpotCredentials, SalesforceCredentials
from connectors.errors import AuthError, PermanentError, TransientError
from connectors.hubspot import HubSpotClient
from connectors.salesforce import Person, SalesforceClient
from connectors.sandbox import CrmSandbox, Fault
from connectors.sandbox import soql

ROOT = Path(__file__).resolve().parents[2]
TRICKY = ["o'neil@example.com", "back\\slash@example.com", "100%off@example.com", "UPPER@Example.COM"]


# --- Salesforce -----------------------------------------------------------------------------


def test_find_users_escapes_tricky_emails_and_matches_case_insensitively(
    sb: CrmSandbox, sf: SalesforceClient
) -> None:
    ids = {email: sb.salesforce.add_user(email.upper()) for email in TRICKY}
    sb.salesforce.add_user("inactive@example.com", active=False)

    found = sf.find_users(TRICKY + ["inactive@example.com", "nobody@example.com"])

    assert found == {email.lower(): ids[email] for email in TRICKY}
    assert sb.calls()["salesforce GET query"] == 1


def test_find_people_prefers_contact_then_most_recent(sb: CrmSandbox, sf: SalesforceClient) -> None:
    owner = sb.salesforce.add_user("owner@example.com")
    other = sb.salesforce.add_user("other@example.com")
    sb.salesforce.add_lead("both@example.com", owner_id=owner, last_modified="2030-01-01T00:00:00Z")
    contact = sb.salesforce.add_contact("Both@Example.com", owner_id=other,
                                        last_modified="2020-01-01T00:00:00Z")
    sb.salesforce.add_contact("two@example.com", owner_id=owner, last_modified="2021-01-01T00:00:00Z")
    newest = sb.salesforce.add_contact("TWO@example.com", owner_id=other,
                                       last_modified="2024-05-01T00:00:00Z")
    lead = sb.salesforce.add_lead("lead'o@example.com", owner_id=owner)
    sb.salesforce.add_lead("converted@example.com", owner_id=owner, is_converted=True)

    found = sf.find_people(["both@example.com", "two@example.com", "LEAD'O@example.com",
                            "converted@example.com"])

    assert found == {
        "both@example.com": Person(contact, other, "Contact"),
        "two@example.com": Person(newest, other, "Contact"),
        "lead'o@example.com": Person(lead, owner, "Lead"),
    }


def test_create_task_and_validation_errors(sb: CrmSandbox, sf: SalesforceClient) -> None:
    owner = sb.salesforce.add_user("owner@example.com")
    who = sb.salesforce.add_contact("c@example.com", owner_id=owner)

    task_id = sf.create_task({"Subject": "面談予約のお知らせ", "OwnerId": owner, "WhoId": who,
                              "ActivityDate": "2024-04-01", "Description": "x" * 32_000})

    assert task_id.startswith("00T") and len(task_id) == 18
    assert sb.salesforce.list_tasks()[0]["WhoId"] == who
    assert sf.api_usage is not None and sf.api_usage[1] == 15_000
    cases = {
        "INVALID_CROSS_REFERENCE_KEY": {"OwnerId": "005000000000000AAA"},
        "MALFORMED_ID": {"WhoId": "not-an-id"},
        "STRING_TOO_LONG": {"Subject": "s" * 256},
        "INVALID_FIELD": {"Bogus__c": "x"},
        "JSON_PARSER_ERROR": {"ActivityDate": "2024/04/01"},
    }
    for code, fields in cases.items():
        with pytest.raises(PermanentError) as info:
            sf.create_task({"Subject": "s", **fields})
        assert info.value.code == code
        assert info.value.status == 400
    assert "too long" in _error(sf, {"Subject": "s" * 256}).message
    assert _error(sf, {"Subject": "s" * 256}).fields == ("Subject",)


def _error(sf: SalesforceClient, fields: dict[str, str]) -> PermanentError:
    with pytest.raises(PermanentError) as info:
        sf.create_task(fields)
    return info.value


def test_collection_reports_per_record_errors(sb: CrmSandbox, sf: SalesforceClient) -> None:
    owner = sb.salesforce.add_user("owner@example.com")
    who = sb.salesforce.add_lead("l@example.com", owner_id=owner)
    good = {"Subject": "ok", "OwnerId": owner, "WhoId": who, "ActivityDate": "2024-04-01"}

    results = sf.create_tasks([good, {**good, "WhoId": "003000000000000AAA"}, good])

    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None
    assert results[1].error.code == "INVALID_CROSS_REFERENCE_KEY"
    assert isinstance(results[1].error, PermanentError)
    assert len(sb.salesforce.list_tasks()) == 2
    assert sb.calls()["salesforce POST composite/sobjects"] == 1


def test_salesforce_rate_limit_is_transient_with_retry_after(sb: CrmSandbox, sf: SalesforceClient) -> None:
    sb.inject(Fault("salesforce", 429, retry_after=2))
    with pytest.raises(TransientError) as info:
        sf.find_users(["a@example.com"])
    assert (info.value.code, info.value.status, info.value.retry_after) == (
        "REQUEST_LIMIT_EXCEEDED", 403, 2.0)
    assert sf.find_users(["a@example.com"]) == {}


def test_salesforce_server_errors_and_dropped_connections_are_transient(
    sb: CrmSandbox, sf: SalesforceClient
) -> None:
    sb.inject(Fault("salesforce", 500, path_contains="/query"))
    sb.inject(Fault("salesforce", 503))
    sb.inject(Fault("salesforce", drop=True))
    codes = []
    for _ in range(3):
        with pytest.raises(TransientError) as info:
            sf.find_users(["a@example.com"])
        codes.append(info.value.code)
    assert codes == ["UNKNOWN_EXCEPTION", "SERVER_UNAVAILABLE", "NETWORK"]


def test_latency_beyond_the_client_timeout_is_transient(sb: CrmSandbox) -> None:
    creds = SalesforceCredentials(instance_url=sb.salesforce_url, session_id=sb.session_id)
    sf = SalesforceClient(creds, sb.ca_file, timeout=0.2)
    assert sb.hubspot_token is not None
    hs = HubSpotClient(HubSpotCredentials(sb.hubspot_token, sb.hubspot_url), timeout=0.2)
    sb.inject(Fault("salesforce", latency=0.5))
    sb.inject(Fault("hubspot", latency=0.5))
    with pytest.raises(TransientError) as sf_info:
        sf.find_users(["a@example.com"])
    with pytest.raises(TransientError) as hs_info:
        hs.find_owner("a@example.com")
    assert sf_info.value.code == hs_info.value.code == "NETWORK"


def test_expired_session_is_auth_error_unless_reread_credentials_help(sb: CrmSandbox) -> None:
    sb.salesforce.add_session("old-session")
    sb.salesforce.add_session("new-session")
    sb.salesforce.expire_session("old-session")
    stale = SalesforceCredentials(instance_url=sb.salesforce_url, session_id="old-session")

    with pytest.raises(AuthError) as info:
        SalesforceClient(stale, sb.ca_file).find_users(["a@example.com"])
    assert info.value.code == "INVALID_SESSION_ID"
    assert "revoked or expired" in info.value.message

    fresh = SalesforceCredentials(instance_url=sb.salesforce_url, session_id="new-session")
    client = SalesforceClient(stale, sb.ca_file, reload=lambda: fresh)
    assert client.find_users(["a@example.com"]) == {}
    assert sb.calls()["salesforce GET query"] == 3


def test_instance_without_scheme_and_untrusted_certificate(sb: CrmSandbox) -> None:
    creds = SalesforceCredentials(instance_url=sb.salesforce_instance, session_id=sb.session_id)
    assert SalesforceClient(creds, sb.ca_file).find_users(["x@example.com"]) == {}
    with pytest.raises(PermanentError) as info:
        SalesforceClient(creds, None).find_users(["x@example.com"])
    assert info.value.code == "TLS_VERIFY_FAILED"


def test_sandbox_rejects_unknown_soql(sb: CrmSandbox, sf: SalesforceClient) -> None:
    with pytest.raises(PermanentError) as info:
        sf._call(lambda api: api.query("SELECT Id FROM User WHERE Email LIKE 'a%'"))
    assert info.value.code == "MALFORMED_QUERY"
    with pytest.raises(PermanentError) as info:
        sf._call(lambda api: api.query("SELECT Id, Phone FROM Contact"))
    assert info.value.code == "INVALID_FIELD"


def test_soql_literals_are_unescaped() -> None:
    query = soql.parse(r"select id from contact where email in ('a\'b@x', 'c\\d@x') "
                       "order by LastModifiedDate desc limit 5")
    assert query.sobject == "Contact"
    assert query.conditions[0].values == ("a'b@x", "c\\d@x")
    assert (query.order_by, query.descending, query.limit) == ("LastModifiedDate", True, 5)
    with pytest.raises(soql.SoqlError) as info:
        soql.parse(r"SELECT Id FROM User WHERE Email = 'a\%b'")
    assert info.value.code == "MALFORMED_QUERY"


# --- HubSpot --------------------------------------------------------------------------------


def test_hubspot_contact_lookups(sb: CrmSandbox, hs: HubSpotClient) -> None:
    first = sb.hubspot.add_contact("first@example.com")
    upper = sb.hubspot.add_contact("Upper@Example.com")
    sb.hubspot.add_contact("xfirst@example.com")

    assert hs.find_contacts(["FIRST@example.com", "upper@example.com", "none@example.com"]) == {
        "first@example.com": first, "upper@example.com": upper}
    assert hs.search_contact("First@Example.com") == first
    assert hs.search_contact("irst@example.com") is None


def test_hubspot_owner_lookup(sb: CrmSandbox, hs: HubSpotClient) -> None:
    owner = sb.hubspot.add_owner("Host@Example.com", first_name="Hana", last_name="Sato")
    assert hs.find_owner("host@example.com") == owner
    assert hs.find_owner("guest@example.com") is None


def test_hubspot_meeting_and_note_with_associations(sb: CrmSandbox, hs: HubSpotClient) -> None:
    contact = sb.hubspot.add_contact("c@example.com")
    owner = sb.hubspot.add_owner("host@example.com")

    meeting = hs.create_meeting({"hs_timestamp": "2024-04-01T01:00:00Z", "hs_meeting_title": "面談",
                                 "hubspot_owner_id": owner, "hs_meeting_end_time": 1711936800000},
                                contact)
    note = hs.create_note({"hs_timestamp": "1711936800000", "hs_note_body": "<p>x</p>"}, contact)
    hs.associate("notes", note, "contacts", contact)

    meetings, notes = sb.hubspot.list_meetings(), sb.hubspot.list_notes()
    assert meetings[0]["id"] == meeting
    assert meetings[0]["properties"]["hs_meeting_end_time"] == "1711936800000"
    assert [(a["to_id"], a["type_id"]) for a in meetings[0]["associations"]] == [(contact, 200)]
    assert [(a["to_id"], a["type_id"]) for a in notes[0]["associations"]] == [
        (contact, 202), (contact, 202)]


def test_hubspot_validation_errors_are_permanent(sb: CrmSandbox, hs: HubSpotClient) -> None:
    contact = sb.hubspot.add_contact("c@example.com")
    with pytest.raises(PermanentError) as info:
        hs.create_note({"hs_note_body": "no timestamp"}, contact)
    assert (info.value.code, info.value.fields) == ("REQUIRED_FIELD", ("hs_timestamp",))
    assert info.value.message.startswith("a required field is missing")
    with pytest.raises(PermanentError) as info:
        hs.create_note({"hs_timestamp": "1", "hs_note_body": "x" * 65_537}, contact)
    assert "too long" in info.value.message
    with pytest.raises(PermanentError) as info:
        hs.create_meeting({"hs_timestamp": "1"}, "999999")
    assert info.value.code == "INVALID_OBJECT_IDS"


def test_hubspot_batch_reports_per_record_errors(sb: CrmSandbox, hs: HubSpotClient) -> None:
    contact = sb.hubspot.add_contact("c@example.com")
    ok = {"hs_timestamp": "2024-04-01T01:00:00Z", "hs_note_body": "ok"}

    results = hs.create_notes([(ok, contact), ({"hs_note_body": "no ts"}, contact), (ok, contact)])

    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None and results[1].error.code == "REQUIRED_FIELD"
    assert len(sb.hubspot.list_notes()) == 2
    assert sb.calls()["hubspot POST /crm/v3/objects/notes/batch/create"] == 1

    meetings = hs.create_meetings([({"hs_timestamp": "1"}, contact), ({"hs_timestamp": "2"}, contact)])
    assert all(r.ok for r in meetings) and len({r.id for r in meetings}) == 2


def test_hubspot_429_and_500_are_transient(sb: CrmSandbox, hs: HubSpotClient) -> None:
    sb.inject(Fault("hubspot", 429, retry_after=1, path_contains="/owners"))
    sb.inject(Fault("hubspot", 500))
    with pytest.raises(TransientError) as info:
        hs.find_owner("a@example.com")
    assert (info.value.code, info.value.retry_after) == ("HTTP_429", 1.0)
    with pytest.raises(TransientError) as info:
        hs.find_owner("a@example.com")
    assert info.value.code == "HTTP_500"
    assert hs.find_owner("a@example.com") is None


def test_hubspot_revoked_token_is_auth_error_unless_reread_helps(sb: CrmSandbox) -> None:
    sb.hubspot.add_token("rotated")
    sb.hubspot.revoke_token("old")
    stale = HubSpotCredentials("old", sb.hubspot_url)
    with pytest.raises(AuthError) as info:
        HubSpotClient(stale).find_owner("a@example.com")
    assert info.value.code == "INVALID_AUTHENTICATION"
    client = HubSpotClient(stale, reload=lambda: HubSpotCredentials("rotated", sb.hubspot_url))
    assert client.find_owner("a@example.com") is None


def test_hubspot_rate_limit_headers_and_error_shape(sb: CrmSandbox) -> None:
    resp = requests.get(f"{sb.hubspot_url}/crm/v3/owners", headers={"Authorization": "Bearer nope"},
                        timeout=5)
    assert resp.status_code == 401
    assert resp.json()["category"] == "INVALID_AUTHENTICATION"
    assert resp.headers["X-HubSpot-RateLimit-Max"] == "190"
    assert int(resp.headers["X-HubSpot-RateLimit-Remaining"]) < 190
    assert resp.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"


# --- control API and CLI --------------------------------------------------------------------


def test_control_http_api(sb: CrmSandbox, sf: SalesforceClient) -> None:
    control = f"{sb.hubspot_url}/__sandbox"
    created = requests.post(f"{control}/seed", json={
        "salesforce": {"users": [{"email": "u@example.com"}],
                       "contacts": [{"email": "c@example.com", "owner_email": "u@example.com"}]},
        "hubspot": {"contacts": [{"email": "c@example.com", "firstname": "Ken"}]},
    }, timeout=5).json()
    user = created["salesforce"]["users"]["u@example.com"]
    assert sf.find_people(["c@example.com"])["c@example.com"].owner_id == user

    assert requests.post(f"{control}/faults", json={"crm": "salesforce", "status": 503},
                         timeout=5).status_code == 200
    with pytest.raises(TransientError):
        sf.find_users(["u@example.com"])
    sf.create_task({"Subject": "s", "OwnerId": user})
    tasks = requests.get(f"{control}/salesforce/tasks", timeout=5).json()
    assert [t["OwnerId"] for t in tasks] == [user]
    assert requests.get(f"{control}/calls", timeout=5).json()["salesforce GET query"] == 2
    assert requests.post(f"{control}/faults", json={"crm": "x"}, timeout=5).status_code == 400
    requests.post(f"{control}/reset", timeout=5)
    assert requests.get(f"{control}/salesforce/tasks", timeout=5).json() == []


def test_cli_runs_seeds_and_persists_state(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"hubspot": {"owners": [{"email": "o@example.com"}]}}))
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors.sandbox", "--state-file", str(state), "--seed", str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert Path(info["ca_file"]).is_file()
        client = HubSpotClient(HubSpotCredentials(info["hubspot_token"], info["hubspot_url"]))
        assert client.find_owner("o@example.com") is not None
        health = requests.get(f"{info['hubspot_url']}/__sandbox/health", timeout=5).json()
        assert health["salesforce_url"] == info["salesforce_url"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    saved = json.loads(state.read_text())
    assert [o["email"] for o in saved["hubspot"]["owners"]] == ["o@example.com"]
