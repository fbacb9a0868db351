"""State the sinks and releasers stand on, through the real broker, worker and CRM sandbox: no
delivery before a partition's ledger is read to its end, per-tenant CRM threads (twenty hung
tenants beside a healthy one), and brand-new consumer groups of every stage that do not replay
what an earlier group already handled."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.sandbox import Fault
from connectors.sandbox.server import CrmSandbox
from processors.codec import Codec
from processors.domain.model import Action, Crm, EventType, ObjectType, Origin
from processors.domain.records import action_headers, action_to_record
from processors.kafka.topics import create_missing
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, http_ok, wait_for
from tests.integration.test_sinks import booking, configure, publish, seed
from tests.integration.test_trust import seed_tenant, tenant_secrets

pytestmark = pytest.mark.integration

NOT_READY = "assigned partitions not ready"


def not_ready_logs(worker: WorkerProcess, consumer: str) -> int:
    return sum(1 for line in worker.log_text().splitlines() if NOT_READY in line and f'"{consumer}"' in line)


def test_an_unreadable_ledger_means_not_ready_and_nothing_delivered_from_it(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A transaction left open on the Salesforce ledger holds its read_committed read back: the
    read fails (NotCaughtUp). That sink must deliver nothing and the worker must not be ready;
    the HubSpot sink, whose ledger reads fine, goes on. Once the transaction ends, the retried
    read succeeds and the Task is created."""
    deployment.extra_env["CRM_SYNC_LEDGER_READ_TIMEOUT_SECONDS"] = "2"
    seed(sandbox, ["ledger@buyer.example"])
    configure(deployment, "acme")
    config = deployment.config()
    create_missing(config)
    producer = Producer(
        {"bootstrap.servers": deployment.bootstrap, "transactional.id": f"stuck-{uuid.uuid4().hex}", "transaction.timeout.ms": 600_000}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for partition in range(deployment.partitions):
        producer.produce(config.topics.ledger(Crm.SALESFORCE), key=b"acme/other", value=b"intent:1", partition=partition)
    producer.flush(10)
    open_transaction = True
    try:
        worker = WorkerProcess(deployment, tmp_path / "worker.log").start()
        workers.append(worker)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{worker.port}/health/live"), 60, what="the worker's web server")
        publish(deployment, [booking("acme", "ledger@buyer.example")])

        wait_for(lambda: len(sandbox.hubspot.list_meetings()) == 1, 60, what="the HubSpot meeting (its ledger reads fine)")
        seen = not_ready_logs(worker, "sink-salesforce")
        wait_for(
            lambda: sandbox.salesforce.list_tasks() or not_ready_logs(worker, "sink-salesforce") >= seen + 2,
            90, what="the Salesforce ledger read failing again after the meeting arrived",
        )
        assert sandbox.salesforce.list_tasks() == [], "a Task was created while its ledger was unread"
        assert not http_ok(f"http://127.0.0.1:{worker.port}/health/ready")

        producer.abort_transaction(30)
        open_transaction = False
        wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 1, 90, what="the Task once the ledger reads to its end")
        worker.wait_ready(60)
    finally:
        if open_transaction:
            producer.abort_transaction(30)


