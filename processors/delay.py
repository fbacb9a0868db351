"""The durable delay: the delay topic itself is the store (SPEC §4).

Every action waits the same delay, so the delay topic holds actions nearly in due order. The
releaser reads each assigned partition a bounded distance ahead (`lookahead`), keeps what it read
in a heap by due time, releases what is due to the per-CRM due topics, and commits a partition only
up to its oldest action not yet released. A crash therefore loses nothing (the log is re-read from
the committed offset) and can only re-release, which the idempotent sinks absorb. Actions of a
paused company stay unreleased (and uncommitted) until it resumes; a disconnected company's are
dropped (rule 7).

`PartitionBuffer` is the pure bookkeeping; `DelayReleaser` is the thin aiokafka shell.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)


@dataclass(order=True)
class Held:
    due_at: int
    offset: int
    headers: dict[str, str] = field(compare=False)
    value: bytes = field(compare=False)

    @property
    def company_id(self) -> str:
        return self.headers.get("company_id", "")

    @property
    def crm(self) -> str:
        return self.headers.get("crm", "")

    @property
    def action_id(self) -> str:
        return self.headers.get("action_id", "")


@dataclass
class PartitionBuffer:
    """What one partition has read ahead and not yet released; decides the safe commit offset."""

    next_offset: int | None = None
    heap: list[Held] = field(default_factory=list)
    parked: dict[int, Held] = field(default_factory=dict)
    in_flight: set[int] = field(default_factory=set)
    last_due: int = 0

    def add(self, held: Held) -> None:
        heapq.heappush(self.heap, held)
        self.next_offset = held.offset + 1
        self.last_due = max(self.last_due, held.due_at)

    def pop_due(self, now_ms: int) -> list[Held]:
        out = []
        while self.heap and self.heap[0].due_at <= now_ms:
            held = heapq.heappop(self.heap)
            self.in_flight.add(held.offset)
            out.append(held)
        return out

    def park(self, held: Held) -> None:
        self.in_flight.discard(held.offset)
        self.parked[held.offset] = held

    def unpark(self, company_id: str) -> list[Held]:
        out = [h for h in self.parked.values() if h.company_id == company_id]
        for held in out:
            del self.parked[held.offset]
            self.in_flight.add(held.offset)
        return out

    def retry(self, held: Held) -> None:
        self.in_flight.discard(held.offset)
        heapq.heappush(self.heap, held)

    def done(self, offset: int) -> None:
        self.in_flight.discard(offset)

    def commit_offset(self) -> int | None:
        """The first offset still needed after a restart: everything before it is released."""
        if self.next_offset is None:
            return None
        pending = [h.offset for h in self.heap] + list(self.parked) + list(self.in_flight)
        return min(pending) if pending else self.next_offset

    def should_pause(self, now_ms: int, lookahead_ms: int, max_buffered: int) -> bool:
        return self.last_due > now_ms + lookahead_ms or len(self.heap) >= max_buffered

    @property
    def size(self) -> int:
        return len(self.heap) + len(self.parked) + len(self.in_flight)


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
        max_buffered: int = 200_000,
        consumer_options: dict | None = None,
        tick_seconds: float = 0.05,
    ) -> None:
        self._topic = topic
        self._decide = decide
        self._emit = emit
        self._on_dropped = on_dropped
        self._lookahead_ms = int(lookahead_seconds * 1000)
        self._max_buffered = max_buffered
        self._tick = tick_seconds
        self._buffers: dict[TopicPartition, PartitionBuffer] = {}
        self._resumed_companies: set[str] = set()
        self._stopping = False
        self._consumer_config = dict(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=300_000,
            **(consumer_options or {}),
        )

    @property
    def held(self) -> int:
        return sum(b.size for b in self._buffers.values())

    def company_resumed(self, company_id: str) -> None:
        """Thread-safe enough: only adds to a set the loop drains on its next tick."""
        self._resumed_companies.add(company_id)

    async def run(self) -> None:
        releaser = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                await releaser._commit()
                for tp in revoked:
                    releaser._buffers.pop(tp, None)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                for tp in assigned:
                    releaser._buffers.setdefault(tp, PartitionBuffer())

        self._consumer = AIOKafkaConsumer(**self._consumer_config)
        self._consumer.subscribe([self._topic], listener=Listener())
        await self._consumer.start()
        last_commit = time.monotonic()
        try:
            while not self._stopping:
                batches = await self._consumer.getmany(timeout_ms=int(self._tick * 1000), max_records=5000)
                for tp, records in batches.items():
                    buf = self._buffers.setdefault(tp, PartitionBuffer())
                    for rec in records:
                        headers = {name: value.decode() for name, value in rec.headers or ()}
                        buf.add(Held(int(headers.get("due_at", "0")), rec.offset, headers, rec.value))
                await self._release(int(time.time() * 1000))
                self._flow_control(int(time.time() * 1000))
                if time.monotonic() - last_commit >= 1.0:
                    await self._commit()
                    last_commit = time.monotonic()
        finally:
            try:
                await self._commit()
            finally:
                await self._consumer.stop()

    def stop(self) -> None:
        self._stopping = True

    def _flow_control(self, now_ms: int) -> None:
        assigned = self._consumer.assignment()
        paused = self._consumer.paused()
        for tp, buf in self._buffers.items():
            if tp not in assigned:
                continue
            want_pause = buf.should_pause(now_ms, self._lookahead_ms, self._max_buffered)
            if want_pause and tp not in paused:
                self._consumer.pause(tp)
            elif not want_pause and tp in paused:
                self._consumer.resume(tp)

    async def _release(self, now_ms: int) -> None:
        """Send everything due, then wait for the broker's acks before marking it released."""
        resumed, self._resumed_companies = self._resumed_companies, set()
        sent: list[tuple[PartitionBuffer, Held, Awaitable[object]]] = []
        for buf in list(self._buffers.values()):
            batch = buf.pop_due(now_ms)
            for company_id in resumed:
                batch += buf.unpark(company_id)
            for held in batch:
                decision = self._decide(held.company_id, held.crm)
                if decision == Release.PARK:
                    buf.park(held)
                elif decision == Release.DELIVER:
                    sent.append((buf, held, await self._emit(held)))
                else:
                    self._on_dropped(held)
                    buf.done(held.offset)
        for buf, held, ack in sent:
            try:
                await ack
            except Exception:
                log.warning("release not acknowledged; will send again", exc_info=True)
                buf.retry(held)
            else:
                buf.done(held.offset)

    async def _commit(self) -> None:
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
