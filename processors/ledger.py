"""What a sink has already done per action id, so a re-released or re-read action is not created twice.

The ledger is a compacted topic per CRM, partitioned like that CRM's due topic: the entry for an
action read from due partition p is written to ledger partition p. A sink holds in memory the
entries of the partitions it owns, read back from the topic when they are assigned to it, and
writes each outcome there before the due offset is committed (`BatchConsumer`), so the next
owner of a partition knows everything its previous owner did.

Entries are kept `keep_ms` (default 7 days, longer than any re-release or deferral window): in
memory as two generations (`Generations`), on the broker by the topic's `retention.ms`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

Write = Callable[[int, bytes, bytes], Awaitable[Awaitable[Any]]]


@dataclass
class Generations:
    """Entries younger than `keep_ms / 2` are in `current`; a rotation moves them to `previous`."""

    keep_ms: int
    rotated_at: int
    current: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, now_ms: int) -> str | None:
        self._maybe_rotate(now_ms)
        found = self.current.get(key)
        return found if found is not None else self.previous.get(key)

    def put(self, key: str, value: str, now_ms: int) -> None:
        self._maybe_rotate(now_ms)
        self.current[key] = value

    def _maybe_rotate(self, now_ms: int) -> None:
        if now_ms - self.rotated_at >= self.keep_ms // 2:
            self.previous, self.current = self.current, {}
            self.rotated_at = now_ms

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)


class Ledger:
    def __init__(
        self,
        *,
        topic: str,
        write: Write,
        reader_options: dict[str, Any],
        keep_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self._write = write
        self._reader_options = reader_options
        self._keep_ms = keep_ms
        self._clock = clock
        self._parts: dict[int, Generations] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def get(self, partition: int, action_id: str) -> str | None:
        part = self._parts.get(partition)
        return part.get(action_id, self._now_ms()) if part is not None else None

    async def put(self, partition: int, action_id: str, value: str) -> Awaitable[Any]:
        """Known at once to this worker; durable when the returned ack resolves."""
        now = self._now_ms()
        self._parts.setdefault(partition, Generations(self._keep_ms, now)).put(action_id, value, now)
        return await self._write(partition, action_id.encode(), value.encode())

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts.values())

    async def hold(self, partitions: Iterable[int]) -> None:
        """Keep exactly these partitions: forget the others, read back the ones not held yet.

        A partition held before a rebalance and assigned again after it had no other owner in
        between (every owner gives up its partitions before any is assigned), so it is kept as is.
        """
        wanted = set(partitions)
        for p in set(self._parts) - wanted:
            del self._parts[p]
        missing = sorted(wanted - set(self._parts))
        if missing:
            for p, part in (await self._read(missing)).items():
                self._parts[p] = part

    async def _read(self, partitions: list[int]) -> dict[int, Generations]:
        consumer = AIOKafkaConsumer(enable_auto_commit=False, isolation_level="read_committed", **self._reader_options)
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            now = self._now_ms()
            parts = {p: Generations(self._keep_ms, now) for p in partitions}
            oldest = now - self._keep_ms
            remaining = {tp for tp in tps if end[tp] > 0}
            while remaining:
                for tp, records in (await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)).items():
                    part = parts[tp.partition]
                    for rec in records:
                        if rec.key is not None and rec.value is not None and rec.timestamp >= oldest:
                            part.current[rec.key.decode()] = rec.value.decode()
                remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
            return parts
        finally:
            await consumer.stop()
