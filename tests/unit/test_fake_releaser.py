"""`DelayReleaser` through a fake aiokafka consumer and a fake clock: releases at the due time and
not before, the broker's ack before an action counts as done, commits only up to the oldest
unreleased action, paused companies parked until resume, drops, rejects of bad internal records
(without stopping the partition), resends of failed emits, and revokes waiting for sends in flight.

The releaser reads `time.monotonic()` for its commit interval and resend backoff; the tests swap
the module's `time` for the fake clock, so nothing here waits real seconds.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, Callable

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

import processors.kafka.releaser as releaser_module
from processors.domain.model import Crm
from processors.domain.release import Held, Release
from processors.kafka.releaser import DelayReleaser

TOPIC = "delay"
TP0 = TopicPartition(TOPIC, 0)
TP1 = TopicPartition(TOPIC, 1)
START_S = 1_800_000_000.0
START_MS = int(START_S * 1000)
DELAY_MS = 10 * 60_000


class Clock:
    """The injected wall clock (`clock=`) and the monotonic clock the releaser's `time` module gives."""

    def __init__(self) -> None:
        self.wall = START_S
        self.mono = 1_000.0

    def __call__(self) -> float:
        return self.wall

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def at_ms(self, ms: int) -> None:
        self.wall = ms / 1000

    def tick_monotonic(self, seconds: float) -> None:
        self.mono += seconds


class FakeConsumer:
    """The few AIOKafkaConsumer methods the releaser calls. `getmany` returns what the test
    queued for assigned, unpaused partitions and counts the loop's rounds."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.listener: Any = None
        self.topics: list[str] = []
        self.assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self.queued: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.pauses: list[TopicPartition] = []
        self.resumes: list[TopicPartition] = []
        self.polls = 0
        self.started = False
        self.stopped = False
        self._next_offset: dict[TopicPartition, int] = {}

    # test side
    def produce(self, tp: TopicPartition, headers: dict[str, str] | list[tuple[str, bytes]], value: bytes = b"action") -> int:
        offset = self._next_offset.get(tp, 0)
        self._next_offset[tp] = offset + 1
        raw = list(headers) if isinstance(headers, list) else [(k, v.encode()) for k, v in headers.items()]
        self.queued.setdefault(tp, []).append(
            ConsumerRecord(
                topic=tp.topic, partition=tp.partition, offset=offset, timestamp=0, timestamp_type=0, key=None,
                value=value, checksum=None, serialized_key_size=0, serialized_value_size=len(value), headers=raw,
            )
        )
        return offset

    @property
    def last_commit(self) -> dict[TopicPartition, int] | None:
        return self.commits[-1] if self.commits else None

    # aiokafka side
    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.topics = list(topics)
        self.listener = listener

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.polls += 1
        await asyncio.sleep(0)
        out = {}
        for tp in sorted(self.assigned):
            if tp in self._paused or not self.queued.get(tp):
                continue
            out[tp] = self.queued.pop(tp)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)
        self.pauses.extend(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)
        self.resumes.extend(partitions)

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert all(isinstance(om, OffsetAndMetadata) for om in offsets.values())
        self.commits.append({tp: om.offset for tp, om in offsets.items()})


class NoWait:
    """A resend policy without waits (the real one draws a random backoff)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.asked: list[int] = []

    def backoff(self, attempt: int) -> float:
        self.asked.append(attempt)
        return self.seconds


def headers(offset_tag: str, *, due_at: int, company: str = "acme", crm: str = "salesforce") -> dict[str, str]:
    return {"due_at": str(due_at), "company_id": company, "crm": crm, "action_id": offset_tag, "event_id": f"evt-{offset_tag}"}


