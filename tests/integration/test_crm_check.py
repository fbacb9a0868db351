"""`crm-sync crm check` / `crm prepare` against the sandbox, and the deliverer with the new flows:
a wrong key is a readable failure that opens the auth circuit while other companies deliver, a
tenant near its daily quota is deferred (not failed), and the field `prepare` created makes
creates idempotent. No Kafka: the CLI runs as a subprocess, the deliverer in process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.credentials import CredentialStore
from connectors.errors import PermanentError
from connectors.hubspot import HubSpotClient
from connectors.retry import RetryPolicy
from connectors.salesforce import SalesforceClient
from connectors.sandbox.server import CrmSandbox
from processors.domain.deliver import CREATED, DEAD_LETTER, DEFER, DEFERRED, DUPLICATE, FAILED, RetryRules, route
from processors.domain.model import Action, Crm, EventType, ObjectType, Origin
from processors.metrics import Metrics
from processors.stages.deliverer import Deliverer
from tests.integration.harness import ROOT, SANDBOX_HOSTS
from tests.integration.test_crm_auth import USER, jwt_company, keys  # noqa: F401  (fixture)

T = int(datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc).timestamp() * 1000)


def write_secrets(secrets: Path, company: str, crm: str, data: dict[str, Any]) -> Path:
    (secrets / company).mkdir(parents=True, exist_ok=True)
    path = secrets / company / f"{crm}.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    os.chmod(path, 0o600)
    return path


def jwt_secrets(sb: CrmSandbox, tmp_path: Path, keys: dict, company: str, key: str = "good") -> Any:  # noqa: F811
    creds, tenant = jwt_company(sb, tmp_path, keys, key=key, name=company, key_dir=tmp_path / "secrets" / company)
    write_secrets(tmp_path / "secrets", company, "salesforce", {
        "consumer_key": creds.consumer_key, "username": creds.username,
        "private_key_file": creds.private_key_file, "login_url": creds.login_url})
    return tenant


def hubspot_secrets(sb: CrmSandbox, tmp_path: Path, company: str) -> Any:
    tenant = sb.tenant(company)
    tenant.hubspot.add_oauth_app(f"client-{company}", "secret", f"rt-{company}", rotate=True)
    write_secrets(tmp_path / "secrets", company, "hubspot", {
        "client_id": f"client-{company}", "client_secret": "secret", "refresh_token": f"rt-{company}",
        "base_url": sb.hubspot_url})
    return tenant


def cli(sb: CrmSandbox, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRM_SYNC_SECRETS_DIR": str(tmp_path / "secrets"), "CRM_SYNC_CA_BUNDLE": sb.ca_file,
           "CRM_SYNC_CRM_ALLOWED_HOSTS": SANDBOX_HOSTS, "CRM_SYNC_TOKEN_DIR": str(tmp_path / "tokens")}
    return subprocess.run([sys.executable, "-m", "processors.ops.cli", "crm", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def lines(out: str) -> dict[tuple[str, str], str]:
    """``{(crm, check): "ok"|"FAILED"}`` from the check's output."""
    found = {}
    for line in out.splitlines():
        crm, rest = line.split(None, 1)
        for name in ("login", "create Tasks", "create meetings", "lookups", "external id", "api quota"):
            if rest.startswith(name):
                found[(crm, name)] = rest[len(name):].split()[0]
    return found


def test_check_passes_then_prepare_creates_the_fields_records_them_and_check_sees_them(
    sb: CrmSandbox, tmp_path: Path, keys: dict  # noqa: F811
) -> None:
    jwt_secrets(sb, tmp_path, keys, "acme")
    hubspot_secrets(sb, tmp_path, "acme")
    checked = cli(sb, tmp_path, "check", "--company", "acme")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    marks = lines(checked.stdout)
    assert len(marks) == 10 and set(marks.values()) == {"ok"}, checked.stdout
    assert "none configured" in checked.stdout and "daily calls left" in checked.stdout

    prepared = cli(sb, tmp_path, "prepare", "--company", "acme")
    assert prepared.returncode == 0, prepared.stderr
    assert "created Activity.CrmSyncActionId__c" in prepared.stdout
    assert "created meetings.crm_sync_action_id, created notes.crm_sync_action_id" in prepared.stdout
    sf_file = json.loads((tmp_path / "secrets/acme/salesforce.json").read_text())
    hs_file = json.loads((tmp_path / "secrets/acme/hubspot.json").read_text())
    assert sf_file["action_id_field"] == "CrmSyncActionId__c" and sf_file["consumer_key"] == "CK-acme"
    assert hs_file["action_id_property"] == "crm_sync_action_id" and hs_file["refresh_token"] == "rt-acme"
    assert store(tmp_path).hubspot("acme").refresh_token != "rt-acme"  # rotated: kept in the token directory
    assert sb.tenant("acme").salesforce.task_unique_fields == {"CrmSyncActionId__c"}
    assert sb.tenant("acme").hubspot.unique_properties == {"meetings": {"crm_sync_action_id"},
                                                           "notes": {"crm_sync_action_id"}}

    again = cli(sb, tmp_path, "check", "--company", "acme")
    assert again.returncode == 0, again.stdout
    assert "CrmSyncActionId__c exists and is unique" in again.stdout
    assert "crm_sync_action_id exists on meetings and notes and is unique" in again.stdout
    rerun = cli(sb, tmp_path, "prepare", "--company", "acme", "--crm", "salesforce")
    assert rerun.returncode == 0 and "already exists" in rerun.stdout


