"""`BatchConsumer` through a fake aiokafka consumer: offsets move only past batches `handle`
finished; a batch read before a rebalance is dropped and re-read from the commit; a new group
starts at its lookback (`start_new_partitions`). No broker, no real waits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, OffsetAndTimestamp

from connectors.retry import RetryPolicy
from processors.config import Config
from processors.kafka.clients import earlier_group
from processors.kafka.consumer import BatchConsumer, batch_offsets, earlier_commits, start_new_partitions

TOPIC = "events"
P0, P1, P2 = (TopicPartition(TOPIC, p) for p in range(3))


def record(tp: TopicPartition, offset: int, value: bytes | None = None) -> ConsumerRecord:
    return ConsumerRecord(
        topic=tp.topic, partition=tp.partition, offset=offset, timestamp=1_800_000_000_000 + offset, timestamp_type=0,
        key=None, value=value if value is not None else f"{tp.partition}:{offset}".encode(),
        checksum=None, serialized_key_size=0, serialized_value_size=0, headers=(),
    )


class FakeConsumer:
    """What `BatchConsumer` and `start_new_partitions` call on an AIOKafkaConsumer.

    Each partition is a log with a fetch position; `getmany` hands out what is after the
    position (and moves it), like aiokafka's prefetch. `on_poll` runs inside `getmany` (after the
    records were taken) so a test can rebalance between the read and the handling.
    """

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.listener: Any = None
        self.topics: list[str] = []
        self.logs: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.position: dict[TopicPartition, int] = {}
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.assigned: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.polls = 0
        self.started = False
        self.stopped = False
        self.fail_commits = 0  # how many of the next commits fail
        self.on_poll: Callable[[int], Awaitable[None]] | None = None
        self.times: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        self.ends: dict[TopicPartition, int] = {}
        self.times_asked: dict[TopicPartition, int] | None = None
        self.assign_on_start: list[TopicPartition] = []
        self.beginnings: dict[TopicPartition, int] = {}
        self.metadata: dict[TopicPartition, str] = {}
        self.paused_tps: set[TopicPartition] = set()
        self._coordinator = self  # what `committed_offsets` asks for the commits' metadata

    # test side
    def produce(self, tp: TopicPartition, count: int) -> None:
        log = self.logs.setdefault(tp, [])
        for _ in range(count):
            log.append(record(tp, len(log)))

    async def rebalance(self, assigned: list[TopicPartition]) -> None:
        await self.listener.on_partitions_revoked(sorted(self.assigned))
        self.assigned = set(assigned)
        await self._assigned_callback(list(assigned))

    # aiokafka side
    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.topics = list(topics)
        self.listener = listener

    async def start(self) -> None:
        self.started = True
        if self.assign_on_start:
            self.assigned = set(self.assign_on_start)
            for tp in self.assign_on_start:
                self.position.setdefault(tp, self.committed_offsets.get(tp, 0))
            await self._assigned_callback(list(self.assign_on_start))

    async def _assigned_callback(self, assigned: list[TopicPartition]) -> None:
        """Like aiokafka's coordinator: an exception from the listener is logged, not raised."""
        try:
            await self.listener.on_partitions_assigned(assigned)
        except Exception:
            logging.getLogger(__name__).exception("listener failed on partition assignment")

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.polls += 1
        await asyncio.sleep(0)
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        budget = max_records if max_records is not None else 10**9
        for tp in sorted(self.assigned - self.paused_tps):
            pos = self.position.get(tp, 0)
            batch = self.logs.get(tp, [])[pos : pos + budget]
            if batch:
                out[tp] = batch
                self.position[tp] = pos + len(batch)
                budget -= len(batch)
        if self.on_poll is not None:
            await self.on_poll(self.polls)
        return out

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def fetch_committed_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: OffsetAndMetadata(self.committed_offsets[tp], self.metadata.get(tp, "")) for tp in partitions if tp in self.committed_offsets}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_tps.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_tps.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in (*self.logs, *self.ends, *self.committed_offsets, *self.assigned) if tp.topic == topic}

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginnings.get(tp, 0) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise RuntimeError("CommitFailedError: the group rebalanced")
        plain = {tp: om.offset for tp, om in offsets.items()}
        assert all(isinstance(om, OffsetAndMetadata) for om in offsets.values())
        self.commits.append(plain)
        self.committed_offsets.update(plain)
        self.metadata.update({tp: om.metadata for tp, om in offsets.items()})

    async def offsets_for_times(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        self.times_asked = dict(timestamps)
        return {tp: self.times.get(tp) for tp in timestamps}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}


