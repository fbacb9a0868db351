"""The delay store against a real broker, real worker processes and the CRM sandbox (issue 4).

Each action must reach the CRM once, at its due time, across restarts, kill -9, a paused company and
a rebalance. Actions are told apart by a unique meeting URL, which lands in the Salesforce Task's
Description and in the HubSpot meeting's `hs_meeting_external_url`.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.sandbox.server import CrmSandbox
from connectors.sandbox.state import Fault
from processors.ops.admin import SettingsAdmin
from processors.domain.model import Crm, EventType
from processors.ops.publisher import EventPublisher
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, read_all, wait_for

pytestmark = pytest.mark.integration

COMPANY = "delay-co"
MEETING_TYPE = "intro-30"
BOOKER = "bo@buyer.example"
HOST = "hana@seller.example"
URL = "https://meet.example.com/"


def configure(deployment: Deployment, companies: tuple[str, ...] = (COMPANY,)) -> SettingsAdmin:
    admin = SettingsAdmin(deployment.config(), actor="test")
    for company in companies:
        for crm in Crm:
            admin.set_connected(company, crm, True)
            admin.set_toggle(company, MEETING_TYPE, crm, EventType.MEETING_BOOKED, True)
    return admin


def seed(sandbox: CrmSandbox) -> None:
    owner = sandbox.salesforce.add_user("record.owner@seller.example")
    sandbox.salesforce.add_user(HOST)
    sandbox.salesforce.add_contact(BOOKER, owner_id=owner, last_modified="2025-06-01T00:00:00Z")
    sandbox.hubspot.add_contact(BOOKER, firstname="Bo")
    sandbox.hubspot.add_owner(HOST, first_name="Hana")


def publish(
    deployment: Deployment, count: int, *, occurred_at: int | None = None, companies: tuple[str, ...] = (COMPANY,)
) -> list[str]:
    """Publishes `count` bookings per company; returns their meeting ids (one SF Task + one HS meeting each)."""
    t = deployment.topics
    pub = EventPublisher(
        {"bootstrap.servers": deployment.bootstrap},
        t,
    )
    ids = [(company, f"m-{uuid.uuid4().hex[:12]}") for company in companies for _ in range(count)]
    start = int(time.time() * 1000) + 86_400_000
    for company, meeting_id in ids:
        pub.publish_meeting_booked(
            {
                "event_id": f"evt-{uuid.uuid4().hex}",
                "occurred_at": occurred_at if occurred_at is not None else int(time.time() * 1000),
                "company_id": company,
                "meeting_type_id": MEETING_TYPE,
                "meeting_id": meeting_id,
                "meeting_type_name": "Intro call (30 min)",
                "host": {"email": HOST, "name": "Hana Host"},
                "booker": {"email": BOOKER, "name": "Bo Booker", "company_name": "Buyer Inc."},
                "start_at": start,
                "end_at": start + 30 * 60 * 1000,
                "timezone": "Asia/Tokyo",
                "meeting_url": URL + meeting_id,
                "form_answers": [],
            }
        )
    pub.flush()
    return [meeting_id for _, meeting_id in ids]


def delivered(sandbox: CrmSandbox) -> Counter[tuple[str, str]]:
    """(crm, meeting id) → how many objects the sandbox holds for it."""
    out: Counter[tuple[str, str]] = Counter()
    for task in sandbox.salesforce.list_tasks():
        out[("salesforce", str(task.get("Description", "")).split(URL, 1)[-1].split()[0])] += 1
    for meeting in sandbox.hubspot.list_meetings():
        out[("hubspot", meeting["properties"].get("hs_meeting_external_url", "").removeprefix(URL))] += 1
    return out


def expected(ids: list[str]) -> Counter[tuple[str, str]]:
    return Counter({(crm.value, i): 1 for i in ids for crm in Crm})


def wait_all_delivered(sandbox: CrmSandbox, ids: list[str], timeout: float) -> None:
    want = set(expected(ids))
    wait_for(lambda: want <= set(delivered(sandbox)), timeout, 0.2, f"{len(want)} deliveries")


def settle_and_check_once(sandbox: CrmSandbox, ids: list[str], quiet: float = 3.0) -> None:
    """After everything arrived, give a re-release time to show up, then demand exactly once each."""
    time.sleep(quiet)
    got = delivered(sandbox)
    dups = {k: n for k, n in got.items() if n > 1}
    assert not dups, f"duplicates in the sandbox: {dups}"
    assert got == expected(ids)


def check_before_create(deployment: Deployment, sandbox: CrmSandbox) -> None:
    """The ledger alone cannot see a create the CRM finished after a kill -9: the sinks' external-id
    check against the CRM (a Task field, a meeting property) is what makes that exactly-once."""
    deployment.extra_env["CRM_SYNC_SALESFORCE_ACTION_ID_FIELD"] = "CrmSyncActionId__c"
    deployment.extra_env["CRM_SYNC_HUBSPOT_ACTION_ID_PROPERTY"] = "crm_sync_action_id"
    sandbox.seed({"salesforce": {"task_custom_fields": ["CrmSyncActionId__c"]}, "hubspot": {"custom_properties": ["crm_sync_action_id"]}})


def released_action_ids(deployment: Deployment) -> set[str]:
    """Every action the delay store (or ingest, when overdue) handed to a due topic."""
    t = deployment.topics
    return header_values(deployment, t.due_salesforce, "action_id") | header_values(deployment, t.due_hubspot, "action_id")


def header_values(deployment: Deployment, topic: str, name: str) -> set[str]:
    return {dict(m.headers() or ()).get(name, b"").decode() for m in read_all(deployment.bootstrap, topic)}


def committed_to_end(deployment: Deployment, topic: str, group: str) -> bool:
    consumer = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": f"{deployment.app_id}-{group}"})
    try:
        parts = [TopicPartition(topic, p) for p in range(deployment.partitions)]
        committed = consumer.committed(parts, timeout=10)
        return all(max(tp.offset, 0) == consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed)
    finally:
        consumer.close()


def planned_action_ids(deployment: Deployment) -> set[str]:
    return {h["action_id"] for h in delay_headers(deployment)}


def check_once(sandbox: CrmSandbox, ids: list[str], timeout: float) -> None:
    wait_all_delivered(sandbox, ids, timeout)
    settle_and_check_once(sandbox, ids)


def delay_headers(deployment: Deployment) -> list[dict[str, str]]:
    return [{k: v.decode() for k, v in msg.headers() or ()} for msg in read_all(deployment.bootstrap, deployment.topics.delay)]


def start_a_slow_delivery(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> tuple[WorkerProcess, list[str]]:
    """A worker with 4 bookings whose Salesforce creates take 2 s each; returns once one is under way."""
    worker = start_worker(deployment, workers, tmp_path)
    slow = Fault(crm="salesforce", latency=2.0, count=4, path_contains="sobjects")
    sandbox.inject(slow)
    ids = publish(deployment, 4)
    wait_for(lambda: slow.count < 4 or slow not in sandbox.state.faults, 30, 0.02, "a Salesforce create under way")
    return worker, ids


def test_restart_with_held_actions_delivers_each_once(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 10.0
    seed(sandbox)
    configure(deployment)
    first = start_worker(deployment, workers, tmp_path)
    ids = publish(deployment, 6)
    wait_for(lambda: len(delay_headers(deployment)) == 12, 20, what="12 actions on the delay topic")
    first.stop()
    assert delivered(sandbox) == Counter()

    start_worker(deployment, workers, tmp_path)
    check_once(sandbox, ids, 40)


def test_kill9_while_held_loses_nothing_and_fires_overdue_actions_at_once(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 6.0
    seed(sandbox)
    configure(deployment)
    first = start_worker(deployment, workers, tmp_path)
    ids = publish(deployment, 6)
    wait_for(lambda: len(delay_headers(deployment)) == 12, 20, what="12 actions on the delay topic")
    first.kill()
    due = max(int(h["due_at"]) for h in delay_headers(deployment)) / 1000
    wait_for(lambda: time.time() > due + 1.0, 20, what="every action to be overdue")
    assert delivered(sandbox) == Counter()

    restarted = time.time()
    start_worker(deployment, workers, tmp_path)
    wait_all_delivered(sandbox, ids, 40)
    ready_to_delivered = time.time() - restarted
    settle_and_check_once(sandbox, ids)
    assert ready_to_delivered < 30, f"overdue actions took {ready_to_delivered:.1f}s after restart"


def test_kill9_during_delivery_creates_no_duplicate(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 3.0
    check_before_create(deployment, sandbox)
    seed(sandbox)
    configure(deployment)
    first, ids = start_a_slow_delivery(deployment, sandbox, workers, tmp_path)
    time.sleep(0.5)
    first.kill()
    # The sandbox finishes the create the dead worker had sent, as a real CRM would.
    time.sleep(2.5)

    start_worker(deployment, workers, tmp_path)
    planned = planned_action_ids(deployment)
    assert len(planned) == 8
    wait_for(lambda: planned <= released_action_ids(deployment), 30, 0.5, "every action released after the restart")
    check_once(sandbox, ids, 30)


def test_a_worker_stopped_during_delivery_finishes_its_batch_and_creates_no_duplicate(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # No external-id check here: only the graceful drain (finish the batch, record it, commit) keeps
    # a deploy's SIGTERM from creating the batch's objects twice.
    deployment.delay_seconds = 3.0
    seed(sandbox)
    configure(deployment)
    first, ids = start_a_slow_delivery(deployment, sandbox, workers, tmp_path)
    first.stop()
    assert first.proc is not None and first.proc.returncode == 0, first.log_tail()
    assert "stages still busy at shutdown" not in first.log_text()

    start_worker(deployment, workers, tmp_path)
    check_once(sandbox, ids, 30)


def test_paused_company_is_held_past_its_due_time_and_delivered_after_resume(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 3.0
    deployment.extra_env["CRM_SYNC_PAUSED_REPARK_SECONDS"] = "2"
    seed(sandbox)
    admin = configure(deployment)
    start_worker(deployment, workers, tmp_path)
    ids = publish(deployment, 3)
    wait_for(lambda: len(delay_headers(deployment)) == 6, 20, what="6 actions on the delay topic")
    admin.set_paused(COMPANY, True)
    held = planned_action_ids(deployment)
    due = max(int(h["due_at"]) for h in delay_headers(deployment)) / 1000
    wait_for(lambda: time.time() > due + 3.0, 20, what="the due time to pass")
    assert delivered(sandbox) == Counter(), "a paused company's action was delivered"
    # Parked longer than the repark time: copied to the end of the retry topic, so the delay
    # topic's commit is no longer held back by the pause.
    wait_for(lambda: held <= header_values(deployment, deployment.topics.retry, "action_id"), 20, 0.5, "copies on the retry topic")
    wait_for(lambda: committed_to_end(deployment, deployment.topics.delay, "delay"), 20, 0.5, "the delay commit past the pause")

    admin.set_paused(COMPANY, False)
    resumed = time.time()
    wait_all_delivered(sandbox, ids, 30)
    assert time.time() - resumed < 20
    settle_and_check_once(sandbox, ids)


def test_late_event_fires_at_once(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 30.0
    seed(sandbox)
    configure(deployment)
    start_worker(deployment, workers, tmp_path)
    published = time.time()
    ids = publish(deployment, 2, occurred_at=int((published - 3600) * 1000))
    wait_all_delivered(sandbox, ids, 20)
    assert time.time() - published < 15, "a late event waited for the delay"
    settle_and_check_once(sandbox, ids, quiet=1.0)


def test_future_occurred_at_is_capped_at_arrival_plus_delay(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 4.0
    seed(sandbox)
    configure(deployment)
    start_worker(deployment, workers, tmp_path)
    published = time.time()
    ids = publish(deployment, 2, occurred_at=int((published + 3600) * 1000))
    headers = wait_for(lambda: (h := delay_headers(deployment)) and len(h) == 4 and h, 20, what="4 held actions")
    arrived = time.time()
    for h in headers:
        due = int(h["due_at"]) / 1000
        assert published + deployment.delay_seconds - 0.5 <= due <= arrived + deployment.delay_seconds
    assert delivered(sandbox) == Counter()
    wait_all_delivered(sandbox, ids, 20)
    assert time.time() - published < deployment.delay_seconds + 10
    settle_and_check_once(sandbox, ids, quiet=1.0)


def test_two_workers_and_a_rebalance_lose_nothing_and_duplicate_nothing(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 6.0
    companies = tuple(f"{COMPANY}-{i}" for i in range(8))
    seed(sandbox)
    configure(deployment, companies)
    deployment.extra_env["CRM_SYNC_LOG_LEVEL"] = "DEBUG"  # for the "planned" lines
    start_worker(deployment, workers, tmp_path)
    second = start_worker(deployment, workers, tmp_path)

    ids: list[str] = []
    for round_ in range(10):
        if round_ == 5:
            assert second.proc is not None
            second.proc.send_signal(signal.SIGTERM)  # its partitions move to the first worker mid-run
        ids += publish(deployment, 1, companies=companies)
        time.sleep(0.5)
    wait_for(lambda: len(planned_action_ids(deployment)) == 2 * len(ids), 30, 0.5, "every action planned")
    planned = planned_action_ids(deployment)
    wait_for(lambda: planned <= released_action_ids(deployment), 30, 0.5, "every action released")
    assert '"msg": "planned"' in second.log_text(), "the second worker held nothing before it stopped"
    check_once(sandbox, ids, 30)


def test_a_worker_joining_and_another_killed_mid_run_lose_nothing_and_duplicate_nothing(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.delay_seconds = 4.0
    check_before_create(deployment, sandbox)
    companies = tuple(f"{COMPANY}-{i}" for i in range(8))
    seed(sandbox)
    configure(deployment, companies)
    first = start_worker(deployment, workers, tmp_path)

    ids: list[str] = []
    for round_ in range(12):
        if round_ == 3:
            second = start_worker(deployment, workers, tmp_path)  # joins while actions are held
        if round_ == 8:
            first.kill()  # the first owner dies while it holds and delivers
        ids += publish(deployment, 1, companies=companies)
        time.sleep(0.5)
    # Events the dead worker had not planned are planned by the survivor once overdue: straight to a due topic.
    wait_for(lambda: len(released_action_ids(deployment)) == 2 * len(ids), 60, 0.5, "every action released")
    assert planned_action_ids(deployment) <= released_action_ids(deployment)
    assert '"msg": "delivery"' in second.log_text(), "the joining worker delivered nothing"
    check_once(sandbox, ids, 40)