def test_check_fails_with_reasons_and_a_non_zero_exit(sb: CrmSandbox, tmp_path: Path, keys: dict) -> None:  # noqa: F811
    jwt_secrets(sb, tmp_path, keys, "badkey", key="other")
    checked = cli(sb, tmp_path, "check", "--company", "badkey")
    assert checked.returncode == 2
    marks = lines(checked.stdout)
    assert marks[("salesforce", "login")] == "FAILED" and "wrong private key" in checked.stdout
    assert marks[("salesforce", "create Tasks")] == "FAILED"
    assert len(checked.stderr.strip().splitlines()) == 1 and "checks failed" in checked.stderr

    tenant = jwt_secrets(sb, tmp_path, keys, "limited")
    tenant.salesforce.task_createable = False
    tenant.salesforce.api_limit, tenant.salesforce.api_usage = 100, 96
    write_secrets(tmp_path / "secrets", "limited", "hubspot", {"access_token": "pat-none", "base_url": sb.hubspot_url})
    checked = cli(sb, tmp_path, "check", "--company", "limited")
    assert checked.returncode == 2
    marks = lines(checked.stdout)
    assert marks[("salesforce", "login")] == "ok"
    assert marks[("salesforce", "create Tasks")] == "FAILED" and "may not create Tasks" in checked.stdout
    assert marks[("salesforce", "api quota")] == "FAILED" and "deliveries are deferred" in checked.stdout
    assert marks[("hubspot", "login")] == "FAILED"


def task_action(company: str, action_id: str, email: str) -> Action:
    return Action(
        action_id=action_id, event_id=f"e-{action_id}", event_type=EventType.MEETING_BOOKED, company_id=company,
        meeting_type_id="mt-1", crm=Crm.SALESFORCE, object_type=ObjectType.TASK, origin=Origin.MEETING_TYPE,
        occurred_at=T, due_at=T + 600_000, planned_at=T, contact_email=email, owner_email="",
        properties={"Subject": f"s-{action_id}", "Description": "d", "ActivityDate": "2026-12-01"},
    )


def store(tmp_path: Path) -> CredentialStore:
    """The company files under ``tmp_path``, as the worker and the CLI read them for the sandbox."""
    return CredentialStore(tmp_path / "secrets", allowed_hosts=SANDBOX_HOSTS, token_dir=tmp_path / "tokens")


def deliverer(tmp_path: Path, sb: CrmSandbox, metrics: Metrics | None = None, **kw: Any) -> Deliverer:
    return Deliverer(store(tmp_path), sb.ca_file, RetryPolicy(base=0.0, cap=0.0, max_elapsed=0.0),
                     metrics or Metrics.create(), **kw)


def test_prepare_then_delivery_writes_the_field_and_a_second_create_is_refused(
    sb: CrmSandbox, tmp_path: Path, keys: dict  # noqa: F811
) -> None:
    tenant = jwt_secrets(sb, tmp_path, keys, "acme")
    tenant.salesforce.add_contact("booker@buyer.example")
    assert cli(sb, tmp_path, "prepare", "--company", "acme", "--crm", "salesforce").returncode == 0
    d = deliverer(tmp_path, sb)
    a = task_action("acme", "acme:a-1", "booker@buyer.example")

    async def run() -> list[Any]:
        first = await d.deliver_batch(Crm.SALESFORCE, "acme", [a])
        second = await d.deliver_batch(Crm.SALESFORCE, "acme", [a])
        return [first[0], second[0]]

    first, second = asyncio.run(run())
    assert first.status == CREATED and second.status == DUPLICATE and second.object_id == first.object_id
    [task] = tenant.salesforce.list_tasks()
    assert task["CrmSyncActionId__c"] == "acme:a-1"
    client = SalesforceClient(store(tmp_path).salesforce("acme"), sb.ca_file)
    with pytest.raises(PermanentError) as caught:
        client.create_task({**a.properties, "WhoId": task["WhoId"], "CrmSyncActionId__c": "acme:a-1"})
    assert caught.value.code == "DUPLICATE_VALUE"