def test_twenty_hung_tenants_do_not_hold_back_a_healthy_one(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Every hung tenant's HubSpot call hangs 60 s. With one shared pool of 16 CRM threads they
    took every thread, and the healthy company's calls (both CRMs) waited past their budget and
    were cooled down as slow, for longer than the hang. Each (CRM, company) has threads of its own."""
    hang = 60.0
    deployment.extra_env.update(CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS="false", CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS="2")
    hung = [f"hung-{n:02d}" for n in range(20)]
    for company in [*hung, "fine-co"]:
        tenant_secrets(deployment, sandbox, company, company)
        seed_tenant(sandbox, company, [f"{company}@buyer.example"])
        configure(deployment, company)
    for company in hung:
        sandbox.inject(Fault(crm="hubspot", latency=hang, count=100, tenant=company))
    start_worker(deployment, workers, tmp_path)

    worker = workers[-1]
    publish(deployment, [booking(company, f"{company}@buyer.example") for company in hung])

    def timed_out() -> set[str]:
        return {c for line in worker.log_text().splitlines() if "CRM too slow" in line for c in hung if f'"{c}"' in line}

    # Every hung tenant's call ran out its budget: each holds a thread that hangs on.
    wait_for(lambda: timed_out() == set(hung), 60, what="every hung tenant's call timing out")
    publish(deployment, [booking("fine-co", "fine-co@buyer.example")])
    fine = sandbox.tenant("fine-co")
    wait_for(
        lambda: len(fine.hubspot.list_meetings()) == 1 and len(fine.salesforce.list_tasks()) == 1,
        hang / 2, what="the healthy company's meeting and Task, well before the hang ends",
    )
    assert all(sandbox.tenant(c).hubspot.list_meetings() == [] for c in hung)


HOURS_AGO_MS = 3 * 3_600_000  # older than any stage's new-group window (lookback + longest wait)


def old_action(company: str, contact: str, marker: str, written_ms: int) -> Action:
    """An action an earlier group already handled (e.g. dropped as integration_disabled)."""
    return Action(
        action_id=f"old-{uuid.uuid4().hex}", event_id=f"evt-{uuid.uuid4().hex}", event_type=EventType.MEETING_BOOKED,
        company_id=company, meeting_type_id="intro-30", crm=Crm.SALESFORCE, object_type=ObjectType.TASK,
        origin=Origin.MEETING_TYPE, occurred_at=written_ms, due_at=written_ms + 1_000, planned_at=written_ms,
        contact_email=contact, owner_email="host@seller.example",
        properties={"Subject": marker, "Description": marker, "ActivityDate": "2026-11-24"},
    )


def write_action(producer: Producer, codec: Codec, topic: str, action: Action, key: str, timestamp: int, partition: int = -1) -> None:
    value = codec.encode("Action", action_to_record(action))
    producer.produce(topic, key=key.encode(), value=value, headers=action_headers(action), timestamp=timestamp, partition=partition)


def test_brand_new_delay_retry_and_sink_groups_do_not_replay_what_an_earlier_group_handled(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Hour-old actions on the delay, retry and due topics (long handled by the groups of an
    earlier app id) are not released again by a new app id's groups: only the fresh booking is
    created. Today only ingest had the lookback: the other groups started at the beginning."""
    seed(sandbox, ["fresh@buyer.example", "old@buyer.example"])
    configure(deployment, "acme")
    config = deployment.config()
    create_missing(config)
    codec = Codec()
    producer = Producer({"bootstrap.servers": deployment.bootstrap})
    written = int(time.time() * 1000) - HOURS_AGO_MS
    for topic, marker in ((config.topics.delay, "old-delay"), (config.topics.retry, "old-retry"), (config.topics.due(Crm.SALESFORCE), "old-due")):
        action = old_action("acme", "old@buyer.example", marker, written)
        write_action(producer, codec, topic, action, action.action_id if "due" in topic else action.company_id, written)
    producer.flush(10)

    worker = start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", "fresh@buyer.example")])
    wait_for(lambda: len(sandbox.hubspot.list_meetings()) == 1, 60, what="the fresh booking's meeting")
    wait_for(lambda: sandbox.salesforce.list_tasks(), 30, what="the fresh booking's Task")
    # The old actions were due long ago: had they been read, they went out before the fresh one.
    subjects = sorted(str(t.get("Subject")) for t in sandbox.salesforce.list_tasks())
    assert not [s for s in subjects if s.startswith("old-")], f"replayed by a new group: {subjects}"
    assert len(subjects) == 1
    log = worker.log_text()
    for consumer in ("releaser-" + config.topics.delay, "releaser-" + config.topics.retry, "sink-salesforce"):
        assert any("new consumer group" in line and consumer in line for line in log.splitlines()), consumer


def test_with_the_previous_app_id_a_new_group_starts_exactly_where_the_old_one_left_off(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Two recent actions on the delay topic, both inside the lookback; the old app id's delay
    group committed past the first (handled) but not the second. Seeded from that commit, the new
    group releases the second only."""
    seed(sandbox, ["seed@buyer.example"])
    configure(deployment, "acme")
    config = deployment.config()
    create_missing(config)
    previous = f"{deployment.app_id}-old"
    deployment.extra_env["CRM_SYNC_PREVIOUS_APP_ID"] = previous
    codec = Codec()
    producer = Producer({"bootstrap.servers": deployment.bootstrap})
    written = int(time.time() * 1000) - 60_000
    for marker in ("seed-handled", "seed-pending"):
        write_action(producer, codec, config.topics.delay, old_action("acme", "seed@buyer.example", marker, written), "acme", written, partition=0)
    producer.flush(10)
    old_group = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": f"{previous}-delay", "enable.auto.commit": False})
    old_group.commit(offsets=[TopicPartition(config.topics.delay, 0, 1)], asynchronous=False)  # past the first only
    old_group.close()

    worker = start_worker(deployment, workers, tmp_path)
    wait_for(lambda: sandbox.salesforce.list_tasks(), 60, what="the pending action's Task")
    publish(deployment, [booking("acme", "seed@buyer.example")])
    wait_for(lambda: len(sandbox.hubspot.list_meetings()) == 1, 60, what="a fresh booking's meeting, after which nothing older can come")
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) >= 2, 30, what="the fresh booking's Task")
    subjects = sorted(str(t.get("Subject")) for t in sandbox.salesforce.list_tasks())
    assert "seed-handled" not in subjects, "the old group's handled action was released again"
    assert "seed-pending" in subjects and len(subjects) == 2
    assert "starting where the earlier app id's group left off" in worker.log_text()
