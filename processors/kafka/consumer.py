"""A consumer group whose committed offsets move only past records a batch handler has finished.

Why not Faust agents: faust-streaming commits from a list of acked offsets with gap filling, and
after a rebalance it can deliver a record prefetched before it; together they can commit past a
record no agent has seen (faust-streaming issues #221, #606; our two-worker rebalance test lost
actions that way). Here every batch is handled to the end (including the broker's acks for what it
produced) and then its offsets are committed; a revoke waits for the batch under way; a batch read
before a rebalance is dropped unhandled (the partition's next owner re-reads it from the commit).
So a crash or a rebalance can only repeat work, which the handlers make idempotent.

`batch_offsets` is the pure part; `BatchConsumer` is the thin aiokafka shell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

log = logging.getLogger(__name__)

Handle = Callable[[list[ConsumerRecord]], Awaitable[None]]
PartitionsHook = Callable[[Sequence[TopicPartition]], Awaitable[None]]


def batch_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offset to commit per partition once every record of the batch is handled."""
    offsets: dict[TopicPartition, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        offsets[tp] = max(offsets.get(tp, 0), rec.offset + 1)
    return offsets


class StopSignal:
    """Lets a stage finish the batch under way, commit and leave its group when the worker stops
    (a batch cut short would repeat CRM creates the ledger has not recorded yet)."""

    def __init__(self) -> None:
        self.requested = False
        self._exited = asyncio.Event()
        self._exited.set()

    def started(self) -> None:
        self._exited.clear()

    def exited(self) -> None:
        self._exited.set()

    async def stop(self) -> None:
        self.requested = True
        await self._exited.wait()


async def start_new_partitions(
    consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition], since_s: float, name: str
) -> None:
    """Where a partition without a commit starts, decided once and committed at once.

    - A **new group** (no commit on any partition of its topics: a new deployment or a changed app
      id) starts at `since_s` (by timestamp), not at the beginning: it must not replay the topics'
      whole retention.
    - An **existing group** starts such a partition at its beginning: its first records may have
      arrived while every worker was down, and must not be skipped.

    The start is committed at once, so the partition is never "new" again. Partitions with a
    commit resume from it.
    """
    fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
    if not fresh:
        return
    mine = set(assigned)
    others = [
        TopicPartition(topic, p)
        for topic in sorted({tp.topic for tp in assigned})
        for p in sorted(consumer.partitions_for_topic(topic) or ())
        if TopicPartition(topic, p) not in mine
    ]
    new_group = all([await consumer.committed(tp) is None for tp in others])
    if new_group:
        found = await consumer.offsets_for_times({tp: int(since_s * 1000) for tp in fresh})
        ends = await consumer.end_offsets(fresh)
        start = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in fresh}
        log.info(
            "new consumer group: starting from the lookback, not the beginning",
            extra={"consumer": name, "partitions": len(fresh), "since_ms": int(since_s * 1000)},
        )
    else:
        start = await consumer.beginning_offsets(fresh)
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in start.items()})


async def _nothing(partitions: Sequence[TopicPartition]) -> None:
    return None


class BatchConsumer:
    """Runs in the worker's event loop; one group per stage, so each worker owns its partitions."""

    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        consumer_config: dict[str, Any],
        handle: Handle,
        on_assigned: PartitionsHook = _nothing,
        max_records: int = 500,
        batch_window_seconds: float = 0.0,
        new_group_lookback_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        consumer_factory: Callable[..., AIOKafkaConsumer] = AIOKafkaConsumer,
    ) -> None:
        self.name = name
        self.group_id = consumer_config["group_id"]
        self.topics = tuple(topics)
        self._handle = handle
        self._on_assigned = on_assigned
        self._max_records = max_records
        self._window = batch_window_seconds
        self._lock = asyncio.Lock()
        self._generation = 0
        self.stopping = StopSignal()
        self._consumer: AIOKafkaConsumer | None = None
        self._consumer_config = consumer_config
        self._lookback = new_group_lookback_seconds
        self._clock = clock
        self._consumer_factory = consumer_factory

    @property
    def running(self) -> bool:
        return self._consumer is not None

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self) -> None:
        owner = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                # Wait for the batch under way: it commits before the next owner starts reading.
                async with owner._lock:
                    owner._generation += 1

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                async with owner._lock:
                    owner._generation += 1
                    if owner._lookback is not None:
                        await start_new_partitions(consumer, assigned, owner._clock() - owner._lookback, owner.name)
                    await owner._on_assigned(assigned)

        self.stopping.started()
        consumer = self._consumer_factory(**self._consumer_config)
        try:
            consumer.subscribe(list(self.topics), listener=Listener())
            await consumer.start()
            self._consumer = consumer
            while not self.stopping.requested:
                generation = self._generation
                records = await self._next_batch(consumer)
                if not records:
                    continue
                async with self._lock:
                    if generation != self._generation:
                        await self._drop(consumer, records)
                        continue
                    await self._handle(records)
                    await self._commit(consumer, batch_offsets(records))
        finally:
            self._consumer = None
            try:
                await consumer.stop()
            finally:
                self.stopping.exited()

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord]:
        """Up to `max_records`, waiting at most the batch window after the first record."""
        records: list[ConsumerRecord] = []
        deadline: float | None = None
        while len(records) < self._max_records:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            fetched = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=self._max_records - len(records))
            for batch in fetched.values():
                records.extend(batch)
            if deadline is None:
                if not records:
                    break
                deadline = time.monotonic() + self._window
        return records

    async def _drop(self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord]) -> None:
        """A rebalance came between the read and the handling: re-read what is still ours from the commit."""
        first: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            first[tp] = min(first.get(tp, rec.offset), rec.offset)
        for tp, offset in first.items():
            if tp in consumer.assignment():
                committed = await consumer.committed(tp)
                consumer.seek(tp, min(offset, committed) if committed is not None else offset)
        log.info("batch read before a rebalance dropped", extra={"consumer": self.name, "records": len(records)})

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
        except Exception:
            # The group moved on (e.g. a session timeout): the next owner repeats the batch, idempotently.
            log.warning("commit failed; the batch will be handled again", extra={"consumer": self.name}, exc_info=True)