def test_a_wrong_key_fails_readably_and_opens_the_circuit_while_another_company_delivers(
    sb: CrmSandbox, tmp_path: Path, keys: dict  # noqa: F811
) -> None:
    jwt_secrets(sb, tmp_path, keys, "badkey", key="other")
    good = jwt_secrets(sb, tmp_path, keys, "goodco")
    good.salesforce.add_contact("booker@buyer.example")
    d = deliverer(tmp_path, sb)

    async def run() -> tuple[list[Any], list[Any]]:
        bad, ok = [], []
        for i in range(4):
            [outcome] = await d.deliver_batch(Crm.SALESFORCE, "badkey", [task_action("badkey", f"b-{i}", "x@buyer.example")])
            bad.append(outcome)
            [delivered] = await d.deliver_batch(Crm.SALESFORCE, "goodco", [task_action("goodco", f"g-{i}", "booker@buyer.example")])
            ok.append(delivered)
        return bad, ok

    bad, ok = asyncio.run(run())
    assert [o.status for o in bad] == [FAILED, FAILED, FAILED, DEFERRED]
    assert bad[0].error.as_dict()["error_class"] == "AuthError" and "wrong private key" in bad[0].error.message
    assert bad[3].reason == "auth_circuit_open" and bad[3].retry_after > 0
    assert [o.status for o in ok] == [CREATED] * 4 and len(good.salesforce.list_tasks()) == 4


def test_a_tenant_near_its_daily_quota_is_deferred_not_failed_and_the_ratio_is_exported(
    sb: CrmSandbox, tmp_path: Path, keys: dict  # noqa: F811
) -> None:
    tenant = jwt_secrets(sb, tmp_path, keys, "busy")
    tenant.salesforce.add_contact("booker@buyer.example")
    tenant.salesforce.api_limit, tenant.salesforce.api_usage = 100, 94
    metrics = Metrics.create()
    d = deliverer(tmp_path, sb, metrics, quota_defer_ratio=0.95, quota_defer_seconds=600)

    async def run() -> list[Any]:
        out = []
        for i in range(2):
            [outcome] = await d.deliver_batch(Crm.SALESFORCE, "busy", [task_action("busy", f"q-{i}", "booker@buyer.example")])
            out.append(outcome)
        return out

    first, second = asyncio.run(run())
    assert first.status == CREATED
    assert second.status == DEFERRED and second.reason == "quota_near_limit" and 0 < second.retry_after <= 600
    ratio = metrics.registry.get_sample_value("crm_sync_crm_api_usage_ratio", {"crm": "salesforce"})
    assert ratio is not None and 0.95 <= ratio <= 1.0
    assert metrics.registry.get_sample_value("crm_sync_crm_tenants_near_quota", {"crm": "salesforce"}) == 1
    rules = RetryRules(give_up_ms=86_400_000, backoff=lambda n: 1.0, retry_after_cap=900.0)
    action = task_action("busy", "q-1", "booker@buyer.example")
    decision = route(action, second, T + 600_000, rules)
    assert decision.kind == DEFER and decision.retry is not None and decision.retry.due_at >= T + 600_000 + 500_000
    assert len(tenant.salesforce.list_tasks()) == 1


def meeting_action(company: str, action_id: str, email: str) -> Action:
    return Action(
        action_id=action_id, event_id=f"e-{action_id}", event_type=EventType.MEETING_BOOKED, company_id=company,
        meeting_type_id="mt-1", crm=Crm.HUBSPOT, object_type=ObjectType.MEETING, origin=Origin.MEETING_TYPE,
        occurred_at=T, due_at=T + 600_000, planned_at=T, contact_email=email, owner_email="",
        properties={"hs_timestamp": "2026-12-01T01:00:00Z", "hs_meeting_title": "Intro", "hs_meeting_body": "b"},
    )


