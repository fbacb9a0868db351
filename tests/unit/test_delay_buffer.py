"""`PartitionBuffer`: the commit offset never passes an action a restart would still need, and the
read-ahead stops at the lookahead or the buffer budget; retry tiers by wait length, lateness, and the
give-up clock that counts only deliverable time."""

from __future__ import annotations

import pytest

from processors.domain.release import Held, PartitionBuffer, RetryTier, per_partition_cap, resumed_clock, tier_for


def held(offset: int, due_at: int, company: str = "acme", crm: str = "salesforce") -> Held:
    headers = [("due_at", str(due_at).encode()), ("company_id", company.encode()), ("crm", crm.encode()), ("action_id", f"a{offset}".encode())]
    return Held.of(offset, headers, b"v", 0)


def filled(*items: tuple[int, int]) -> PartitionBuffer:
    buf = PartitionBuffer()
    for offset, due in items:
        buf.add(held(offset, due))
    return buf


def test_headers_are_read_without_decoding_the_value() -> None:
    h = held(7, 1234, company="c1", crm="hubspot")
    assert (h.due_at, h.offset, h.company_id, h.crm, h.action_id) == (1234, 7, "c1", "hubspot", "a7")
    assert h.header("missing") == ""
    assert Held.of(1, [("due_at", b"garbage")], b"", 0).due_at == 0


def test_nothing_read_means_nothing_to_commit() -> None:
    assert PartitionBuffer().commit_offset() is None


def test_all_released_commits_past_the_last_read() -> None:
    buf = filled((10, 100), (11, 200))
    for h in buf.pop_due(1_000):
        buf.done(h.offset)
    assert buf.commit_offset() == 12
    assert buf.size == 0


def test_commit_stops_at_the_oldest_unreleased_even_when_later_offsets_are_due_first() -> None:
    buf = filled((10, 500), (11, 100), (12, 300))
    released = buf.pop_due(300)
    assert [h.offset for h in released] == [11, 12]
    for h in released:
        buf.done(h.offset)
    assert buf.commit_offset() == 10


def test_commit_never_passes_an_in_flight_action() -> None:
    buf = filled((10, 100), (11, 100), (12, 100))
    first, second, third = buf.pop_due(100)
    buf.done(first.offset)
    buf.done(third.offset)
    assert buf.commit_offset() == second.offset
    buf.done(second.offset)
    assert buf.commit_offset() == 13


def test_a_failed_send_goes_back_to_the_heap_and_still_holds_the_commit() -> None:
    buf = filled((10, 100))
    [h] = buf.pop_due(100)
    buf.retry(h)
    assert buf.commit_offset() == 10
    assert [x.offset for x in buf.pop_due(100)] == [10]


def test_commit_never_passes_a_parked_action_until_it_is_decided_again() -> None:
    buf = PartitionBuffer()
    buf.add(held(10, 100, company="paused-co"))
    buf.add(held(11, 100, company="other"))
    for h in buf.pop_due(100):
        if h.company_id == "paused-co":
            buf.park(h, now_ms=100)
        else:
            buf.done(h.offset)
    assert buf.commit_offset() == 10
    assert buf.parked_groups() == [("paused-co", "salesforce")]
    assert buf.pop_due(10_000) == []
    assert buf.unpark("paused-co", "hubspot") == []
    [back] = buf.unpark("paused-co", "salesforce")
    assert buf.commit_offset() == 10
    buf.done(back.offset)
    assert buf.commit_offset() == 12
    assert buf.parked_groups() == []


def test_nothing_is_released_before_its_due_time() -> None:
    buf = filled((0, 1_000), (1, 1_001))
    assert buf.pop_due(999) == []
    assert [h.offset for h in buf.pop_due(1_000)] == [0]


def test_reading_pauses_once_the_read_position_is_a_lookahead_ahead() -> None:
    buf = filled((0, 10_000))
    assert not buf.should_pause(now_ms=5_000, lookahead_ms=5_000, max_buffered=100)
    assert buf.should_pause(now_ms=4_999, lookahead_ms=5_000, max_buffered=100)


def test_reading_pauses_when_the_budget_is_full_but_parked_actions_do_not_count() -> None:
    buf = filled((0, 1), (1, 1), (2, 1))
    assert buf.should_pause(now_ms=0, lookahead_ms=60_000, max_buffered=3)
    for h in buf.pop_due(1):
        buf.park(h, now_ms=100)
    assert not buf.should_pause(now_ms=0, lookahead_ms=60_000, max_buffered=3)
    assert buf.size == 3


def test_in_flight_actions_count_against_the_budget() -> None:
    buf = filled((0, 1), (1, 1))
    buf.pop_due(1)
    assert buf.should_pause(now_ms=0, lookahead_ms=60_000, max_buffered=2)


