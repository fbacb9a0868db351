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

`PartitionBuffer` is the pure bookkeeping; `DelayReleaser` is the thin aiokafka shell.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from processors.batch_consumer import StopSignal, group_consumer_config

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


@dataclass(order=True, slots=True)
class Held:
    """One read-ahead action. Headers stay as read (no per-record dict) to keep the buffer small."""

    due_at: int
    offset: int
    headers: Headers = field(compare=False)
    value: bytes = field(compare=False)
    parked_at: int = field(default=0, compare=False)

    @classmethod
    def of(cls, offset: int, headers: Headers | None, value: bytes) -> "Held":
        held = cls(0, offset, tuple(headers or ()), value)
        due = held.header("due_at")
        held.due_at = int(due) if due.isdigit() else 0
        return held

    def header(self, name: str) -> str:
        for key, raw in self.headers:
            if key == name:
                return raw.decode()
        return ""

    @property
    def company_id(self) -> str:
        return self.header("company_id")

    @property
    def crm(self) -> str:
        return self.header("crm")

    @property
    def action_id(self) -> str:
        return self.header("action_id")


@dataclass
class PartitionBuffer:
    """What one partition has read ahead and not yet released; decides the safe commit offset."""

    next_offset: int | None = None
    heap: list[Held] = field(default_factory=list)
    parked: dict[tuple[str, str], dict[int, Held]] = field(default_factory=dict)
    in_flight: dict[int, Held] = field(default_factory=dict)
    last_due: int = 0

    def add(self, held: Held) -> None:
        heapq.heappush(self.heap, held)
        self.next_offset = held.offset + 1
        self.last_due = max(self.last_due, held.due_at)

    def pop_due(self, now_ms: int) -> list[Held]:
        out = []
        while self.heap and self.heap[0].due_at <= now_ms:
            held = heapq.heappop(self.heap)
            self.in_flight[held.offset] = held
            out.append(held)
        return out

    def park(self, held: Held, now_ms: int) -> None:
        """Held back by a pause; `parked_at` stays the first time, across re-decisions."""
        self.in_flight.pop(held.offset, None)
        held.parked_at = held.parked_at or now_ms
        self.parked.setdefault((held.company_id, held.crm), {})[held.offset] = held

    def stale_parked(self, now_ms: int, after_ms: int) -> list[Held]:
        """Parked longer than `after_ms`: in flight until copied to the end of the log (then `done`)."""
        out = []
        for group_key in list(self.parked):
            group = self.parked[group_key]
            for offset, held in list(group.items()):
                if now_ms - held.parked_at >= after_ms:
                    del group[offset]
                    self.in_flight[offset] = held
                    out.append(held)
            if not group:
                del self.parked[group_key]
        return out

    def parked_groups(self) -> list[tuple[str, str]]:
        return list(self.parked)

    def unpark(self, company_id: str, crm: str) -> list[Held]:
        """Hand a (company, CRM) group back for a new decision; it is in flight until decided."""
        out = list(self.parked.pop((company_id, crm), {}).values())
        for held in out:
            self.in_flight[held.offset] = held
        return out

    def retry(self, held: Held) -> None:
        self.in_flight.pop(held.offset, None)
        heapq.heappush(self.heap, held)

    def done(self, offset: int) -> None:
        self.in_flight.pop(offset, None)

    def commit_offset(self) -> int | None:
        """The first offset still needed after a restart: everything before it is released."""
        if self.next_offset is None:
            return None
        return min(
            min((h.offset for h in self.heap), default=self.next_offset),
            min((min(group) for group in self.parked.values()), default=self.next_offset),
            min(self.in_flight, default=self.next_offset),
        )

    def should_pause(self, now_ms: int, lookahead_ms: int, max_buffered: int) -> bool:
        """Stop reading once the read position is a lookahead past now, or the buffer is full.

        Parked actions do not count: a long pause of one company must not stall the others'.
        """
        return self.last_due > now_ms + lookahead_ms or len(self.heap) + len(self.in_flight) >= max_buffered

    @property
    def size(self) -> int:
        return len(self.heap) + sum(len(g) for g in self.parked.values()) + len(self.in_flight)