def test_prepare_then_hubspot_delivery_writes_the_property_and_a_second_create_conflicts(
    sb: CrmSandbox, tmp_path: Path
) -> None:
    sb.add_tenant("hsco")
    tenant = hubspot_secrets(sb, tmp_path, "hsco")
    contact = tenant.hubspot.add_contact("booker@buyer.example")
    prepared = cli(sb, tmp_path, "prepare", "--company", "hsco", "--crm", "hubspot")
    assert prepared.returncode == 0, prepared.stderr
    d = deliverer(tmp_path, sb)
    a = meeting_action("hsco", "hsco:m-1", "booker@buyer.example")

    async def run() -> list[Any]:
        first = await d.deliver_batch(Crm.HUBSPOT, "hsco", [a])
        second = await d.deliver_batch(Crm.HUBSPOT, "hsco", [a])
        return [first[0], second[0]]

    first, second = asyncio.run(run())
    assert first.status == CREATED and second.status == DUPLICATE and second.object_id == first.object_id
    [meeting] = tenant.hubspot.list_meetings()
    assert meeting["properties"]["crm_sync_action_id"] == "hsco:m-1"
    client = HubSpotClient(store(tmp_path).hubspot("hsco"), tokens=d.tokens, token_key=("hubspot", "hsco"))
    [result] = client.create_meetings([({**a.properties, "crm_sync_action_id": "hsco:m-1"}, contact)])
    # The CRM refuses the duplicate; the client resolves the conflict to the object it named.
    assert result.ok and result.existing and result.id == first.object_id
    assert len(tenant.hubspot.list_meetings()) == 1


# ---- endpoints and key files that would hand a company's secrets to someone else -----------------

REFUSED = {
    # No traffic may reach these: validation refuses them before any client exists.
    "hs-plain": ("hubspot", {"client_id": "c", "client_secret": "cs", "refresh_token": "rt", "token_url": "http://10.0.0.1/"}),
    "hs-host": ("hubspot", {"access_token": "pat-na1-x", "base_url": "https://10.0.0.1"}),
    "sf-instance": ("salesforce", {"instance_url": "https://10.0.0.1", "session_id": "00Dx!y"}),
    "sf-login": ("salesforce", {"consumer_key": "CK", "username": "u", "private_key_file": "k.pem",
                                "login_url": "https://login.salesforce.com.evil.example"}),
}


def test_check_says_why_an_endpoint_or_a_key_file_is_refused(sb: CrmSandbox, tmp_path: Path) -> None:
    for company, (crm, data) in REFUSED.items():
        write_secrets(tmp_path / "secrets", company, crm, data)
        (tmp_path / "secrets" / company / "k.pem").write_text("unused")
        checked = cli(sb, tmp_path, "check", "--company", company, "--crm", crm)
        assert checked.returncode == 2, checked.stdout + checked.stderr
        [line] = checked.stdout.splitlines()
        assert line.split()[:3] == [crm, "login", "FAILED"] and "(ENDPOINT_REFUSED)" in line, line
        assert "is refused" in line and ("https" in line or f"not a {crm} host" in line), line
    write_secrets(tmp_path / "secrets", "other", "salesforce", {"consumer_key": "CK", "username": "u", "private_key_file": "k.pem"})
    (tmp_path / "secrets" / "other" / "k.pem").write_text("another tenant's key")
    write_secrets(tmp_path / "secrets", "thief", "salesforce", {
        "consumer_key": "CK", "username": "u", "private_key_file": str(tmp_path / "secrets" / "other" / "k.pem")})
    checked = cli(sb, tmp_path, "check", "--company", "thief", "--crm", "salesforce")
    assert checked.returncode == 2 and "private_key_file must name a file inside this company's" in checked.stdout
    assert "another tenant" not in checked.stdout + checked.stderr


def test_a_refused_endpoint_is_a_permanent_failure_at_delivery_not_a_retry_or_an_open_circuit(
    sb: CrmSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    real_connect = socket.socket.connect
    attempts: list[Any] = []

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and str(address[0]).startswith("10.0.0."):
            attempts.append(address)
            raise OSError("refused by the test: no traffic to the planted endpoint")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for company, (crm, data) in REFUSED.items():
        write_secrets(tmp_path / "secrets", company, crm, data)
    d = deliverer(tmp_path, sb)

    async def run() -> list[Any]:
        out = []
        for company, (crm, _) in REFUSED.items():
            action = (task_action(company, f"{company}:1", "booker@buyer.example") if crm == "salesforce"
                      else meeting_action(company, f"{company}:1", "booker@buyer.example"))
            out.extend(await d.deliver_batch(action.crm, company, [action]))
            out.extend(await d.deliver_batch(action.crm, company, [action]))  # again: still failed, no circuit
        return out

    outcomes = asyncio.run(run())
    assert [o.status for o in outcomes] == [FAILED] * 2 * len(REFUSED)
    action = task_action("hs-plain", "x", "booker@buyer.example")
    for outcome in outcomes:
        assert outcome.error.as_dict()["error_class"] == "EndpointRefused" and outcome.reason == "ENDPOINT_REFUSED"
        assert "is refused" in outcome.error.message
        assert route(action, outcome, T, RetryRules(86_400_000, lambda n: 1.0, 900.0)).kind == DEAD_LETTER
    assert d.circuit.open_count() == 0  # not an auth failure: no pause, no re-login loop
    assert attempts == []  # nothing was sent
