"""The durable delay: the delay topic itself is the store (SPEC §4).

Every action waits the same delay, so the delay topic holds actions nearly in due order. The
releaser reads each assigned partition a bounded distance ahead (`lookahead`, and at most
`max_buffered` actions per worker), keeps what it read in a heap by due time, releases what is due
to the per-CRM due topics, and commits a partition only up to its oldest action not yet released.
A crash therefore loses nothing (the log is re-read from the committed offset) and can only
re-release, which the idempotent sinks absorb. Actions of a paused company stay unreleased (and
uncommitted) and are decided again on every tick, per (company, CRM), so they go out on the first
tick after resume; a disconnected company's are dropped (rule 7). An action parked longer than
`repark_after` is copied to the end of the retry topic (then done here), so a long pause neither
holds a partition's commit back (a restart would replay all that came after it) nor outlives the
topic's retention; the retry topic's releaser parks the copy again, and so on until resume.

A releaser with a `horizon` (a retry tier) reads without a lookahead pause: everything its tier
holds waits in its buffer, and a record due beyond the horizon is handed to `forward` (the tier for
its wait) when read, then done here, so a wait far ahead never stalls a record due sooner.

A record that cannot be released (missing or bad headers: a bug or a foreign writer), or that
Kafka refuses for its size, is handed to `reject` (the dead-letter topic) and counts as done, so
it never stops the partition.

`processors.domain.release` is the pure bookkeeping; `DelayReleaser` is the thin aiokafka shell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from connectors.retry import RetryPolicy
from processors.domain.release import Held, PartitionBuffer, Release, per_partition_cap
from processors.kafka.consumer import Settling, StopSignal, earlier_commits
from processors.kafka.sender import RecordTooLarge

log = logging.getLogger(__name__)

# A due topic that does not acknowledge: try again soon, then less often (never give up: the
# actions stay unreleased and uncommitted meanwhile).
RESEND_POLICY = RetryPolicy(base=0.5, cap=10.0, max_elapsed=None)

Decide = Callable[[str, str], str]
Emit = Callable[[Held], Awaitable[Awaitable[object]]]
Reject = Callable[[int, Held, str], Awaitable[Awaitable[object]]]  # partition, record, reason


class DelayReleaser:
    """Runs in the worker's event loop; one consumer group, so each worker owns its partitions."""

    def __init__(
        self,
        *,
        topic: str,
        consumer_config: dict[str, Any],
        decide: Decide,
        emit: Emit,
        drop: Emit,
        reject: Reject,
        lookahead_seconds: float,
        repark: Emit | None = None,
        repark_after_seconds: float = 3600.0,
        forward: Emit | None = None,
        horizon_seconds: float | None = None,
        max_buffered: int = 100_000,
        tick_seconds: float = 0.05,
        resend_policy: RetryPolicy = RESEND_POLICY,
        clock: Callable[[], float] = time.time,
        consumer_factory: Callable[..., AIOKafkaConsumer] = AIOKafkaConsumer,
        new_group_lookback_seconds: float | None = None,
        earlier_group_id: str | None = None,
    ) -> None:
        self._topic = topic
        self.topics = (topic,)
        self.group_id = consumer_config["group_id"]
        self.name = f"releaser-{topic}"
        self._decide = decide
        self._emit = emit
        self._drop = drop
        self._reject = reject
        self._repark = repark
        self._forward = forward
        self._horizon_ms = int(horizon_seconds * 1000) if horizon_seconds is not None and forward is not None else None
        self._repark_after_ms = int(repark_after_seconds * 1000)
        # Looking for long-parked actions walks every parked one: a tenth of the repark time is often enough.
        self._repark_scan_every = min(60.0, repark_after_seconds / 10)
        self._next_repark_scan = 0.0
        self._lookahead_ms = int(lookahead_seconds * 1000)
        self._max_buffered = max_buffered
        self._tick = tick_seconds
        self._resend_policy = resend_policy
        self._failed_rounds = 0
        self._clock = clock
        self._consumer_factory = consumer_factory
        self._buffers: dict[TopicPartition, PartitionBuffer] = {}
        self._sending: list[Awaitable[object]] = []
        self._release_after = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._active = False
        # A release pass and a revoke never interleave: the revoke waits for the pass (and its
        # sends) to finish, so the next owner does not release the same actions again.
        self._pass = asyncio.Lock()
        self.stopping = StopSignal()
        self._consumer_config = consumer_config
        # A brand-new group starts at its lookback, not at the topic's beginning (`Settling`).
        earlier = earlier_commits(consumer_factory, consumer_config, earlier_group_id) if earlier_group_id else None
        self._settling = Settling(self.name, lookback_seconds=new_group_lookback_seconds, clock=clock, earlier=earlier)

    @property
    def running(self) -> bool:
        """Joined its group, its assignment settled, and releasing (what readiness asks)."""
        return self._active and self._settling.settled

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    @property
    def held(self) -> int:
        return sum(b.size for b in self._buffers.values())

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def run(self) -> None:
        releaser = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                async with releaser._pass:
                    await releaser._settle_sends()
                    await releaser._commit()
                    for tp in revoked:
                        releaser._buffers.pop(tp, None)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                async with releaser._pass:
                    for tp in assigned:
                        releaser._buffers[tp] = PartitionBuffer()
                    await releaser._settling.assigned(consumer, assigned)

        self._buffers = {}
        self._settling.reset()
        self.stopping.started()
        consumer = self._consumer = self._consumer_factory(**self._consumer_config)
        last_commit = time.monotonic()
        try:
            consumer.subscribe([self._topic], listener=Listener())
            await consumer.start()
            self._active = True
            while not self.stopping.requested:
                if self._settling.due():
                    async with self._pass:
                        await self._settling.again(consumer)
                # Polling goes on while every partition is paused: that keeps max.poll.interval.
                batches = await consumer.getmany(timeout_ms=int(self._tick * 1000), max_records=5000)
                read_at = self._now_ms()
                for tp, records in batches.items():
                    buf = self._buffers.get(tp)
                    if buf is None:
                        continue
                    for rec in records:
                        buf.add(Held.of(rec.offset, rec.headers, rec.value, read_at), read_at, self._horizon_ms)
                async with self._pass:
                    await self._release(self._now_ms())
                self._flow_control(self._now_ms())
                if time.monotonic() - last_commit >= 1.0:
                    await self._commit()
                    last_commit = time.monotonic()
        finally:
            self._active = False
            try:
                await self._settle_sends()
                await self._commit()
            finally:
                try:
                    await consumer.stop()
                finally:
                    self.stopping.exited()

    def _flow_control(self, now_ms: int) -> None:
        assert self._consumer is not None
        if not self._settling.settled:
            return  # its partitions stay paused until started
        assigned = self._consumer.assignment()
        paused = self._consumer.paused()
        cap = per_partition_cap(self._max_buffered, len(assigned))
        for tp, buf in self._buffers.items():
            if tp not in assigned:
                continue
            want_pause = buf.should_pause(now_ms, self._lookahead_ms, cap)
            if want_pause and tp not in paused:
                self._consumer.pause(tp)
            elif not want_pause and tp in paused:
                self._consumer.resume(tp)

    async def _release(self, now_ms: int) -> None:
        """Send everything due, then wait for the broker's acks before marking it released.

        A failed send puts the action back in the heap and holds releases for a backoff, so a
        due-topic outage neither loses actions nor spins.
        """
        if time.monotonic() < self._release_after:
            return
        # (buffer, action, ack, what to do with the action if its send fails)
        sent: list[tuple[PartitionBuffer, Held, Awaitable[object], Callable[[Held], None]]] = []
        failed = 0

        async def send(
            buf: PartitionBuffer, held: Held, via: Emit, undo: Callable[[Held], None], partition: int, rejecting: bool = False
        ) -> None:
            nonlocal failed
            try:
                ack = await via(held)
            except RecordTooLarge as exc:
                if not rejecting:  # never sendable: a dead letter (bounded, with the offset), not a retry loop
                    await send(buf, held, lambda h, why=str(exc): self._reject(partition, h, why), buf.retry, partition, True)
                    return
                failed += 1
                undo(held)
                return
            except Exception:
                failed += 1
                undo(held)
                return
            sent.append((buf, held, ack, undo))
            self._sending.append(ack)

        repark = self._repark if time.monotonic() >= self._next_repark_scan else None
        if repark is not None:
            self._next_repark_scan = time.monotonic() + self._repark_scan_every
        for tp, buf in list(self._buffers.items()):
            if tp not in self._buffers:
                continue
            p = tp.partition
            if self._forward is not None:  # only a releaser with a forward sets records aside
                for held in buf.pop_forwarding():
                    await send(buf, held, self._forward, buf.reforward, p)
            batch = buf.pop_due(now_ms)
            for company_id, crm in buf.parked_groups():
                if self._decide(company_id, crm) != Release.PARK:
                    batch += buf.unpark(company_id, crm)
            for held in batch:
                problem = held.problem(now_ms)
                if problem is not None:
                    await send(buf, held, lambda h, why=problem, p=p: self._reject(p, h, why), buf.retry, p, True)
                    continue
                decision = self._decide(held.company_id, held.crm)
                if decision == Release.PARK:
                    buf.park(held, now_ms)
                elif decision == Release.DROP:
                    await send(buf, held, self._drop, buf.retry, p)
                else:
                    await send(buf, held, self._emit, buf.retry, p)
            if repark is not None:
                for held in buf.stale_parked(now_ms, self._repark_after_ms):
                    await send(buf, held, repark, lambda h, buf=buf: buf.park(h, now_ms), p)
        for buf, held, ack, undo in sent:
            try:
                await ack
            except Exception:
                failed += 1
                undo(held)
            else:
                buf.done(held.offset)
        self._sending = []
        if not failed:
            self._failed_rounds = 0
            return
        self._failed_rounds += 1
        wait = self._resend_policy.backoff(self._failed_rounds)
        log.warning("releases not sent or not acknowledged; retrying", extra={"failed": failed, "retry_in": round(wait, 2)})
        self._release_after = time.monotonic() + wait

    async def _settle_sends(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _commit(self) -> None:
        assert self._consumer is not None
        offsets = {}
        for tp, buf in self._buffers.items():
            offset = buf.commit_offset()
            if offset is not None:
                offsets[tp] = OffsetAndMetadata(offset, self._settling.metadata)
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except Exception:
                log.warning("delay commit failed; will retry", exc_info=True)