class Harness:
    def __init__(self, handle: Callable[[list[ConsumerRecord]], Awaitable[None]] | None = None, **kwargs: Any) -> None:
        self.fake: FakeConsumer | None = None
        self.handled: list[list[ConsumerRecord]] = []
        self._user_handle = handle
        self.batch_done = asyncio.Event()

        def factory(**config: Any) -> FakeConsumer:
            self.fake = FakeConsumer(**config)
            self.prepare(self.fake)
            return self.fake

        self.prepare: Callable[[FakeConsumer], None] = lambda fake: None
        self.consumer = BatchConsumer(
            name="test",
            topics=[TOPIC],
            consumer_config={"group_id": "g", "bootstrap_servers": "unused"},
            handle=self._handle,
            consumer_factory=factory,
            **kwargs,
        )

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        if self._user_handle is not None:
            await self._user_handle(records)
        self.handled.append(list(records))
        self.batch_done.set()

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.consumer.run())

    async def until(self, check: Callable[[], bool], polls: int = 10_000) -> None:
        for _ in range(polls):
            if check():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition never met")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """A scenario that would wait for ever fails instead (the fakes never wait on real time)."""
    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def offsets_of(batch: list[ConsumerRecord]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in batch]


# ---- batch_offsets (pure) ------------------------------------------------------------------------


def test_batch_offsets_is_one_past_the_highest_offset_per_partition() -> None:
    records = [record(P0, 4), record(P1, 9), record(P0, 2), record(P0, 7)]
    assert batch_offsets(records) == {P0: 8, P1: 10}
    assert batch_offsets([]) == {}


# ---- commits follow the handler ------------------------------------------------------------------


def test_offsets_are_committed_only_after_handle_returns() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        entered = asyncio.Event()
        commits_seen_in_handle: list[list[dict[TopicPartition, int]]] = []

        async def handle(records: list[ConsumerRecord]) -> None:
            entered.set()
            commits_seen_in_handle.append(list(h.fake.commits))  # type: ignore[union-attr]
            await gate.wait()

        h = Harness(handle)

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0, P1]
            fake.produce(P0, 3)
            fake.produce(P1, 2)

        h.prepare = prepare
        task = h.start()
        await entered.wait()
        fake = h.fake
        assert fake is not None
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.commits == []  # the handler has not returned yet
        gate.set()
        await h.batch_done.wait()
        await h.until(lambda: bool(fake.commits))
        assert fake.commits == [{P0: 3, P1: 2}]
        assert commits_seen_in_handle == [[]]
        await h.consumer.stopping.stop()
        await task
        assert fake.stopped
        assert offsets_of(h.handled[0]) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]

    run(scenario)


def test_each_batch_is_committed_before_the_next_is_handled() -> None:
    async def scenario() -> None:
        h = Harness(max_records=2)
        commits_before: list[list[dict[TopicPartition, int]]] = []

        async def handle(records: list[ConsumerRecord]) -> None:
            commits_before.append(list(h.fake.commits))  # type: ignore[union-attr]

        h._user_handle = handle

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0]
            fake.produce(P0, 5)

        h.prepare = prepare
        task = h.start()
        await h.until(lambda: h.fake is not None and len(h.fake.commits) == 3)
        await h.consumer.stopping.stop()
        await task
        assert [offsets_of(b) for b in h.handled] == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)]]
        assert h.fake.commits == [{P0: 2}, {P0: 4}, {P0: 5}]
        assert commits_before == [[], [{P0: 2}], [{P0: 2}, {P0: 4}]]

    run(scenario)


def test_a_handle_that_raises_commits_nothing_and_stops_the_consumer() -> None:
    async def scenario() -> None:
        async def handle(records: list[ConsumerRecord]) -> None:
            raise ValueError("CRM exploded")

        h = Harness(handle)

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0]
            fake.produce(P0, 3)

        h.prepare = prepare
        with pytest.raises(ValueError, match="CRM exploded"):
            await h.consumer.run()
        assert h.fake is not None
        assert h.fake.commits == []
        assert h.fake.committed_offsets == {}
        assert h.fake.stopped
        assert not h.consumer.running
        await asyncio.wait_for(h.consumer.stopping.stop(), 1.0)  # already exited: returns at once

    run(scenario)


def test_a_failed_commit_is_logged_and_the_consumer_goes_on() -> None:
    async def scenario() -> None:
        h = Harness()

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0]
            fake.produce(P0, 1)
            fake.fail_commits = 1

        h.prepare = prepare
        task = h.start()
        await h.batch_done.wait()
        fake = h.fake
        assert fake is not None
        await h.until(lambda: fake.fail_commits == 0)
        assert fake.commits == []
        h.batch_done.clear()
        fake.produce(P0, 1)
        await h.batch_done.wait()
        await h.until(lambda: bool(fake.commits))
        await h.consumer.stopping.stop()
        await task
        assert fake.commits == [{P0: 2}]

    run(scenario)


# ---- rebalances ----------------------------------------------------------------------------------


def test_a_batch_read_before_a_rebalance_is_dropped_and_read_again_from_the_commit() -> None:
    async def scenario() -> None:
        hooks_called: list[list[TopicPartition]] = []

        async def on_assigned(partitions: Any) -> None:
            hooks_called.append(list(partitions))

        h = Harness(on_assigned=on_assigned)

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0, P1]
            fake.produce(P0, 2)
            fake.produce(P1, 2)
            fake.committed_offsets = {P0: 0, P1: 1}
            fake.position = {P0: 0, P1: 1}

            async def on_poll(n: int) -> None:
                if n == 1:  # the first read is already taken: now the group rebalances
                    fake.on_poll = None
                    await fake.rebalance([P0])  # P1 goes to another worker

            fake.on_poll = on_poll

        h.prepare = prepare
        task = h.start()
        await h.batch_done.wait()
        fake = h.fake
        assert fake is not None
        await h.until(lambda: bool(fake.commits))
        await h.consumer.stopping.stop()
        await task
        # The first read (P0 0-1, P1 1) was never handled; P0 was sought back to its commit, P1 is not ours.
        assert fake.seeks == [(P0, 0)]
        assert len(h.handled) == 1
        assert offsets_of(h.handled[0]) == [(0, 0), (0, 1)]
        assert fake.commits == [{P0: 2}]
        assert fake.committed_offsets[P1] == 1  # untouched: the next owner reads it from there
        assert hooks_called == [[P0, P1], [P0]]

    run(scenario)


def test_a_dropped_batch_is_re_read_from_the_commit_even_when_it_started_later() -> None:
    """The seek goes to min(first offset read, committed): never past a record not yet handled."""

    async def scenario() -> None:
        h = Harness(max_records=1)

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0]
            fake.produce(P0, 3)
            fake.committed_offsets = {P0: 0}
            fake.position = {P0: 1}  # prefetch had moved on (e.g. a batch lost in an earlier drop)

            async def on_poll(n: int) -> None:
                if n == 1:
                    fake.on_poll = None
                    await fake.rebalance([P0])

            fake.on_poll = on_poll

        h.prepare = prepare
        task = h.start()
        await h.until(lambda: h.fake is not None and h.fake.committed_offsets.get(P0) == 3)
        await h.consumer.stopping.stop()
        await task
        assert h.fake.seeks == [(P0, 0)]
        assert [offsets_of(b) for b in h.handled] == [[(0, 0)], [(0, 1)], [(0, 2)]]

    run(scenario)


def test_a_revoke_waits_for_the_batch_under_way_and_its_commit() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        entered = asyncio.Event()

        async def handle(records: list[ConsumerRecord]) -> None:
            entered.set()
            await gate.wait()

        h = Harness(handle)

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0]
            fake.produce(P0, 2)

        h.prepare = prepare
        task = h.start()
        await entered.wait()
        fake = h.fake
        assert fake is not None
        revoke = asyncio.create_task(fake.listener.on_partitions_revoked([P0]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not revoke.done()
        gate.set()
        await revoke
        assert fake.commits == [{P0: 2}]  # committed before the revoke returned
        await h.consumer.stopping.stop()
        await task

    run(scenario)


# ---- a new group starts at its lookback -----------------------------------------------------------


def test_a_new_group_starts_its_partitions_at_the_lookback_and_commits_that_start() -> None:
    async def scenario() -> None:
        fake = FakeConsumer()
        fake.times = {P0: OffsetAndTimestamp(42, 1_799_999_000_000)}  # P2: nothing that recent
        fake.ends = {P0: 100, P1: 300, P2: 55}
        await start_new_partitions(fake, [P0, P1, P2], since_s=1_799_996_400.0, name="test")  # type: ignore[arg-type]
        assert fake.times_asked == {P0: 1_799_996_400_000, P1: 1_799_996_400_000, P2: 1_799_996_400_000}
        assert sorted(fake.seeks) == [(P0, 42), (P1, 300), (P2, 55)]
        assert fake.commits[-1] == {P0: 42, P1: 300, P2: 55}  # never "new" again

    run(scenario)


def test_in_an_existing_group_a_partition_without_a_commit_starts_at_its_beginning() -> None:
    """Its first records may have come while every worker was down: skipping them would lose them."""
    async def scenario() -> None:
        fake = FakeConsumer()
        fake.committed_offsets = {P1: 7}
        fake.beginnings = {P0: 3, P2: 0}
        fake.ends = {P0: 100, P1: 300, P2: 55}
        await start_new_partitions(fake, [P0, P2], since_s=1_799_996_400.0, name="test")  # type: ignore[arg-type]
        assert fake.times_asked is None
        assert sorted(fake.seeks) == [(P0, 3), (P2, 0)]
        assert fake.commits[-1] == {P0: 3, P2: 0}

    run(scenario)


def test_start_new_partitions_does_nothing_when_every_partition_has_a_commit() -> None:
    async def scenario() -> None:
        fake = FakeConsumer()
        fake.committed_offsets = {P0: 1, P1: 0}
        await start_new_partitions(fake, [P0, P1], since_s=1.0, name="test")  # type: ignore[arg-type]
        assert fake.seeks == []
        assert fake.times_asked is None

    run(scenario)


def test_a_new_group_starts_at_the_lookback_from_the_injected_clock() -> None:
    async def scenario() -> None:
        h = Harness(new_group_lookback_seconds=3_600.0, clock=lambda: 1_800_000_000.0)

        def prepare(fake: FakeConsumer) -> None:
            fake.produce(P0, 50)
            fake.produce(P1, 10)
            fake.produce(P2, 5)
            fake.times = {P0: OffsetAndTimestamp(47, 1_799_996_500_000), P1: OffsetAndTimestamp(8, 1_799_996_400_000), P2: None}
            fake.ends = {P0: 50, P1: 10, P2: 5}
            fake.assign_on_start = [P0, P1, P2]

        h.prepare = prepare
        task = h.start()
        fake_ready = lambda: h.fake is not None and h.fake.committed_offsets.get(P0) == 50 and h.fake.committed_offsets.get(P1) == 10  # noqa: E731
        await h.until(fake_ready)
        await h.consumer.stopping.stop()
        await task
        fake = h.fake
        assert fake is not None
        assert fake.times_asked == {P0: 1_799_996_400_000, P1: 1_799_996_400_000, P2: 1_799_996_400_000}
        handled = sorted(pair for batch in h.handled for pair in offsets_of(batch))
        # From the lookback's offsets; P2 from its end (nothing that recent), committed at once.
        assert handled == [(0, 47), (0, 48), (0, 49), (1, 8), (1, 9)]
        assert fake.committed_offsets[P2] == 5

    run(scenario)


def test_without_a_lookback_new_partitions_are_not_sought() -> None:
    async def scenario() -> None:
        h = Harness()

        def prepare(fake: FakeConsumer) -> None:
            fake.produce(P0, 2)
            fake.assign_on_start = [P0]

        h.prepare = prepare
        task = h.start()
        await h.until(lambda: h.fake is not None and bool(h.fake.commits))
        await h.consumer.stopping.stop()
        await task
        assert h.fake.seeks == []
        assert h.fake.times_asked is None

    run(scenario)


def test_two_workers_joining_a_new_group_in_one_generation_both_start_at_the_lookback() -> None:
    """The second sees the first one's start commit: it must not take the group for an old one
    and replay its partitions from the beginning."""

    async def scenario() -> None:
        fake = FakeConsumer()
        fake.ends = {P0: 100, P1: 300, P2: 55}
        fake.times = {P0: OffsetAndTimestamp(42, 1_799_999_000_000), P1: OffsetAndTimestamp(290, 1_799_999_000_000)}
        await start_new_partitions(fake, [P0], since_s=1_799_996_400.0, name="first")  # type: ignore[arg-type]
        fake.times_asked = None
        await start_new_partitions(fake, [P1, P2], since_s=1_799_996_401.0, name="second")  # type: ignore[arg-type]
        # The second starts at the first one's birth, by timestamp, not at the beginning.
        assert fake.times_asked == {P1: 1_799_996_400_000, P2: 1_799_996_400_000}
        assert fake.committed_offsets == {P0: 42, P1: 290, P2: 55}

    run(scenario)


def test_a_partition_added_to_an_existing_group_starts_at_the_groups_birth() -> None:
    """Records that arrived on it while every worker was down are read: the birth is long ago."""

    async def scenario() -> None:
        fake = FakeConsumer()
        fake.committed_offsets = {P0: 70}
        fake.metadata = {P0: "born=1000"}
        fake.ends = {P1: 9}
        fake.times = {P1: OffsetAndTimestamp(0, 5_000)}
        metadata = await start_new_partitions(fake, [P0, P1], since_s=1_799_996_400.0, name="test")  # type: ignore[arg-type]
        assert metadata == "born=1000"
        assert fake.times_asked == {P1: 1000}
        assert fake.seeks == [(P1, 0)]

    run(scenario)


def test_every_commit_carries_the_groups_birth_stamp() -> None:
    async def scenario() -> None:
        h = Harness(new_group_lookback_seconds=600.0, clock=lambda: 1_800_000_000.0)

        def prepare(fake: FakeConsumer) -> None:
            fake.produce(P0, 3)
            fake.times = {P0: OffsetAndTimestamp(1, 1_799_999_500_000)}
            fake.ends = {P0: 3}
            fake.assign_on_start = [P0]

        h.prepare = prepare
        task = h.start()
        await h.until(lambda: h.fake is not None and h.fake.committed_offsets.get(P0) == 3)
        await h.consumer.stopping.stop()
        await task
        assert h.fake.metadata == {P0: "born=1799999400000"}

    run(scenario)


# ---- no handling before the assignment is settled (the ledger read to its end) --------------------


class ReadFailed(TimeoutError):
    pass


def test_a_failed_assignment_hook_means_not_running_and_nothing_handled_until_it_succeeds() -> None:
    """aiokafka only logs an exception raised in `on_partitions_assigned`: the partition would run
    on a partial ledger. Here it stays paused, the stage is not ready, and the hook is tried again."""

    async def scenario() -> None:
        failures = 2
        calls: list[list[TopicPartition]] = []
        running_seen: list[bool] = []

        async def on_assigned(partitions: Any) -> None:
            nonlocal failures
            calls.append(list(partitions))
            running_seen.append(h.consumer.running)
            if failures:
                failures -= 1
                raise ReadFailed("ledger not read to its end within 120s")

        h = Harness(on_assigned=on_assigned, load_retry=RetryPolicy(base=0.0, cap=0.0, max_elapsed=None))

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0]
            fake.produce(P0, 2)

        h.prepare = prepare
        task = h.start()
        await h.until(lambda: len(calls) >= 1)
        assert h.handled == []
        assert not h.consumer.running  # not ready while the ledger is unread
        await h.until(lambda: bool(h.handled))
        assert len(calls) == 3  # two failures, then the read that succeeded
        assert h.consumer.running
        await h.until(lambda: bool(h.fake and h.fake.commits))
        await h.consumer.stopping.stop()
        await task
        assert offsets_of(h.handled[0]) == [(0, 0), (0, 1)]
        assert not any(running_seen)

    run(scenario)


def test_a_hook_that_keeps_failing_never_lets_a_record_through() -> None:
    async def scenario() -> None:
        calls = 0

        async def on_assigned(partitions: Any) -> None:
            nonlocal calls
            calls += 1
            raise ReadFailed("watermark query timed out")

        h = Harness(on_assigned=on_assigned, load_retry=RetryPolicy(base=0.0, cap=0.0, max_elapsed=None))

        def prepare(fake: FakeConsumer) -> None:
            fake.assign_on_start = [P0, P1]
            fake.produce(P0, 2)
            fake.produce(P1, 2)

        h.prepare = prepare
        task = h.start()
        await h.until(lambda: calls >= 5)
        assert h.handled == []
        assert h.fake is not None and h.fake.commits == []
        assert not h.consumer.running
        await h.consumer.stopping.stop()
        await task

    run(scenario)


# ---- seeding from the earlier app id's group -------------------------------------------------------


def test_a_new_group_starts_where_the_earlier_app_ids_group_left_off() -> None:
    """Exactly past what the earlier group handled; a partition it never committed: the lookback."""

    async def scenario() -> None:
        earlier = FakeConsumer()
        earlier.committed_offsets = {P0: 17, P2: 4}
        asked: list[dict[str, Any]] = []

        def factory(**config: Any) -> FakeConsumer:
            asked.append(config)
            return earlier

        fake = FakeConsumer()
        fake.ends = {P0: 100, P1: 300, P2: 55}
        fake.times = {P0: OffsetAndTimestamp(42, 1), P1: OffsetAndTimestamp(290, 1), P2: OffsetAndTimestamp(50, 1)}
        ask = earlier_commits(factory, {"group_id": "new-app-delay", "bootstrap_servers": "b"}, "old-app-delay")  # type: ignore[arg-type]
        await start_new_partitions(fake, [P0, P1, P2], since_s=1_799_996_400.0, name="test", earlier=ask)  # type: ignore[arg-type]
        assert fake.committed_offsets == {P0: 17, P1: 290, P2: 4}
        assert asked == [{"group_id": "old-app-delay", "bootstrap_servers": "b"}]
        assert earlier.started and earlier.stopped and earlier.commits == []  # asked, never joined or committed

    run(scenario)


@pytest.mark.parametrize(
    ("previous", "group", "expected"),
    [
        (None, "crm-sync-b-delay", None),
        ("crm-sync-a", "crm-sync-b-delay", "crm-sync-a-delay"),
        ("crm-sync-a", "crm-sync-b-sink-salesforce", "crm-sync-a-sink-salesforce"),
        ("crm-sync-a", "someone-else", None),
    ],
)
def test_the_earlier_group_is_the_same_stage_under_the_previous_app_id(previous: str | None, group: str, expected: str | None) -> None:
    assert earlier_group(Config(app_id="crm-sync-b", previous_app_id=previous), group) == expected