def per_partition_cap(max_buffered: int, partitions: int) -> int:
    """The worker-wide read-ahead budget shared by its partitions (at least one action each)."""
    return max(1, max_buffered // max(1, partitions))


class Release:
    """What the releaser asks of the rest of the worker, for one held action."""

    DELIVER = "deliver"
    PARK = "park"
    DROP = "drop"


Decide = Callable[[str, str], str]
Emit = Callable[[Held], Awaitable[Awaitable[object]]]


class DelayReleaser:
    """Runs in the worker's event loop; one consumer group, so each worker owns its partitions."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        decide: Decide,
        emit: Emit,
        on_dropped: Callable[[Held], None],
        lookahead_seconds: float,
        repark: Emit | None = None,
        repark_after_seconds: float = 3600.0,
        max_buffered: int = 100_000,
        consumer_options: dict | None = None,
        tick_seconds: float = 0.05,
        retry_backoff_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topic = topic
        self.name = f"releaser-{topic}"
        self._decide = decide
        self._emit = emit
        self._on_dropped = on_dropped
        self._repark = repark
        self._repark_after_ms = int(repark_after_seconds * 1000)
        # Looking for long-parked actions walks every parked one: a tenth of the repark time is often enough.
        self._repark_scan_every = min(60.0, repark_after_seconds / 10)
        self._next_repark_scan = 0.0
        self._lookahead_ms = int(lookahead_seconds * 1000)
        self._max_buffered = max_buffered
        self._tick = tick_seconds
        self._retry_backoff = retry_backoff_seconds
        self._clock = clock
        self._buffers: dict[TopicPartition, PartitionBuffer] = {}
        self._sending: list[Awaitable[object]] = []
        self._release_after = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self.stopping = StopSignal()
        self._consumer_config = group_consumer_config(bootstrap_servers, group_id, consumer_options)

    @property
    def held(self) -> int:
        return sum(b.size for b in self._buffers.values())

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def run(self) -> None:
        releaser = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                # Let sends already under way finish, so the next owner does not release them again.
                await releaser._settle_sends()
                await releaser._commit()
                for tp in revoked:
                    releaser._buffers.pop(tp, None)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                for tp in assigned:
                    releaser._buffers[tp] = PartitionBuffer()

        self._buffers = {}
        self.stopping.started()
        consumer = self._consumer = AIOKafkaConsumer(**self._consumer_config)
        last_commit = time.monotonic()
        try:
            consumer.subscribe([self._topic], listener=Listener())
            await consumer.start()
            while not self.stopping.requested:
                # Polling goes on while every partition is paused: that keeps max.poll.interval.
                batches = await consumer.getmany(timeout_ms=int(self._tick * 1000), max_records=5000)
                for tp, records in batches.items():
                    buf = self._buffers.get(tp)
                    if buf is None:
                        continue
                    for rec in records:
                        buf.add(Held.of(rec.offset, rec.headers, rec.value))
                await self._release(self._now_ms())
                self._flow_control(self._now_ms())
                if time.monotonic() - last_commit >= 1.0:
                    await self._commit()
                    last_commit = time.monotonic()
        finally:
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

        async def send(buf: PartitionBuffer, held: Held, via: Emit, undo: Callable[[Held], None]) -> None:
            nonlocal failed
            try:
                ack = await via(held)
            except Exception:
                failed += 1
                undo(held)
                return
            sent.append((buf, held, ack, undo))
            self._sending.append(ack)

        repark = self._repark if time.monotonic() >= self._next_repark_scan else None
        if repark is not None:
            self._next_repark_scan = time.monotonic() + self._repark_scan_every
        for buf in list(self._buffers.values()):
            batch = buf.pop_due(now_ms)
            for company_id, crm in buf.parked_groups():
                if self._decide(company_id, crm) != Release.PARK:
                    batch += buf.unpark(company_id, crm)
            for held in batch:
                decision = self._decide(held.company_id, held.crm)
                if decision == Release.PARK:
                    buf.park(held, now_ms)
                elif decision != Release.DELIVER:
                    self._on_dropped(held)
                    buf.done(held.offset)
                else:
                    await send(buf, held, self._emit, buf.retry)
            if repark is not None:
                for held in buf.stale_parked(now_ms, self._repark_after_ms):
                    await send(buf, held, repark, lambda h, buf=buf: buf.park(h, now_ms))
        for buf, held, ack, undo in sent:
            try:
                await ack
            except Exception:
                failed += 1
                undo(held)
            else:
                buf.done(held.offset)
        self._sending = []
        if failed:
            log.warning("%d releases not sent or not acknowledged; retrying in %.1fs", failed, self._retry_backoff)
            self._release_after = time.monotonic() + self._retry_backoff

    async def _settle_sends(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _commit(self) -> None:
        assert self._consumer is not None
        offsets = {}
        for tp, buf in self._buffers.items():
            offset = buf.commit_offset()
            if offset is not None:
                offsets[tp] = OffsetAndMetadata(offset, "")
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except Exception:
                log.warning("delay commit failed; will retry", exc_info=True)
