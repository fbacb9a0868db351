"""The delivery path's flow guarantees (SPEC §3, §4, §7, §11), through the real broker, worker and
CRM sandbox: a pause holds whatever path an action took (an overdue event goes through the
releaser's pause gate too), a wait far ahead never holds back a retry due sooner on the same
partition (tiered retry topics), and an oversized input record is dead-lettered (bounded) without
stopping its partition."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from connectors.sandbox import Fault
from connectors.sandbox.server import CrmSandbox
from processors.kafka.producer import partition_for
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, read_all, wait_for
from tests.integration.test_sinks import booking, configure, dead_letters, publish, seed

pytestmark = pytest.mark.integration

BROKER_MAX = 1_048_588  # the broker's default message.max.bytes


def header_values(deployment: Deployment, topic: str, name: str) -> list[str]:
    out = []
    for msg in read_all(deployment.bootstrap, topic):
        for key, raw in msg.headers() or []:
            if key == name:
                out.append(raw.decode())
    return out


def retry_topics(deployment: Deployment) -> list[str]:
    t = deployment.topics
    return [t.retry, *(getattr(t, name) for name in ("retry_medium", "retry_long") if hasattr(t, name))]


def test_a_paused_companys_overdue_event_creates_nothing_until_it_resumes(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.extra_env["CRM_SYNC_PAUSED_REPARK_SECONDS"] = "2"
    seed(sandbox, ["late@buyer.example"])
    admin = configure(deployment, "acme")
    admin.set_paused("acme", True)
    start_worker(deployment, workers, tmp_path)
    event = {**booking("acme", "late@buyer.example"), "occurred_at": int((time.time() - 15 * 60) * 1000)}
    publish(deployment, [event])

    # Either the Task (the pause skipped) or the parked copies on a retry topic (the pause held).
    def settled() -> bool:
        return bool(sandbox.salesforce.list_tasks()) or any(
            header_values(deployment, topic, "event_id").count(event["event_id"]) >= 2 for topic in retry_topics(deployment)
        )

    wait_for(settled, 60, 0.5, "the overdue action to be delivered or parked")
    assert sandbox.salesforce.list_tasks() == [], "a paused company's Task was created for an overdue event"
    assert sandbox.hubspot.list_meetings() == [], "a paused company's meeting was created for an overdue event"

    admin.set_paused("acme", False)
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 1 and len(sandbox.hubspot.list_meetings()) == 1, 40,
             what="the Task and meeting after resume")
    time.sleep(2.0)
    assert len(sandbox.salesforce.list_tasks()) == 1 and len(sandbox.hubspot.list_meetings()) == 1


def same_partition_company(other: str, partitions: int) -> str:
    want = partition_for(other.encode(), partitions)
    return next(c for c in (f"recheck-{n}" for n in range(1000)) if partition_for(c.encode(), partitions) == want)


def test_a_recheck_an_hour_ahead_does_not_hold_back_a_transient_retry_on_the_same_partition(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.extra_env["CRM_SYNC_SINK_RETRY_SECONDS"] = "600"
    deployment.extra_env["CRM_SYNC_SINK_INLINE_RETRY_SECONDS"] = "0"  # a 503 goes through the retry topic
    seed(sandbox, ["retry@buyer.example"])  # the re-check company's booker is not in the CRM
    configure(deployment, "retryco")
    recheck = same_partition_company("retryco", deployment.partitions)
    admin = configure(deployment, recheck)
    admin.set_contact_recheck(recheck, [3600])
    start_worker(deployment, workers, tmp_path)

    publish(deployment, [booking(recheck, "nobody@buyer.example")])
    wait_for(lambda: any(h == recheck for topic in retry_topics(deployment) for h in header_values(deployment, topic, "company_id")),
             60, 0.5, "the re-check an hour ahead on a retry topic")
    sandbox.inject(Fault(crm="salesforce", status=503, count=1, path_contains="composite"))
    published = time.time()
    publish(deployment, [booking("retryco", "retry@buyer.example")])
    # The deferral's backoff is 5 s; a partition stalled by the re-check would take about 45 minutes.
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 1, 90, 0.5, "the transient retry's Task")
    assert time.time() - published < 60


def test_an_oversized_input_record_is_dead_lettered_bounded_and_the_booking_behind_it_arrives(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    seed(sandbox, ["big@buyer.example"])
    configure(deployment, "acme")
    start_worker(deployment, workers, tmp_path)
    big = b"\xc3\x01" + b"\x00" * 8 + b"x" * 1_010_000  # accepted by the broker, above librdkafka's 1,000,000
    producer = Producer({"bootstrap.servers": deployment.bootstrap, "message.max.bytes": BROKER_MAX + 10_000})
    for partition in range(deployment.partitions):
        producer.produce(deployment.topics.meetings, key=b"acme", value=big, partition=partition)
    assert producer.flush(30) == 0
    publish(deployment, [booking("acme", "big@buyer.example")])

    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 1, 120, 0.5, "the booking behind the oversized record")
    letters = wait_for(lambda: (d := [x for x in dead_letters(deployment) if x["source_topic"] == deployment.topics.meetings])
                       and len(d) == deployment.partitions and d, 60, what="a dead letter per oversized record")
    for letter in letters:
        assert letter["original_length"] == len(big)
        assert letter["original_sha256"] == hashlib.sha256(big).hexdigest()
        assert len(letter["original_value"]) < 100_000 and big.startswith(letter["original_value"])
    assert {letter["source_partition"] for letter in letters} == set(range(deployment.partitions))


def test_a_worker_refuses_to_start_on_a_retry_tier_that_would_expire_waits_unread(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    week = str(7 * 24 * 3600 * 1000)  # the longest re-check is a week: its record could expire unread
    topic = deployment.topics.retry_long
    for future in admin.create_topics([NewTopic(topic, num_partitions=deployment.partitions, replication_factor=1,
                                                config={"retention.ms": week})]).values():
        future.result(30)
    worker = WorkerProcess(deployment, tmp_path / "worker.log").start()
    workers.append(worker)
    assert worker.proc is not None
    worker.proc.wait(120)
    assert worker.proc.returncode != 0
    assert f"topic {topic} keeps records {week} ms" in worker.log_text() and "raise its retention.ms" in worker.log_text()
