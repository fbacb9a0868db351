"""Release bookkeeping of the delay store, pure: what one partition has read ahead, what is due,
what is parked by a pause, and the offset that is safe to commit (SPEC §4).

Every action waits the same delay, so the delay topic holds actions nearly in due order; the
releaser (`processors.kafka.releaser`) reads a bounded distance ahead into a `PartitionBuffer`
and commits a partition only up to its oldest action not yet released.

Retries wait anything from a second to a week, so they wait on retry tiers by wait length
(`RetryTier`): each tier's releaser keeps everything of its tier in its buffer, and a record
due beyond its tier's horizon (an old record, or a writer that picked the wrong tier) is
forwarded to the tier for its wait as soon as it is read. A wait far ahead therefore never
stops reading the partition, and never holds back a record due sooner.

The give-up clock counts only time the company was deliverable: an action released after a
pause has its clock moved on by the time it was parked (`resumed_clock`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Sequence

from processors.domain.model import Action, Crm

Headers = Sequence[tuple[str, bytes]]
CRMS = frozenset(c.value for c in Crm)
MAX_AHEAD_MS = 7 * 24 * 3600 * 1000  # the longest contact re-check: nothing legitimate is due later


@dataclass(frozen=True)
class RetryTier:
    """One retry topic and the longest wait it holds; `group` names its releaser's consumer group."""

    topic: str
    group: str
    max_wait_ms: int


def tier_for(wait_ms: int, tiers: Sequence[RetryTier]) -> RetryTier:
    """The first tier whose longest wait covers `wait_ms` (the last one for anything longer)."""
    for tier in tiers:
        if wait_ms <= tier.max_wait_ms:
            return tier
    return tiers[-1]


def resumed_clock(give_up_clock: int, parked_at: int, now_ms: int) -> int:
    """The give-up clock's new start once a parked action goes on: moved on by the time it was
    parked, so only deliverable time counts. Only parked time after the clock started counts, and
    a clock that went backwards moves nothing."""
    if parked_at <= 0:
        return give_up_clock
    return give_up_clock + max(0, now_ms - max(parked_at, give_up_clock))


def resume(action: Action, parked_at: int, now_ms: int) -> Action:
    """`action` with its give-up clock moved on past its parked time (older actions: from due_at)."""
    return replace(action, first_due_at=resumed_clock(action.give_up_clock, parked_at, now_ms))


@dataclass(order=True, slots=True)
class Held:
    """One read-ahead action. Headers stay as read (no per-record dict) to keep the buffer small."""

    due_at: int
    offset: int
    headers: Headers = field(compare=False)
    value: bytes = field(compare=False)
    parked_at: int = field(default=0, compare=False)

    @classmethod
    def of(cls, offset: int, headers: Headers | None, value: bytes, now_ms: int) -> "Held":
        """A due time absurdly far ahead would hold the partition's commit back forever: such a
        record is due at once, where `problem` rejects it."""
        held = cls(0, offset, tuple(headers or ()), value)
        due = held.header("due_at")
        held.due_at = int(due) if due.isdigit() and int(due) <= now_ms + MAX_AHEAD_MS else 0
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

    @property
    def late_from(self) -> int:
        """Where lateness counts from: the due time, or the planning time of an action that was
        already overdue when planned (a late event is not a late release)."""
        planned = self.header("planned_at")
        return max(self.due_at, int(planned)) if planned.isdigit() else self.due_at

    def problem(self, now_ms: int) -> str | None:
        """Why this record cannot be released (a bad internal record), or None."""
        if not self.header("due_at").isdigit():
            return "missing or malformed due_at header"
        if int(self.header("due_at")) > now_ms + MAX_AHEAD_MS:
            return "due_at is further ahead than any delay or backoff"
        if self.crm not in CRMS:
            return f"missing or unknown crm header: {self.crm!r}"
        if not self.company_id or not self.action_id:
            return "missing company_id or action_id header"
        if not self.value:
            return "record has no value"
        return None


@dataclass
class PartitionBuffer:
    """What one partition has read ahead and not yet released; decides the safe commit offset."""

    next_offset: int | None = None
    heap: list[Held] = field(default_factory=list)
    parked: dict[tuple[str, str], dict[int, Held]] = field(default_factory=dict)
    in_flight: dict[int, Held] = field(default_factory=dict)
    forwarding: dict[int, Held] = field(default_factory=dict)
    last_due: int = 0

    def add(self, held: Held, now_ms: int = 0, horizon_ms: int | None = None) -> None:
        """Hold `held` until due, or (due beyond `horizon_ms` from now) set it aside to forward."""
        self.next_offset = held.offset + 1
        if horizon_ms is not None and held.due_at > now_ms + horizon_ms:
            self.forwarding[held.offset] = held
            return
        heapq.heappush(self.heap, held)
        self.last_due = max(self.last_due, held.due_at)

    def pop_forwarding(self) -> list[Held]:
        """What waits beyond this topic's horizon: in flight until copied to a later tier (then `done`)."""
        out = list(self.forwarding.values())
        self.forwarding.clear()
        for held in out:
            self.in_flight[held.offset] = held
        return out

    def reforward(self, held: Held) -> None:
        self.in_flight.pop(held.offset, None)
        self.forwarding[held.offset] = held

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
            min(self.forwarding, default=self.next_offset),
        )

    def should_pause(self, now_ms: int, lookahead_ms: int, max_buffered: int) -> bool:
        """Stop reading once the read position is a lookahead past now, or the buffer is full.

        Parked actions do not count: a long pause of one company must not stall the others'.
        """
        return self.last_due > now_ms + lookahead_ms or len(self.heap) + len(self.in_flight) >= max_buffered

    @property
    def size(self) -> int:
        return len(self.heap) + sum(len(g) for g in self.parked.values()) + len(self.in_flight) + len(self.forwarding)


def per_partition_cap(max_buffered: int, partitions: int) -> int:
    """The worker-wide read-ahead budget shared by its partitions (at least one action each)."""
    return max(1, max_buffered // max(1, partitions))


class Release:
    """What the releaser asks of the rest of the worker, for one held action."""

    DELIVER = "deliver"
    PARK = "park"
    DROP = "drop"
