"""Sandbox tenants: isolated orgs/portals picked by the request's credentials, and scoped faults."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.credentials import HubSpotCredentials, SalesforceCredentials
from connectors.errors import AuthError, PermanentError, TransientError
from connectors.hubspot import HubSpotClient
from connectors.salesforce import SalesforceClient
from connectors.sandbox import DEFAULT_HUBSPOT_TOKEN, DEFAULT_SESSION_ID, CrmSandbox, Fault


def sf_client(sb: CrmSandbox, session_id: str | None, timeout: float = 5) -> SalesforceClient:
    creds = SalesforceCredentials(instance_url=sb.salesforce_url, session_id=session_id)
    return SalesforceClient(creds, sb.ca_file, timeout=timeout)


def hs_client(sb: CrmSandbox, token: str | None, timeout: float = 5) -> HubSpotClient:
    assert token is not None
    return HubSpotClient(HubSpotCredentials(token, sb.hubspot_url), timeout=timeout)


def test_add_tenant_returns_connection_info_with_its_own_credentials(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    assert b == {**sb.info(), "tenant": "b", "session_id": b["session_id"],
                 "hubspot_token": b["hubspot_token"]}
    assert b["session_id"] not in (DEFAULT_SESSION_ID, None)
    assert b["hubspot_token"] not in (DEFAULT_HUBSPOT_TOKEN, None)
    assert sb.info()["session_id"] == DEFAULT_SESSION_ID
    c = sb.add_tenant("c", session_id="00Dc!S", hubspot_token="pat-c")
    assert (c["session_id"], c["hubspot_token"]) == ("00Dc!S", "pat-c")
    for name, kwargs in (("b", {}), ("d", {"session_id": "00Dc!S"}),
                         ("e", {"hubspot_token": DEFAULT_HUBSPOT_TOKEN}), ("no/slash", {}), ("", {})):
        with pytest.raises(ValueError):
            sb.add_tenant(name, **kwargs)
    assert sorted(sb.state.tenants) == ["b", "c", "default"]


def test_a_task_created_with_tenant_bs_session_is_invisible_to_tenant_a(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    a_owner = sb.salesforce.add_user("owner@example.com")
    a_contact = sb.salesforce.add_contact("same@example.com", owner_id=a_owner)
    b_owner = sb.tenant("b").salesforce.add_user("owner@example.com")
    b_contact = sb.tenant("b").salesforce.add_contact("same@example.com", owner_id=b_owner)
    a, bb = sf_client(sb, sb.session_id), sf_client(sb, b["session_id"])

    task = bb.create_task({"Subject": "B only", "OwnerId": b_owner, "WhoId": b_contact})

    assert [t["id"] for t in sb.tenant("b").salesforce.list_tasks()] == [task]
    assert sb.salesforce.list_tasks() == []
    assert a.find_tasks_for([b_contact, a_contact], 0) == []
    assert [t["Id"] for t in bb.find_tasks_for([b_contact], 0)] == [task]
    assert a.find_users(["owner@example.com"]) == {"owner@example.com": a_owner}
    assert bb.find_users(["owner@example.com"]) == {"owner@example.com": b_owner}
    assert a.find_people(["same@example.com"])["same@example.com"].id == a_contact
    with pytest.raises(PermanentError) as info:
        a.create_task({"Subject": "x", "OwnerId": a_owner, "WhoId": b_contact})
    assert info.value.code == "INVALID_CROSS_REFERENCE_KEY"
    assert a_contact != b_contact


def test_hubspot_portals_are_isolated(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    a_contact = sb.hubspot.add_contact("same@example.com")
    b_contact = sb.tenant("b").hubspot.add_contact("same@example.com")
    sb.tenant("b").hubspot.add_owner("host@example.com")
    a, bb = hs_client(sb, sb.hubspot_token), hs_client(sb, b["hubspot_token"])

    meeting = bb.create_meeting({"hs_timestamp": "1", "hs_meeting_title": "B"}, b_contact)

    assert [m["id"] for m in sb.tenant("b").hubspot.list_meetings()] == [meeting]
    assert sb.hubspot.list_meetings() == []
    assert a.find_contacts(["same@example.com"]) == {"same@example.com": a_contact}
    assert bb.find_contacts(["same@example.com"]) == {"same@example.com": b_contact}
    assert a.find_owner("host@example.com") is None and bb.find_owner("host@example.com")
    assert a.associated_objects("meetings", [b_contact], [])[b_contact] == []
    assert [m["id"] for m in bb.associated_objects("meetings", [b_contact], [])[b_contact]] == [meeting]
    with pytest.raises(PermanentError) as info:
        a.create_meeting({"hs_timestamp": "1"}, b_contact)
    assert info.value.code == "INVALID_OBJECT_IDS"
    with pytest.raises(PermanentError):
        a.associate("meetings", meeting, "contacts", a_contact)


def test_credentials_are_per_tenant(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    sb.tenant("b").salesforce.expire_session(b["session_id"])
    sb.tenant("b").hubspot.revoke_token(b["hubspot_token"])
    with pytest.raises(AuthError):
        sf_client(sb, b["session_id"]).find_users(["x@example.com"])
    with pytest.raises(AuthError):
        hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    assert sf_client(sb, sb.session_id).find_users(["x@example.com"]) == {}
    assert hs_client(sb, sb.hubspot_token).find_owner("x@example.com") is None
    sb.tenant("b").salesforce.add_session("00Db!ROTATED")
    assert sf_client(sb, "00Db!ROTATED").find_users(["x@example.com"]) == {}
    assert sb.calls("b")["salesforce GET query"] == 2


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        return time.monotonic() - started, call()
    except Exception as exc:  # the outcome is what the test inspects
        return time.monotonic() - started, exc


def test_a_fault_scoped_to_one_tenant_hangs_only_that_tenant(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    sb.inject(Fault("hubspot", latency=60, tenant="b"))
    sb.inject(Fault("salesforce", latency=60, tenant="b"))
    slow_hs, slow_sf = hs_client(sb, b["hubspot_token"], 0.5), sf_client(sb, b["session_id"], 0.5)
    fast_hs, fast_sf = hs_client(sb, sb.hubspot_token), sf_client(sb, sb.session_id)

    with ThreadPoolExecutor(4) as pool:
        hanging = [pool.submit(_timed, lambda: slow_hs.find_owner("x@example.com")),
                   pool.submit(_timed, lambda: slow_sf.find_users(["x@example.com"]))]
        time.sleep(0.1)
        answered = [_timed(lambda: fast_hs.find_owner("x@example.com")),
                    _timed(lambda: fast_sf.find_users(["x@example.com"]))]
        outcomes = [f.result() for f in hanging]

    assert [result for _, result in answered] == [None, {}]
    assert all(seconds < 0.4 for seconds, _ in answered)
    for seconds, error in outcomes:
        assert isinstance(error, TransientError) and error.code == "NETWORK"
        assert 0.4 <= seconds < 5
    assert sb.state.faults == []
    assert hs_client(sb, b["hubspot_token"]).find_owner("x@example.com") is None


def test_scoped_faults_wait_for_their_tenant_and_unscoped_ones_hit_any(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    sb.inject(Fault("salesforce", 503, tenant="b"))
    a = sf_client(sb, sb.session_id)
    assert a.find_users(["x@example.com"]) == {}
    assert len(sb.state.faults) == 1
    with pytest.raises(TransientError):
        sf_client(sb, b["session_id"]).find_users(["x@example.com"])
    sb.inject(Fault("hubspot", 500))
    with pytest.raises(TransientError):
        hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    with pytest.raises(ValueError):
        sb.inject(Fault("hubspot", 500, tenant="nobody"))


def test_calls_are_counted_per_tenant_and_summed(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    hs_client(sb, sb.hubspot_token).find_owner("x@example.com")
    route = "hubspot GET /crm/v3/owners"
    assert (sb.calls("b")[route], sb.calls("default")[route], sb.calls()[route]) == (2, 1, 3)


def test_reset_drops_added_tenants(sb: CrmSandbox) -> None:
    b = sb.add_tenant("b")
    sb.reset()
    assert list(sb.state.tenants) == ["default"]
    with pytest.raises(AuthError):
        hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    assert sb.add_tenant("b")["hubspot_token"] == b["hubspot_token"]


def test_control_http_api_manages_tenants(sb: CrmSandbox) -> None:
    control = f"{sb.hubspot_url}/__sandbox"
    b = requests.post(f"{control}/tenants", json={"name": "b"}, timeout=5).json()
    assert (b["tenant"], b["salesforce_url"]) == ("b", sb.salesforce_url)
    assert requests.post(f"{control}/tenants", json={"name": "b"}, timeout=5).status_code == 400
    assert [t["tenant"] for t in requests.get(f"{control}/tenants", timeout=5).json()] == ["default", "b"]
    created = requests.post(f"{control}/seed", timeout=5, json={
        "tenant": "b", "salesforce": {"users": [{"email": "u@example.com"}]},
        "hubspot": {"contacts": [{"email": "c@example.com"}]}}).json()
    user = created["salesforce"]["users"]["u@example.com"]
    assert sf_client(sb, b["session_id"]).find_users(["u@example.com"]) == {"u@example.com": user}
    assert sf_client(sb, sb.session_id).find_users(["u@example.com"]) == {}

    sf_client(sb, b["session_id"]).create_task({"Subject": "s", "OwnerId": user})
    assert [t["OwnerId"] for t in requests.get(f"{control}/salesforce/tasks?tenant=b", timeout=5).json()] \
        == [user]
    assert requests.get(f"{control}/salesforce/tasks", timeout=5).json() == []
    assert requests.get(f"{control}/calls?tenant=b", timeout=5).json()["salesforce POST sobjects/Task"] == 1
    assert requests.get(f"{control}/calls?tenant=default", timeout=5).json() == {"salesforce GET query": 1}
    assert requests.get(f"{control}/calls", timeout=5).json()["salesforce GET query"] == 2

    assert requests.post(f"{control}/faults?tenant=b", json={"crm": "hubspot", "status": 503},
                         timeout=5).status_code == 200
    assert requests.get(f"{control}/faults", timeout=5).json()[0]["tenant"] == "b"
    assert hs_client(sb, sb.hubspot_token).find_owner("x@example.com") is None
    with pytest.raises(TransientError):
        hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    assert requests.post(f"{control}/faults", json={"crm": "hubspot", "tenant": "zz"},
                         timeout=5).status_code == 400
    assert requests.post(f"{control}/hubspot/revoke-token?tenant=b",
                         json={"token": b["hubspot_token"]}, timeout=5).status_code == 200
    with pytest.raises(AuthError):
        hs_client(sb, b["hubspot_token"]).find_owner("x@example.com")
    assert requests.get(f"{control}/hubspot/meetings?tenant=zz", timeout=5).status_code == 400


def test_tenants_survive_a_restart_with_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with CrmSandbox(state_file=state) as first:
        b = first.add_tenant("b")
        owner = first.tenant("b").salesforce.add_user("o@example.com")
        task = sf_client(first, b["session_id"]).create_task({"Subject": "s", "OwnerId": owner})
    with CrmSandbox(state_file=state) as second:
        assert second.loaded_from_file
        again = second.tenant("b").credentials()
        assert (again["session_id"], again["hubspot_token"]) == (b["session_id"], b["hubspot_token"])
        assert [t["id"] for t in second.tenant("b").salesforce.list_tasks()] == [task]
        assert second.salesforce.list_tasks() == []
        assert sf_client(second, b["session_id"]).find_users(["o@example.com"]) == {"o@example.com": owner}
        assert second.calls("b")["salesforce POST sobjects/Task"] == 1
        fresh = second.tenant("b").salesforce.add_user("n@example.com")
        assert fresh != owner