class Rig:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, resend: NoWait | None = None, lookahead_seconds: float = 60.0, **kwargs: Any) -> None:
        self.clock = Clock()
        monkeypatch.setattr(releaser_module, "time", types.SimpleNamespace(monotonic=self.clock.monotonic, time=self.clock.time))
        self.fake: FakeConsumer | None = None
        self.paused_companies: set[tuple[str, str]] = set()
        self.disconnected: set[tuple[str, str]] = set()
        self.decisions: list[tuple[str, str]] = []
        self.emitted: list[str] = []  # action ids, each time emit is called
        self.dropped: list[str] = []
        self.rejected: list[tuple[int, int, str]] = []  # partition, offset, reason
        self.fail_emits = 0  # the next n emits raise
        self.fail_acks = 0  # the next n acks fail
        self.hold_acks = False  # acks stay pending until the test resolves them
        self.emit_gates: dict[str, asyncio.Event] = {}  # emit of this action id waits for the event
        self.pending: list[asyncio.Future[None]] = []
        self.resend = resend or NoWait()
        self.task: asyncio.Task[None] | None = None
        self.releaser = DelayReleaser(
            topic=TOPIC,
            consumer_config={"group_id": "crm-sync-delay", "bootstrap_servers": "unused"},
            decide=self.decide,
            emit=self.emit,
            drop=self.drop,
            reject=self.reject,
            lookahead_seconds=lookahead_seconds,
            resend_policy=self.resend,  # type: ignore[arg-type]
            clock=self.clock,
            consumer_factory=self.factory,
            **kwargs,
        )

    def factory(self, **config: Any) -> FakeConsumer:
        self.fake = FakeConsumer(**config)
        return self.fake

    # the worker's side, as processors.stages.release wires it
    def decide(self, company_id: str, crm: str) -> str:
        Crm(crm)  # the real decide raises on an unknown CRM: a bad record must never get here
        self.decisions.append((company_id, crm))
        if (company_id, crm) in self.disconnected:
            return Release.DROP
        if (company_id, crm) in self.paused_companies:
            return Release.PARK
        return Release.DELIVER

    def _ack(self) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold_acks:
            self.pending.append(ack)
        elif self.fail_acks > 0:
            self.fail_acks -= 1
            ack.set_exception(RuntimeError("not acknowledged"))
        else:
            ack.set_result(None)
        return ack

    async def emit(self, held: Held) -> asyncio.Future[None]:
        self.emitted.append(held.action_id)
        gate = self.emit_gates.get(held.action_id)
        if gate is not None:
            await gate.wait()  # e.g. the producer's queue is full: send() itself waits
        if self.fail_emits > 0:
            self.fail_emits -= 1
            raise RuntimeError("due topic unavailable")
        return self._ack()

    async def drop(self, held: Held) -> asyncio.Future[None]:
        self.dropped.append(held.action_id)
        return self._ack()

    async def reject(self, partition: int, held: Held, reason: str) -> asyncio.Future[None]:
        self.rejected.append((partition, held.offset, reason))
        return self._ack()

    # driving the loop
    async def start(self, *partitions: TopicPartition) -> FakeConsumer:
        self.task = asyncio.create_task(self.releaser.run())
        while self.fake is None or not self.fake.started:
            await asyncio.sleep(0)
        self.fake.assigned = set(partitions or (TP0,))
        await self.fake.listener.on_partitions_assigned(sorted(self.fake.assigned))
        await self.rounds()
        return self.fake

    async def rounds(self, n: int = 2) -> None:
        """Let the loop go round `n` more times (what was queued before is read and decided)."""
        assert self.fake is not None and self.task is not None
        target = self.fake.polls + n
        for _ in range(100_000):
            if self.fake.polls >= target:
                return
            if self.task.done():
                self.task.result()  # the loop died: raise its error here
                raise AssertionError("the releaser loop exited")
            await asyncio.sleep(0)
        raise AssertionError("the releaser loop did not go round")

    async def until(self, check: Callable[[], bool]) -> None:
        for _ in range(100_000):
            if check():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition never met")

    async def yield_a_little(self, n: int = 50) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    async def commit_now(self) -> dict[TopicPartition, int] | None:
        """Pass the releaser's 1-second commit interval and let it commit."""
        assert self.fake is not None
        before = len(self.fake.commits)
        self.clock.tick_monotonic(1.0)
        await self.rounds()
        return self.fake.last_commit if len(self.fake.commits) > before else None

    async def stop(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.releaser.stopping.stop(), 5.0)
        await self.task


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10.0))


