"""The session's Kafka broker really works with both client stacks crm-sync uses."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, *, until, timeout: float = 30.0, **conf) -> list:
    """Polls `topic` from the beginning with a fresh group until until(msgs) is true."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **conf,
        }
    )
    msgs = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while not until(msgs):
            assert time.monotonic() < deadline, f"timed out; got {[m.value() for m in msgs]}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(msg.error())
            msgs.append(msg)
    finally:
        consumer.close()
    return msgs


def test_confluent_round_trip_on_compacted_topic(kafka_bootstrap, topic_factory):
    topic = topic_factory(config={"cleanup.policy": "compact"})

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(20)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    msgs = _consume(kafka_bootstrap, topic, until=lambda m: len(m) >= len(sent))
    assert [(m.key(), m.value()) for m in msgs] == sent


def test_aborted_transaction_is_invisible_to_read_committed(kafka_bootstrap, topic_factory):
    topic = topic_factory()
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
    producer.flush(30)
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed")
    producer.commit_transaction(30)

    def saw_committed(msgs):
        return any(m.value() == b"committed" for m in msgs)

    committed = _consume(
        kafka_bootstrap, topic, until=saw_committed, **{"isolation.level": "read_committed"}
    )
    assert [m.value() for m in committed] == [b"committed"]

    # Control: the aborted records are in the log, so the check above means something.
    uncommitted = _consume(
        kafka_bootstrap, topic, until=saw_committed, **{"isolation.level": "read_uncommitted"}
    )
    assert [m.value() for m in uncommitted] == [
        b"aborted-0",
        b"aborted-1",
        b"aborted-2",
        b"committed",
    ]


def test_aiokafka_consumer_group_consume_and_commit(kafka_bootstrap, topic_factory):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = topic_factory()
    group = f"crm-sync-test-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)

    async def consume(n: int, expect_committed: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            async with asyncio.timeout(30):
                while len(got) < n:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        got.extend(r.value for r in records)
            await consumer.commit()
            assert await consumer.committed(tp) == expect_committed
            return got
        finally:
            await consumer.stop()

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
            assert await consume(5, expect_committed=5) == [f"m{i}".encode() for i in range(5)]

            # A new member of the same group resumes from the committed offset.
            await producer.send_and_wait(topic, b"m5", key=b"k")
            assert await consume(1, expect_committed=6) == [b"m5"]
        finally:
            await producer.stop()

    asyncio.run(main())