def test_the_budget_is_shared_by_the_worker_s_partitions() -> None:
    assert per_partition_cap(100_000, 6) == 16_666
    assert per_partition_cap(100_000, 0) == 100_000
    assert per_partition_cap(3, 6) == 1


def test_a_parked_action_keeps_its_first_parked_time_across_re_decisions() -> None:
    buf = filled((10, 100))
    [h] = buf.pop_due(100)
    buf.park(h, now_ms=1_000)
    [back] = buf.unpark("acme", "salesforce")
    buf.park(back, now_ms=5_000)
    assert back.parked_at == 1_000


def test_actions_parked_too_long_are_handed_out_and_hold_the_commit_until_copied() -> None:
    buf = PartitionBuffer()
    for offset in (10, 11):
        buf.add(held(offset, 100, company="paused-co"))
    buf.add(held(12, 100, company="other"))
    first, second, other = buf.pop_due(100)
    buf.park(first, now_ms=1_000)
    buf.park(second, now_ms=3_000)
    buf.done(other.offset)
    assert buf.stale_parked(now_ms=3_999, after_ms=3_000) == []
    [stale] = buf.stale_parked(now_ms=4_000, after_ms=3_000)
    assert stale.offset == 10
    assert buf.commit_offset() == 10  # in flight until its copy is acknowledged
    buf.done(stale.offset)
    assert buf.commit_offset() == 11  # the other parked action still holds the partition
    assert [h.offset for h in buf.stale_parked(now_ms=6_000, after_ms=3_000)] == [11]
    assert buf.parked_groups() == []


# ---- retry tiers, lateness and the give-up clock (pure) ------------------------------------------

TIERS = (RetryTier("short", "retry", 60_000), RetryTier("medium", "retry-medium", 3_600_000), RetryTier("long", "retry-long", 7 * 86_400_000))


@pytest.mark.parametrize(
    ("wait_ms", "topic"),
    [
        (-5_000, "short"),  # already due (an overdue event, a DLQ retry, a repark)
        (0, "short"),
        (5_000, "short"),  # a transient failure's backoff
        (60_000, "short"),
        (60_001, "medium"),
        (900_000, "medium"),  # a quota deferral, a capped Retry-After
        (3_600_000, "medium"),
        (3_600_001, "long"),  # a contact re-check an hour or more ahead
        (7 * 86_400_000, "long"),
        (8 * 86_400_000, "long"),  # longer than any tier: the last one (its releaser rejects it)
    ],
)
def test_a_wait_goes_to_the_first_tier_that_holds_it(wait_ms: int, topic: str) -> None:
    assert tier_for(wait_ms, TIERS).topic == topic


def test_a_record_due_beyond_the_horizon_is_set_aside_to_forward_and_holds_the_commit_until_copied() -> None:
    buf = PartitionBuffer()
    buf.add(held(0, 3_600_000), now_ms=0, horizon_ms=60_000)
    buf.add(held(1, 5_000), now_ms=0, horizon_ms=60_000)
    assert not buf.should_pause(0, 60_000, 100)  # the far record does not stop reading
    assert buf.commit_offset() == 0 and buf.size == 2
    [far] = buf.pop_forwarding()
    assert far.offset == 0 and buf.commit_offset() == 0  # in flight until its copy is acknowledged
    buf.reforward(far)  # the copy failed: set aside again
    assert [h.offset for h in buf.pop_forwarding()] == [0]
    buf.done(0)
    assert buf.commit_offset() == 1
    assert [h.offset for h in buf.pop_due(5_000)] == [1]


def test_lateness_counts_from_the_planning_time_of_an_action_overdue_when_planned() -> None:
    base = [("due_at", b"1000"), ("company_id", b"acme"), ("crm", b"salesforce"), ("action_id", b"a")]
    assert Held.of(0, base, b"v", 0).late_from == 1000
    assert Held.of(0, [*base, ("planned_at", b"900000")], b"v", 0).late_from == 900_000
    assert Held.of(0, [*base, ("planned_at", b"500")], b"v", 0).late_from == 1000


H = 3_600_000


@pytest.mark.parametrize(
    ("clock", "parked_at", "now", "expected", "why"),
    [
        (0, 0, 5 * H, 0, "never parked: nothing changes"),
        (0, 1 * H, 1 * H, 0, "resumed the moment it was parked: no time to add"),
        (0, 1 * H, 3 * H, 2 * H, "parked two hours: the clock starts two hours later"),
        (0, 2 * H, 50 * H, 48 * H, "a pause longer than the give-up window does not count"),
        (10 * H, 1 * H, 12 * H, 12 * H, "only parked time after the clock started counts"),
        (0, 5 * H, 4 * H, 0, "a clock that went backwards moves nothing"),
    ],
)
def test_the_give_up_clock_counts_only_deliverable_time(clock: int, parked_at: int, now: int, expected: int, why: str) -> None:
    assert resumed_clock(clock, parked_at, now) == expected, why
