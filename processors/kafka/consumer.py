"""A consumer group whose committed offsets move only past records a batch handler has finished.

Why not Faust agents: faust-streaming commits from a list of acked offsets with gap filling, and
after a rebalance it can deliver a record prefetched before it; together they can commit past a
record no agent has seen (faust-streaming issues #221, #606; our two-worker rebalance test lost
actions that way). Here every batch is handled to the end (including the broker's acks for what it
produced) and then its offsets are committed; a revoke waits for the batch under way; a batch read
before a rebalance is dropped unhandled (the partition's next owner re-reads it from the commit).
So a crash or a rebalance can only repeat work, which the handlers make idempotent.

An assignment is used only once settled (`Settling`, shared with the releasers): a brand-new
group's partitions started at its lookback, and the stage's state (the sinks' ledgers) read to the
end in this assignment; until then its partitions are paused and the stage is not ready.

`batch_offsets` and `group_birth` are the pure parts; `BatchConsumer` is the thin aiokafka shell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from connectors.retry import RetryPolicy

log = logging.getLogger(__name__)

Handle = Callable[[list[ConsumerRecord]], Awaitable[None]]
PartitionsHook = Callable[[Sequence[TopicPartition]], Awaitable[None]]
# An earlier group's commits on some partitions (`earlier_commits`).
Earlier = Callable[[Sequence[TopicPartition]], Awaitable[Mapping[TopicPartition, OffsetAndMetadata]]]


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


BIRTH_PREFIX = "born="
# A partition whose hook (the ledger read) failed is tried again, never run without it.
LOAD_RETRY = RetryPolicy(base=1.0, cap=30.0, max_elapsed=None)


def birth_metadata(born_ms: int) -> str:
    """The metadata every commit of a group carries: when the group started reading."""
    return f"{BIRTH_PREFIX}{born_ms}"


def parse_birth(metadata: str | None) -> int | None:
    if not metadata or not metadata.startswith(BIRTH_PREFIX):
        return None
    try:
        return int(metadata[len(BIRTH_PREFIX):])
    except ValueError:
        return None


def group_birth(commits: Mapping[TopicPartition, OffsetAndMetadata], since_ms: int) -> tuple[int, bool]:
    """When the group began reading its topics, and whether it is brand-new.

    - Some commit carries a birth stamp: the group began then (the earliest stamp, should two
      workers joining a brand-new group in one generation have stamped slightly different times).
    - Commits without a stamp only: an existing group from before stamps; it began at 0 (the
      topics' beginning).
    - No commit at all: a brand-new group; it begins at `since_ms` (now minus the lookback).
    """
    births = [b for b in (parse_birth(om.metadata) for om in commits.values()) if b is not None]
    if births:
        return min(births), False
    if commits:
        return 0, False
    return since_ms, True


async def committed_offsets(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's commits with their metadata (aiokafka's `committed` returns the offset only);
    a partition without a commit is absent."""
    return dict(await consumer._coordinator.fetch_committed_offsets(list(partitions)))


def earlier_commits(
    factory: Callable[..., AIOKafkaConsumer], consumer_config: Mapping[str, Any], group_id: str
) -> Earlier:
    """Asks an earlier group (the same stage under a previous app id) for its commits; that group
    is only asked, never joined, so its members (if any still run) are not disturbed."""

    async def ask(partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, OffsetAndMetadata]:
        other = factory(**{**consumer_config, "group_id": group_id})
        await other.start()
        try:
            return await committed_offsets(other, partitions)
        finally:
            await other.stop()

    return ask


async def start_new_partitions(
    consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition], since_s: float, name: str, earlier: Earlier | None = None
) -> str:
    """Where a partition without a commit starts, decided once and committed at once; returns the
    commit metadata (the group's birth stamp) the stage's later commits carry.

    A partition without a commit starts at the first record written since the group's birth
    (`group_birth`), by timestamp (`offsets_for_times`):
    - in a **brand-new group** that is now minus the lookback: it must not replay the topics'
      whole retention, which an earlier group (another app id) has already handled;
    - in an **existing group** it is the group's birth, so a partition added later, or one whose
      first records arrived while every worker was down, loses nothing; for a group from before
      birth stamps, the partition's beginning.
    Every commit carries the stamp, so a worker that joins a brand-new group in the same
    generation as another and sees the other's first commit starts where the other did, instead
    of taking the group for an old one and replaying from the beginning. Partitions with a commit
    resume from it.

    With an `earlier` group (`CRM_SYNC_PREVIOUS_APP_ID`), a partition without a commit that the
    earlier group committed starts at that commit instead: exactly where the earlier group's
    handling ended (every stage commits only past what it handled), whatever the lookback.
    """
    topics = sorted({tp.topic for tp in assigned})
    every = sorted(
        {*assigned, *(TopicPartition(topic, p) for topic in topics for p in consumer.partitions_for_topic(topic) or ())}
    )
    commits = await committed_offsets(consumer, every)
    born, new_group = group_birth(commits, int(since_s * 1000))
    metadata = birth_metadata(born)
    fresh = [tp for tp in assigned if tp not in commits]
    if not fresh:
        return metadata
    if born == 0:
        start = await consumer.beginning_offsets(fresh)
    else:
        found = await consumer.offsets_for_times({tp: born for tp in fresh})
        ends = await consumer.end_offsets(fresh)
        start = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in fresh}
    seeded = {tp: om.offset for tp, om in (await earlier(fresh)).items() if om.offset >= 0} if earlier is not None else {}
    start.update(seeded)
    if seeded:
        log.info(
            "new consumer group: starting where the earlier app id's group left off",
            extra={"consumer": name, "partitions": len(seeded)},
        )
    if new_group and len(seeded) < len(fresh):
        log.info(
            "new consumer group: starting from the lookback, not the beginning",
            extra={"consumer": name, "partitions": len(fresh) - len(seeded), "since_ms": born},
        )
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    await consumer.commit({tp: OffsetAndMetadata(offset, metadata) for tp, offset in start.items()})
    return metadata


