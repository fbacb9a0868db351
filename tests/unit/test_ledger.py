"""The sink ledger's in-memory part, the commit offsets of a batch, and the topic checks they rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from processors.kafka.consumer import batch_offsets
from processors.config import Config
from processors.state.ledger import Ledger
from processors.state.table import Generations
from processors.domain.model import Crm
from processors.kafka.topics import check_ledgers, topic_specs

HOUR_MS = 3_600_000


def test_an_entry_is_kept_at_least_keep_ms_and_at_most_twice_that() -> None:
    gens = Generations(keep_ms=2 * HOUR_MS, rotated_at=0)
    gens.put("a", "obj-a", now_ms=0)
    assert gens.get("a", now_ms=HOUR_MS - 1) == "obj-a"
    assert gens.get("a", now_ms=HOUR_MS) == "obj-a"  # rotated into `previous`, still known
    gens.put("b", "obj-b", now_ms=HOUR_MS + 1)
    assert gens.get("a", now_ms=2 * HOUR_MS) is None  # second rotation: older than keep_ms/2 twice
    assert gens.get("b", now_ms=2 * HOUR_MS) == "obj-b"
    assert gens.size(now_ms=2 * HOUR_MS) == 1


def test_the_current_generation_wins_over_the_previous_one() -> None:
    gens = Generations(keep_ms=2 * HOUR_MS, rotated_at=0)
    gens.put("a", "old", now_ms=0)
    gens.put("a", "new", now_ms=HOUR_MS)
    assert gens.get("a", now_ms=HOUR_MS) == "new"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_put_is_known_at_once_in_its_partition_only_and_is_written_to_the_same_partition() -> None:
    written: list[tuple[int, bytes, bytes]] = []

    async def write(partition: int, key: bytes, value: bytes) -> Any:
        written.append((partition, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def scenario() -> Ledger:
        ledger = Ledger(topic="l", write=write, reader_config={}, keep_ms=HOUR_MS, clock=FakeClock())
        await (await ledger.put(3, "acme", "act-1", "00T1"))
        return ledger

    ledger = asyncio.run(scenario())
    assert ledger.get(3, "acme", "act-1") == "00T1"
    assert ledger.get(3, "other", "act-1") is None  # tenant-scoped
    assert ledger.get(2, "acme", "act-1") is None
    assert written == [(3, b"acme/act-1", b"00T1")]
    assert len(ledger) == 1


def test_holding_forgets_the_other_partitions_and_reads_the_held_ones_back() -> None:
    """Another owner may have written to partition 1 since: it is read back, not kept."""
    reads: list[list[int]] = []

    async def write(partition: int, key: bytes, value: bytes) -> Any:
        return asyncio.sleep(0)

    async def scenario() -> Ledger:
        ledger = Ledger(topic="l", write=write, reader_config={}, keep_ms=HOUR_MS, clock=FakeClock())

        def read(partitions: list[int]) -> None:
            reads.append(partitions)
            ledger._table.put("c/b", "y-by-the-other-owner", 1)

        ledger._read = read  # type: ignore[method-assign]
        await (await ledger.put(0, "c", "a", "x"))
        await (await ledger.put(1, "c", "b", "y"))
        await ledger.hold([1])
        return ledger

    ledger = asyncio.run(scenario())
    assert reads == [[1]]
    assert ledger.ready(1) and not ledger.ready(0)
    assert ledger.get(0, "c", "a") is None
    assert ledger.get(1, "c", "b") == "y-by-the-other-owner"


def test_a_failed_read_leaves_the_partition_not_ready() -> None:
    async def write(partition: int, key: bytes, value: bytes) -> Any:
        return asyncio.sleep(0)

    async def scenario() -> Ledger:
        ledger = Ledger(topic="l", write=write, reader_config={}, keep_ms=HOUR_MS, clock=FakeClock())

        def read(partitions: list[int]) -> None:
            raise TimeoutError("not read to its end")

        ledger._read = read  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await ledger.hold([2])
        return ledger

    assert not asyncio.run(scenario()).ready(2)


def rec(topic: str, partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, b"", 0, 0, (), None)


def test_a_batch_commits_one_past_its_last_record_per_partition() -> None:
    records = [rec("t", 0, 5), rec("t", 1, 9), rec("t", 0, 6), rec("u", 0, 0), rec("t", 0, 7)]
    assert batch_offsets(records) == {TopicPartition("t", 0): 8, TopicPartition("t", 1): 10, TopicPartition("u", 0): 1}
    assert batch_offsets([]) == {}


def test_ledger_topics_are_compacted_with_the_configured_retention() -> None:
    config = Config(ledger_keep_hours=48)
    for crm in Crm:
        spec = topic_specs(config)[config.topics.ledger(crm)]
        assert spec == {"cleanup.policy": "compact,delete", "retention.ms": str(48 * HOUR_MS)}


def test_a_ledger_with_other_partitions_than_its_due_topic_is_refused() -> None:
    t = Config().topics
    same = {t.due_salesforce: 6, t.ledger_salesforce: 6, t.due_hubspot: 6, t.ledger_hubspot: 6}
    check_ledgers(Config(), same)
    check_ledgers(Config(), {t.due_salesforce: 6})  # just created: not in the metadata yet
    with pytest.raises(ValueError, match="crm-sync.ledger.hubspot.v1 has 3 partitions"):
        check_ledgers(Config(), {**same, t.ledger_hubspot: 3})


def test_a_claim_names_the_action_of_an_object_in_its_partition_and_company() -> None:
    written: list[tuple[int, bytes, bytes]] = []

    async def write(partition: int, key: bytes, value: bytes) -> Any:
        written.append((partition, key, value))
        return asyncio.sleep(0)

    async def scenario() -> Ledger:
        ledger = Ledger(topic="l", write=write, reader_config={}, keep_ms=HOUR_MS, clock=FakeClock())
        await (await ledger.claim(1, "acme", "00T1", "act-1"))
        return ledger

    ledger = asyncio.run(scenario())
    assert ledger.claimant(1, "acme", "00T1") == "act-1"
    assert ledger.claimant(1, "other", "00T1") is None  # tenant-scoped
    assert ledger.claimant(0, "acme", "00T1") is None
    assert ledger.get(1, "acme", "00T1") is None  # a claim is not an action's entry
    assert written == [(1, b"acme/object:00T1", b"act-1")]


def test_the_due_topic_is_keyed_by_company() -> None:
    from processors.state.ledger import due_key

    assert due_key("acme") == b"acme"
