"""CRM sinks in the real world: rate limits, outages, bad records, expired sessions, revoked tokens,
and admins retrying failures — each through the real broker, worker and CRM sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox import Fault
from connectors.sandbox.server import CrmSandbox
from processors.ops.admin import SettingsAdmin
from processors.codec import Codec
from processors.domain.model import Crm, EventType, FieldMapping
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, read_all, wait_for
from tests.integration.test_end_to_end import publisher

pytestmark = pytest.mark.integration

MEETING_TYPE = "intro-30"
START = datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc)


def configure(deployment: Deployment, company: str, meeting_type: str = MEETING_TYPE) -> SettingsAdmin:
    admin = SettingsAdmin(deployment.config(), actor="test")
    for crm in Crm:
        admin.set_connected(company, crm, True)
        admin.set_toggle(company, meeting_type, crm, EventType.MEETING_BOOKED, True)
    return admin


def booking(company: str, booker: str, host: str = "host@seller.example", meeting_type: str = MEETING_TYPE) -> dict[str, Any]:
    start = int(START.timestamp() * 1000)
    return {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "occurred_at": int(time.time() * 1000),
        "company_id": company,
        "meeting_type_id": meeting_type,
        "meeting_id": "m-1",
        "meeting_type_name": "Intro",
        "host": {"email": host, "name": "Host"},
        "booker": {"email": booker, "name": "Booker"},
        "start_at": start,
        "end_at": start + 1_800_000,
        "timezone": "Asia/Tokyo",
        "form_answers": [],
    }


def seed(sandbox: CrmSandbox, bookers: list[str], host: str = "host@seller.example") -> None:
    owner = sandbox.salesforce.add_user(host)
    sandbox.hubspot.add_owner(host)
    for email in bookers:
        sandbox.salesforce.add_contact(email, owner_id=owner)
        sandbox.hubspot.add_contact(email)


def publish(deployment: Deployment, records: list[dict[str, Any]]) -> None:
    pub = publisher(deployment)
    for record in records:
        pub.publish_meeting_booked(record)
    pub.flush()


def dead_letters(deployment: Deployment) -> list[dict[str, Any]]:
    """The dead letters (the topic also holds what admins did about them: statuses)."""
    return [r for r in read_all(deployment.bootstrap, deployment.topics.dead_letter, Codec()) if "stage" in r]


def test_a_429_storm_delays_but_loses_nothing(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # The storm outlasts the company's 5 s budget, so its HubSpot actions sit out a slow-CRM
    # cool-down (14-20 s): the harness's 20 s give-up would turn a slow CRM into dead letters.
    deployment.extra_env["CRM_SYNC_SINK_RETRY_SECONDS"] = "300"
    bookers = [f"storm{i}@buyer.example" for i in range(6)]
    seed(sandbox, bookers)
    configure(deployment, "acme")
    sandbox.inject(Fault(crm="hubspot", status=429, count=4, retry_after=1))
    sandbox.inject(Fault(crm="salesforce", status=403, error_code="REQUEST_LIMIT_EXCEEDED", count=3))
    start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", b) for b in bookers])

    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 6 and len(sandbox.hubspot.list_meetings()) == 6, 150,
             what="all 12 objects despite the 429 storm")
    assert dead_letters(deployment) == []
    calls = sandbox.calls()
    assert any(key.startswith("hubspot") for key in calls)


def test_a_bad_record_in_a_batch_is_dead_lettered_alone(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    bookers = [f"batch{i}@buyer.example" for i in range(5)]
    seed(sandbox, bookers)
    admin = configure(deployment, "acme")
    configure(deployment, "acme", "broken")
    admin.set_field_mappings(
        "acme", "broken", [FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "NoSuchField__c", "booker.name")]
    )
    publish(
        deployment,
        [booking("acme", b) for b in bookers[:4]] + [booking("acme", bookers[4], meeting_type="broken")],
    )
    start_worker(deployment, workers, tmp_path)  # started after publishing: all five arrive in one batch

    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 4, 40, what="the four good Tasks")
    [letter] = wait_for(lambda: dead_letters(deployment), 30, what="the bad record's dead letter")
    assert letter["stage"] == "deliver"
    assert letter["error_code"] == "INVALID_FIELD"
    assert "field" in letter["message"]
    assert letter["action"]["meeting_type_id"] == "broken"
    assert letter["crm"] == "salesforce"
    assert len(sandbox.hubspot.list_meetings()) == 5
    assert sandbox.calls().get("salesforce POST composite/sobjects", 0) <= 2


def test_an_expired_session_is_replaced_from_the_rotated_secret(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    seed(sandbox, ["rotated@buyer.example"])
    configure(deployment, "acme")
    start_worker(deployment, workers, tmp_path)
    old = sandbox.session_id
    assert old is not None
    sandbox.salesforce.add_session("00Dsandbox!ROTATED")
    sandbox.salesforce.expire_session(old)
    secret = deployment.secrets_dir / "_default" / "salesforce.json"
    secret.write_text(json.dumps({**json.loads(secret.read_text()), "session_id": "00Dsandbox!ROTATED"}))

    publish(deployment, [booking("acme", "rotated@buyer.example")])
    wait_for(sandbox.salesforce.list_tasks, 30, what="the Task after re-authentication")
    assert dead_letters(deployment) == []
    assert "00Dsandbox!ROTATED" not in workers[0].log_text()


def test_a_revoked_tenant_does_not_delay_the_others_and_its_failures_can_be_retried(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    seed(sandbox, ["good@buyer.example", "revoked@buyer.example"])
    revoked_dir = deployment.secrets_dir / "revoked-co"
    revoked_dir.mkdir()
    (revoked_dir / "hubspot.json").write_text(json.dumps({"access_token": "pat-revoked", "base_url": sandbox.hubspot_url}))
    (revoked_dir / "salesforce.json").write_text((deployment.secrets_dir / "_default" / "salesforce.json").read_text())
    configure(deployment, "good-co")
    configure(deployment, "revoked-co")
    start_worker(deployment, workers, tmp_path)

    published = time.time()
    publish(deployment, [booking("revoked-co", "revoked@buyer.example"), booking("good-co", "good@buyer.example")])
    wait_for(lambda: len(sandbox.hubspot.list_meetings()) == 1, 30, what="the good tenant's meeting")
    assert time.time() - published < deployment.delay_seconds + 10
    [letter] = wait_for(lambda: dead_letters(deployment), 30, what="the revoked tenant's failure")
    assert letter["company_id"] == "revoked-co" and letter["crm"] == "hubspot"
    assert letter["error_class"] == "AuthError"

    sandbox.hubspot.add_token("pat-revoked")
    cli = [sys.executable, "-m", "processors.ops.cli", "dlq"]
    env = deployment.env()
    listed = subprocess.run([*cli, "list", "--company", "revoked-co"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and letter["dead_letter_id"] in listed.stdout
    retried = subprocess.run([*cli, "retry", letter["dead_letter_id"]], cwd=ROOT, env=env, capture_output=True, text=True)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: len(sandbox.hubspot.list_meetings()) == 2, 30, what="the retried meeting")
    # The retry sits on the partition of the action's first copy, where the sink's ledger entry for it goes
    # (the due topic is keyed by company).
    wanted = letter["action"]["action_id"].encode()
    copies = [m for m in read_all(deployment.bootstrap, deployment.topics.due_hubspot) if dict(m.headers() or []).get("action_id") == wanted]
    assert len(copies) == 2 and copies[0].partition() == copies[1].partition()
    assert {m.key() for m in copies} == {b"revoked-co"}

    again = subprocess.run([*cli, "retry", "--company", "revoked-co"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    time.sleep(3.0)
    assert len(sandbox.hubspot.list_meetings()) == 2


def test_an_outage_longer_than_the_inline_budget_is_delivered_after_recovery(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.extra_env["CRM_SYNC_SINK_INLINE_RETRY_SECONDS"] = "1"
    seed(sandbox, ["outage@buyer.example"])
    configure(deployment, "acme")
    sandbox.inject(Fault(crm="hubspot", status=503, count=8))
    worker = start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", "outage@buyer.example")])

    wait_for(lambda: "crm_sync_actions_deferred_total{crm=\"hubspot\"" in worker.metrics()
             and any(line.startswith('crm_sync_actions_deferred_total{crm="hubspot"') and not line.endswith(" 0.0")
                     for line in worker.metrics().splitlines()), 30, what="a deferral to the retry topic")
    wait_for(lambda: len(sandbox.hubspot.list_meetings()) == 1, 60, what="the meeting after the outage")
    assert len(sandbox.salesforce.list_tasks()) == 1
    assert dead_letters(deployment) == []