async def _nothing(partitions: Sequence[TopicPartition]) -> None:
    return None


class Settling:
    """An assignment is settled before any of its records is used: its new partitions started
    (`start_new_partitions`, when the stage has a lookback), then the stage's hook (e.g. its
    ledger read to the end). Until then its partitions are paused and the stage is not ready. A
    settling that fails is tried again with a backoff, never skipped: aiokafka only logs an
    exception raised in `on_partitions_assigned`, and the partitions would run without their state.

    Callers hold the stage's lock around `assigned` and `again` (a revoke never interleaves).
    """

    def __init__(
        self,
        name: str,
        *,
        lookback_seconds: float | None,
        clock: Callable[[], float] = time.time,
        hook: PartitionsHook = _nothing,
        retry: RetryPolicy = LOAD_RETRY,
        earlier: Earlier | None = None,
    ) -> None:
        self._name = name
        self._earlier = earlier
        self._lookback = lookback_seconds
        self._clock = clock
        self._hook = hook
        self._retry = retry
        self.metadata = ""  # what the stage's commits carry (the group's birth stamp)
        self._pending: list[TopicPartition] | None = None
        self._failures = 0
        self._retry_at = 0.0

    @property
    def settled(self) -> bool:
        return self._pending is None

    def reset(self) -> None:
        self._pending = None
        self._failures = 0

    def due(self) -> bool:
        """Unsettled, and its backoff is over: call `again`."""
        return self._pending is not None and time.monotonic() >= self._retry_at

    async def assigned(self, consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition]) -> None:
        self._pending = list(assigned)
        self._failures = 0
        if self._pending:
            consumer.pause(*self._pending)
        await self.again(consumer)

    async def again(self, consumer: AIOKafkaConsumer) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            if self._lookback is not None:
                self.metadata = await start_new_partitions(
                    consumer, pending, self._clock() - self._lookback, self._name, self._earlier
                )
            await self._hook(pending)
        except Exception as exc:
            self._failures += 1
            wait = self._retry.backoff(self._failures)
            self._retry_at = time.monotonic() + wait
            log.error(
                "assigned partitions not ready: nothing is handled from them until this succeeds",
                extra={"consumer": self._name, "partitions": len(pending), "reason": str(exc), "retry_in": round(wait, 2)},
                exc_info=True,
            )
            return
        self._pending = None
        self._failures = 0
        if pending:
            consumer.resume(*pending)


class BatchConsumer:
    """Runs in the worker's event loop; one group per stage, so each worker owns its partitions.
    No record of an assignment is handled before it is settled (`Settling`)."""

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
        load_retry: RetryPolicy = LOAD_RETRY,
        earlier_group_id: str | None = None,
    ) -> None:
        self.name = name
        self.group_id = consumer_config["group_id"]
        self.topics = tuple(topics)
        self._handle = handle
        self._max_records = max_records
        self._window = batch_window_seconds
        self._lock = asyncio.Lock()
        self._generation = 0
        self.stopping = StopSignal()
        self._consumer: AIOKafkaConsumer | None = None
        self._consumer_config = consumer_config
        self._consumer_factory = consumer_factory
        earlier = earlier_commits(consumer_factory, consumer_config, earlier_group_id) if earlier_group_id else None
        self._settling = Settling(
            name, lookback_seconds=new_group_lookback_seconds, clock=clock, hook=on_assigned, retry=load_retry, earlier=earlier
        )

    @property
    def running(self) -> bool:
        """Joined its group and its assignment settled (what readiness asks)."""
        return self._consumer is not None and self._settling.settled

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
                    await owner._settling.assigned(consumer, assigned)

        self.stopping.started()
        self._settling.reset()
        consumer = self._consumer_factory(**self._consumer_config)
        try:
            consumer.subscribe(list(self.topics), listener=Listener())
            await consumer.start()
            self._consumer = consumer
            while not self.stopping.requested:
                if self._settling.due():
                    async with self._lock:
                        await self._settling.again(consumer)
                generation = self._generation
                records = await self._next_batch(consumer)
                if not records:
                    continue
                async with self._lock:
                    if generation != self._generation or not self._settling.settled:
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
            await consumer.commit({tp: OffsetAndMetadata(offset, self._settling.metadata) for tp, offset in offsets.items()})
        except Exception:
            # The group moved on (e.g. a session timeout): the next owner repeats the batch, idempotently.
            log.warning("commit failed; the batch will be handled again", extra={"consumer": self.name}, exc_info=True)