# ---- release at the due time --------------------------------------------------------------------


def test_nothing_is_released_before_it_is_due_and_everything_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        due = START_MS + DELAY_MS
        fake.produce(TP0, headers("a0", due_at=due))
        fake.produce(TP0, headers("a1", due_at=due + 5))
        await rig.rounds(3)
        assert rig.emitted == [] and rig.decisions == []
        assert rig.releaser.held == 2
        rig.clock.at_ms(due - 1)
        await rig.rounds()
        assert rig.emitted == []
        rig.clock.at_ms(due)
        await rig.rounds()
        assert rig.emitted == ["a0"]
        rig.clock.at_ms(due + 5)
        await rig.rounds()
        assert rig.emitted == ["a0", "a1"]
        assert rig.releaser.held == 0
        await rig.stop()
        assert fake.stopped
        assert fake.last_commit == {TP0: 2}

    run(scenario)


def test_due_actions_go_out_in_due_order_not_offset_order(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        for tag, due in (("late", 300), ("early", 100), ("middle", 200)):
            fake.produce(TP0, headers(tag, due_at=START_MS + due))
        await rig.rounds()
        rig.clock.at_ms(START_MS + 1_000)
        await rig.rounds()
        assert rig.emitted == ["early", "middle", "late"]
        await rig.stop()

    run(scenario)


def test_the_emit_ack_is_awaited_before_the_action_counts_as_done(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        rig.hold_acks = True
        fake.produce(TP0, headers("a0", due_at=START_MS))
        await rig.until(lambda: bool(rig.pending))
        await rig.yield_a_little()
        assert rig.emitted == ["a0"]
        assert len(rig.pending) == 1
        assert rig.releaser.held == 1  # sent, not acknowledged: still held (in flight)
        polls = fake.polls
        await rig.yield_a_little()
        assert fake.polls == polls  # the loop waits for the ack
        assert fake.commits == []
        rig.pending[0].set_result(None)
        await rig.rounds()
        assert rig.releaser.held == 0
        assert await rig.commit_now() == {TP0: 1}
        assert rig.emitted == ["a0"]  # released once
        await rig.stop()

    run(scenario)


# ---- commits --------------------------------------------------------------------------------------


def test_the_commit_stops_at_the_oldest_unreleased_action(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start(TP0, TP1)
        # TP0: offset 2 is due much later than the others (e.g. written with a longer delay).
        for tag, due in (("p0-0", 100), ("p0-1", 50), ("p0-2", 50_000), ("p0-3", 60)):
            fake.produce(TP0, headers(tag, due_at=START_MS + due))
        fake.produce(TP1, headers("p1-0", due_at=START_MS + 10))
        await rig.rounds()
        assert await rig.commit_now() == {TP0: 0, TP1: 0}  # read, nothing released yet
        rig.clock.at_ms(START_MS + 100)
        await rig.rounds()
        assert sorted(rig.emitted) == ["p0-0", "p0-1", "p0-3", "p1-0"]
        assert await rig.commit_now() == {TP0: 2, TP1: 1}
        rig.clock.at_ms(START_MS + 50_000)
        await rig.rounds()
        assert rig.emitted[-1] == "p0-2"
        assert await rig.commit_now() == {TP0: 4, TP1: 1}
        await rig.stop()

    run(scenario)


def test_a_partition_with_nothing_read_is_not_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start(TP0, TP1)
        fake.produce(TP1, headers("p1-0", due_at=START_MS))
        await rig.rounds()
        assert await rig.commit_now() == {TP1: 1}
        await rig.stop()

    run(scenario)


# ---- pause / resume / disconnect -----------------------------------------------------------------


def test_a_paused_companys_actions_are_parked_and_released_after_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        rig.paused_companies = {("acme", "salesforce")}
        fake.produce(TP0, headers("acme-sf", due_at=START_MS, company="acme", crm="salesforce"))
        fake.produce(TP0, headers("acme-hs", due_at=START_MS, company="acme", crm="hubspot"))
        fake.produce(TP0, headers("globex-sf", due_at=START_MS, company="globex", crm="salesforce"))
        await rig.rounds()
        # Paused per (company, CRM): the other CRM and other companies go out.
        assert rig.emitted == ["acme-hs", "globex-sf"]
        assert rig.releaser.held == 1
        assert await rig.commit_now() == {TP0: 0}  # the parked action holds the commit
        decided = rig.decisions.count(("acme", "salesforce"))
        await rig.rounds(3)
        assert rig.decisions.count(("acme", "salesforce")) > decided  # decided again every tick
        assert rig.emitted == ["acme-hs", "globex-sf"]
        rig.paused_companies.clear()  # resume: no signal, the next tick decides again
        await rig.rounds()
        assert rig.emitted == ["acme-hs", "globex-sf", "acme-sf"]
        assert rig.releaser.held == 0
        assert await rig.commit_now() == {TP0: 3}
        await rig.stop()

    run(scenario)


def test_parked_actions_do_not_pause_reading_the_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch, max_buffered=2)
        fake = await rig.start()
        rig.paused_companies = {("acme", "salesforce")}
        for n in range(4):
            fake.produce(TP0, headers(f"acme-{n}", due_at=START_MS))
        await rig.rounds()
        fake.produce(TP0, headers("globex", due_at=START_MS, company="globex"))
        await rig.rounds()
        assert rig.emitted == ["globex"]
        assert TP0 not in fake.paused()
        assert rig.releaser.held == 4
        await rig.stop()

    run(scenario)


def test_a_dropped_action_goes_to_drop_and_counts_as_done(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        rig.disconnected = {("acme", "hubspot")}
        fake.produce(TP0, headers("gone", due_at=START_MS, crm="hubspot"))
        fake.produce(TP0, headers("kept", due_at=START_MS, crm="salesforce"))
        await rig.rounds()
        assert rig.dropped == ["gone"]
        assert rig.emitted == ["kept"]
        assert rig.releaser.held == 0
        assert await rig.commit_now() == {TP0: 2}
        await rig.stop()

    run(scenario)


def test_a_parked_action_of_a_company_disconnected_meanwhile_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        rig.paused_companies = {("acme", "salesforce")}
        fake.produce(TP0, headers("a0", due_at=START_MS))
        await rig.rounds()
        assert rig.emitted == [] and rig.dropped == []
        rig.paused_companies.clear()
        rig.disconnected = {("acme", "salesforce")}
        await rig.rounds()
        assert rig.dropped == ["a0"] and rig.emitted == []
        await rig.stop()
        assert fake.last_commit == {TP0: 1}

    run(scenario)


# ---- bad internal records --------------------------------------------------------------------------

GOOD = {"due_at": str(START_MS), "company_id": "acme", "crm": "salesforce", "action_id": "bad"}
BAD_RECORDS = [
    ("crm-missing", {k: v for k, v in GOOD.items() if k != "crm"}, b"action", "crm"),
    ("crm-unknown", {**GOOD, "crm": "zoho"}, b"action", "crm"),
    ("crm-upper-case", {**GOOD, "crm": "SALESFORCE"}, b"action", "crm"),
    ("due-at-missing", {k: v for k, v in GOOD.items() if k != "due_at"}, b"action", "due_at"),
    ("due-at-not-a-number", {**GOOD, "due_at": "soon"}, b"action", "due_at"),
    ("due-at-negative", {**GOOD, "due_at": "-5"}, b"action", "due_at"),
    ("company-missing", {k: v for k, v in GOOD.items() if k != "company_id"}, b"action", "company_id"),
    ("action-id-missing", {k: v for k, v in GOOD.items() if k != "action_id"}, b"action", "action_id"),
    ("no-value", GOOD, b"", "value"),
    ("no-headers-at-all", {}, b"action", "due_at"),
]


@pytest.mark.parametrize("record_headers, value, reason_mentions", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_a_bad_record_is_rejected_with_a_reason_and_later_records_still_go_out(
    monkeypatch: pytest.MonkeyPatch, record_headers: dict[str, str], value: bytes, reason_mentions: str
) -> None:
    """Regression: one bad internal record used to crash-loop the releaser (decide raised on it)."""

    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start(TP0, TP1)
        fake.produce(TP1, headers("before", due_at=START_MS))
        fake.produce(TP1, record_headers, value)
        fake.produce(TP1, headers("after", due_at=START_MS))
        await rig.rounds()
        fake.produce(TP1, headers("later", due_at=START_MS))
        await rig.rounds()
        assert [(p, o) for p, o, _ in rig.rejected] == [(1, 1)]
        assert reason_mentions in rig.rejected[0][2]
        assert rig.emitted == ["before", "after", "later"]
        assert not rig.task.done()  # type: ignore[union-attr]
        assert rig.releaser.held == 0
        assert await rig.commit_now() == {TP1: 4}  # the rejected record counts as done
        await rig.stop()

    run(scenario)


def test_a_bad_record_whose_reject_fails_is_retried_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        rig.fail_acks = 1
        fake.produce(TP0, {**GOOD, "crm": "zoho"})
        await rig.rounds()
        await rig.rounds()
        assert [o for _, o, _ in rig.rejected] == [0, 0]  # the first dead letter was not acknowledged
        assert rig.releaser.held == 0
        await rig.stop()
        assert fake.last_commit == {TP0: 1}

    run(scenario)


# ---- failing sends ------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["emit-raises", "ack-fails"])
def test_a_failing_emit_is_retried_later_and_never_marked_done_meanwhile(monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    async def scenario() -> None:
        resend = NoWait(seconds=5.0)
        rig = Rig(monkeypatch, resend=resend)
        fake = await rig.start()
        if failure == "emit-raises":
            rig.fail_emits = 2
        else:
            rig.fail_acks = 2
        fake.produce(TP0, headers("a0", due_at=START_MS))
        fake.produce(TP0, headers("a1", due_at=START_MS + 1))
        rig.clock.at_ms(START_MS + 1)
        await rig.rounds()
        assert rig.emitted == ["a0", "a1"]  # both failed
        assert resend.asked == [1]
        assert rig.releaser.held == 2
        # Held back for the resend backoff (5 s on the monotonic clock): no resend meanwhile.
        await rig.rounds(5)
        assert rig.emitted == ["a0", "a1"]
        # The commit interval passes within the backoff: nothing is committed past the failed ones.
        assert await rig.commit_now() == {TP0: 0}
        rig.clock.tick_monotonic(4.0)
        await rig.rounds()
        assert rig.emitted == ["a0", "a1", "a0", "a1"]
        assert rig.releaser.held == 0
        assert await rig.commit_now() == {TP0: 2}
        await rig.rounds(3)
        assert rig.emitted == ["a0", "a1", "a0", "a1"]  # done: never sent again
        await rig.stop()

    run(scenario)


def test_consecutive_failed_rounds_back_off_further_and_a_success_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        resend = NoWait(seconds=0.0)
        rig = Rig(monkeypatch, resend=resend)
        fake = await rig.start()
        rig.fail_emits = 3
        fake.produce(TP0, headers("a0", due_at=START_MS))
        await rig.rounds(6)
        assert rig.emitted == ["a0"] * 4
        assert resend.asked == [1, 2, 3]
        rig.fail_emits = 1
        fake.produce(TP0, headers("a1", due_at=START_MS))
        await rig.rounds(4)
        assert resend.asked == [1, 2, 3, 1]
        await rig.stop()

    run(scenario)


# ---- flow control ------------------------------------------------------------------------------


def test_reading_pauses_a_lookahead_ahead_and_resumes_when_time_catches_up(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch, lookahead_seconds=60.0)
        fake = await rig.start()
        fake.produce(TP0, headers("far", due_at=START_MS + 120_000))
        await rig.rounds()
        assert TP0 in fake.paused()
        rig.clock.at_ms(START_MS + 60_000)  # the read position is a lookahead away now
        await rig.rounds()
        assert TP0 not in fake.paused()
        assert rig.emitted == []
        await rig.stop()

    run(scenario)


# ---- rebalance and stop --------------------------------------------------------------------------


def test_a_revoke_waits_for_sends_in_flight_then_commits_past_them(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start(TP0, TP1)
        rig.hold_acks = True
        fake.produce(TP0, headers("a0", due_at=START_MS))
        fake.produce(TP0, headers("a1", due_at=START_MS + DELAY_MS))  # not due: stays unreleased
        fake.produce(TP1, headers("b0", due_at=START_MS))
        await rig.until(lambda: len(rig.pending) == 2)
        await rig.yield_a_little()
        assert sorted(rig.emitted) == ["a0", "b0"] and len(rig.pending) == 2
        revoke = asyncio.create_task(fake.listener.on_partitions_revoked([TP0, TP1]))
        await rig.yield_a_little()
        assert not revoke.done()  # the acks are not in yet
        assert fake.commits == []
        rig.pending[0].set_result(None)
        await rig.yield_a_little()
        assert not revoke.done()
        rig.pending[1].set_result(None)
        await asyncio.wait_for(revoke, 1.0)
        # Committed past what was acknowledged, up to the one not yet due.
        assert fake.last_commit == {TP0: 1, TP1: 1}
        fake.assigned = set()
        assert rig.releaser.held == 0  # the revoked partitions' buffers are gone
        rig.clock.at_ms(START_MS + DELAY_MS)
        await rig.rounds()
        assert sorted(rig.emitted) == ["a0", "b0"]  # a1 belongs to the next owner now
        await rig.stop()

    run(scenario)


def test_a_partition_assigned_again_after_a_revoke_starts_from_an_empty_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start(TP0)
        fake.produce(TP0, headers("a0", due_at=START_MS + DELAY_MS))
        await rig.rounds()
        assert rig.releaser.held == 1
        await fake.listener.on_partitions_revoked([TP0])
        assert fake.last_commit == {TP0: 0}
        await fake.listener.on_partitions_assigned([TP0])
        assert rig.releaser.held == 0  # re-read from the commit by the consumer
        await rig.stop()

    run(scenario)


def test_stop_commits_and_stops_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start()
        fake.produce(TP0, headers("a0", due_at=START_MS))
        fake.produce(TP0, headers("a1", due_at=START_MS + DELAY_MS))
        await rig.rounds()
        assert rig.releaser.running
        await rig.stop()
        assert fake.stopped
        assert fake.last_commit == {TP0: 1}
        assert rig.releaser.stopping.requested

    run(scenario)


def test_running_is_false_once_the_loop_has_exited(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        await rig.start()
        assert rig.releaser.running
        await rig.stop()
        assert not rig.releaser.running

    run(scenario)


def test_a_revoke_during_an_emit_waits_for_the_release_pass_and_nothing_of_the_partition_goes_out_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        rig = Rig(monkeypatch)
        fake = await rig.start(TP0)
        gate = rig.emit_gates["a0"] = asyncio.Event()
        fake.produce(TP0, headers("a0", due_at=START_MS))
        fake.produce(TP0, headers("a1", due_at=START_MS))
        await rig.until(lambda: rig.emitted == ["a0"])
        revoke = asyncio.create_task(fake.listener.on_partitions_revoked([TP0]))
        await rig.yield_a_little()
        revoked_early = revoke.done()
        gate.set()
        await asyncio.wait_for(revoke, 1.0)
        committed_by_revoke = fake.last_commit
        fake.assigned = set()
        await rig.yield_a_little()
        await rig.stop()
        assert not revoked_early, "the revoke returned while a send was still under way"
        # The pass under way finished (a1 was due in it too) and its releases were committed before
        # the revoke returned, so the next owner starts after both.
        assert rig.emitted == ["a0", "a1"]
        assert committed_by_revoke == {TP0: 2}

    run(scenario)


# ---- retry tiers: a wait far ahead moves out of the way -----------------------------------------


class Forwards:
    """The `forward` of a retry tier: what it was handed, acknowledged at once."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []

    async def __call__(self, held: Held) -> asyncio.Future[None]:
        self.forwarded.append(held.action_id)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


def test_a_record_due_an_hour_ahead_never_holds_back_one_due_sooner_on_the_same_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        forward = Forwards()
        rig = Rig(monkeypatch, lookahead_seconds=60.0, forward=forward, horizon_seconds=60.0)
        fake = await rig.start()
        fake.produce(TP0, headers("recheck", due_at=START_MS + 3_600_000))
        await rig.rounds()
        assert forward.forwarded == ["recheck"]  # copied on to the tier for its wait, at once
        assert TP0 not in fake.paused()
        fake.produce(TP0, headers("transient", due_at=START_MS + 5_000))
        await rig.rounds()
        rig.clock.at_ms(START_MS + 5_000)
        await rig.rounds()
        assert rig.emitted == ["transient"]
        assert await rig.commit_now() == {TP0: 2}  # the forwarded record no longer holds the commit
        await rig.stop()

    run(scenario)


def test_a_forward_that_fails_is_tried_again_and_holds_the_commit_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        calls: list[str] = []

        async def flaky(held: Held) -> asyncio.Future[None]:
            calls.append(held.action_id)
            if len(calls) == 1:
                raise RuntimeError("retry tier unavailable")
            ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ack.set_result(None)
            return ack

        rig = Rig(monkeypatch, resend=NoWait(5.0), forward=flaky, horizon_seconds=60.0)
        fake = await rig.start()
        fake.produce(TP0, headers("far", due_at=START_MS + 3_600_000))
        await rig.rounds()
        assert calls == ["far"] and await rig.commit_now() == {TP0: 0}
        rig.clock.tick_monotonic(5.0)  # past the resend backoff
        await rig.until(lambda: len(calls) == 2)
        assert await rig.commit_now() == {TP0: 1}
        await rig.stop()

    run(scenario)


def test_an_action_kafka_refuses_for_its_size_is_rejected_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from processors.kafka.sender import RecordTooLarge

    async def scenario() -> None:
        rig = Rig(monkeypatch)

        async def too_large(held: Held) -> asyncio.Future[None]:
            rig.emitted.append(held.action_id)
            raise RecordTooLarge("due", 1_010_000)

        rig.releaser._emit = too_large
        fake = await rig.start()
        fake.produce(TP0, headers("big", due_at=START_MS))
        fake.produce(TP0, headers("next", due_at=START_MS))
        await rig.rounds(3)
        assert [(offset, "larger than Kafka accepts" in why) for _, offset, why in rig.rejected] == [(0, True), (1, True)]
        assert rig.emitted == ["big", "next"] and rig.resend.asked == []  # no resend loop
        assert await rig.commit_now() == {TP0: 2}
        await rig.stop()

    run(scenario)
