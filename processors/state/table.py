"""The one table abstraction: key → latest value of a topic, held in memory (compaction semantics:
the last record per key wins; a tombstone, value None, deletes).

- **Global** (`partitioned=False`): every worker holds every partition (the settings table).
- **Partitioned**: a worker holds only the partitions it owns and reads them back on every
  assignment (the sinks' ledgers); a partition is `ready` only once that read reached its end.

Entries may expire by age (`keep_ms`), which bounds memory to what the topic's retention keeps:
entries live in two generations; when the current one is `keep_ms / 2` old it becomes the previous
one and the old previous one is forgotten, so an entry is kept between `keep_ms / 2` and `keep_ms`.
Loading goes through the one read-to-end helper (`processors.kafka.read`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")
GLOBAL = -1  # the one "partition" of a global table


@dataclass
class Generations(Generic[V]):
    keep_ms: int | None
    rotated_at: int
    current: dict[str, V] = field(default_factory=dict)
    previous: dict[str, V] = field(default_factory=dict)

    def get(self, key: str, now_ms: int) -> V | None:
        self._maybe_rotate(now_ms)
        found = self.current.get(key)
        return found if found is not None else self.previous.get(key)

    def put(self, key: str, value: V, now_ms: int) -> None:
        self._maybe_rotate(now_ms)
        self.current[key] = value

    def delete(self, key: str) -> None:
        self.current.pop(key, None)
        self.previous.pop(key, None)

    def items(self, now_ms: int) -> Iterator[tuple[str, V]]:
        self._maybe_rotate(now_ms)
        yield from ((k, v) for k, v in self.previous.items() if k not in self.current)
        yield from self.current.items()

    def _maybe_rotate(self, now_ms: int) -> None:
        """Writes rotate too, so `current` only holds entries of the last `keep_ms / 2` before a
        rotation: after `keep_ms` without any access both generations are past it."""
        if self.keep_ms is None or now_ms - self.rotated_at < self.keep_ms // 2:
            return
        if now_ms - self.rotated_at >= self.keep_ms:
            self.previous, self.current = {}, {}
        else:
            self.previous, self.current = self.current, {}
        self.rotated_at = now_ms

    def size(self, now_ms: int) -> int:
        self._maybe_rotate(now_ms)
        return len(self.current) + sum(1 for k in self.previous if k not in self.current)


class Table(Generic[V]):
    """Not thread-safe by itself: the settings table guards it with a lock; a ledger lives in one loop."""

    def __init__(self, *, partitioned: bool, keep_ms: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.partitioned = partitioned
        self._keep_ms = keep_ms
        self._clock = clock
        self._parts: dict[int, Generations[V]] = {} if partitioned else {GLOBAL: self._new()}
        self._loaded: set[int] = set()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _new(self) -> Generations[V]:
        return Generations(self._keep_ms, self._now_ms())

    def _part(self, partition: int) -> Generations[V] | None:
        return self._parts.get(partition if self.partitioned else GLOBAL)

    def get(self, key: str, partition: int = GLOBAL) -> V | None:
        part = self._part(partition)
        return part.get(key, self._now_ms()) if part is not None else None

    def put(self, key: str, value: V | None, partition: int = GLOBAL) -> None:
        """Write one entry (None deletes it); a partitioned table creates the partition if needed."""
        part = self._part(partition)
        if part is None:
            part = self._parts[partition] = self._new()
        if value is None:
            part.delete(key)
        else:
            part.put(key, value, self._now_ms())

    def expired(self, at_ms: int) -> bool:
        """A record written at `at_ms` is too old to be loaded."""
        return self._keep_ms is not None and at_ms < self._now_ms() - self._keep_ms

    def items(self) -> Iterator[tuple[str, V]]:
        now = self._now_ms()
        for part in self._parts.values():
            yield from part.items(now)

    def held(self) -> set[int]:
        return set(self._parts) if self.partitioned else set()

    def hold(self, partitions: Iterable[int]) -> list[int]:
        """Keep exactly these partitions, each emptied to be read back anew; returns them.

        Every assignment reads its partitions back, even one this worker held before it: in
        between another owner may have written to it (this worker's session expired, or its
        stage restarted while the table lived on). Until `loaded` names a partition, it is not
        ready: a read that failed half-way leaves it so.
        """
        wanted = sorted(set(partitions))
        self._parts = {p: self._new() for p in wanted}
        self._loaded.clear()
        return wanted

    def loaded(self, partitions: Iterable[int]) -> None:
        """These partitions were read to their end (in the current `hold`)."""
        self._loaded.update(p for p in partitions if p in self._parts)

    def ready(self, partition: int) -> bool:
        """Read to its end since it was last assigned (a global table: always)."""
        return not self.partitioned or partition in self._loaded

    def __len__(self) -> int:
        now = self._now_ms()
        return sum(p.size(now) for p in self._parts.values())
