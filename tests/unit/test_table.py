"""`Table`: the one key → latest-value table (global or partitioned), tombstones, the partitions a
worker holds across rebalances, and expiry by age in two generations (clock injected)."""

from __future__ import annotations

import pytest

from processors.state.table import GLOBAL, Generations, Table


class Clock:
    def __init__(self, seconds: float = 1_000.0) -> None:
        self.now = seconds

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: int) -> None:
        self.now += ms / 1000


# ---- global vs partitioned -------------------------------------------------------------------


def test_a_global_table_ignores_the_partition_every_key_is_in_the_one_global_partition() -> None:
    table: Table[str] = Table(partitioned=False)
    table.put("k", "v1", partition=3)
    assert table.get("k") == "v1"
    assert table.get("k", partition=7) == "v1"
    table.put("k", "v2")
    assert table.get("k", partition=3) == "v2"
    assert len(table) == 1
    assert list(table.items()) == [("k", "v2")]
    assert table.held() == set()  # a global table holds no partitions of its own


def test_a_partitioned_table_keeps_each_partition_apart() -> None:
    table: Table[str] = Table(partitioned=True)
    assert table.get("k", partition=0) is None
    table.put("k", "in-0", partition=0)
    table.put("k", "in-1", partition=1)
    assert table.get("k", partition=0) == "in-0"
    assert table.get("k", partition=1) == "in-1"
    assert table.get("k", partition=2) is None  # a partition never written is not created by a read
    assert table.held() == {0, 1}
    assert len(table) == 2
    assert sorted(table.items()) == [("k", "in-0"), ("k", "in-1")]


def test_the_last_write_per_key_wins() -> None:
    table: Table[int] = Table(partitioned=True)
    for n in range(5):
        table.put("k", n, partition=0)
    assert table.get("k", partition=0) == 4
    assert len(table) == 1


# ---- tombstones --------------------------------------------------------------------------------


@pytest.mark.parametrize("partitioned", [False, True])
def test_a_tombstone_deletes_the_key(partitioned: bool) -> None:
    table: Table[str] = Table(partitioned=partitioned)
    table.put("a", "1", partition=0)
    table.put("b", "2", partition=0)
    table.put("a", None, partition=0)
    assert table.get("a", partition=0) is None
    assert table.get("b", partition=0) == "2"
    assert list(table.items()) == [("b", "2")]
    assert len(table) == 1


def test_a_tombstone_for_an_unknown_key_or_partition_is_harmless() -> None:
    table: Table[str] = Table(partitioned=True)
    table.put("never", None, partition=5)
    assert table.get("never", partition=5) is None
    assert len(table) == 0


def test_a_tombstone_deletes_from_both_generations() -> None:
    clock = Clock()
    table: Table[str] = Table(partitioned=False, keep_ms=1_000, clock=clock)
    table.put("k", "old")
    clock.advance_ms(600)  # the next access rotates: "k" is in the previous generation now
    table.put("other", "x")
    assert table.get("k") == "old"
    table.put("k", None)
    assert table.get("k") is None
    assert dict(table.items()) == {"other": "x"}


# ---- hold: the partitions a worker owns --------------------------------------------------------


def test_hold_empties_every_assigned_partition_to_be_read_back_and_forgets_the_others() -> None:
    """Another owner may have written to a partition between two assignments of this worker (a
    session that expired, a stage restarted while its table lived on): every one is read anew."""
    table: Table[str] = Table(partitioned=True)
    assert table.hold([0, 1]) == [0, 1]
    table.put("k0", "v0", partition=0)
    table.put("k1", "v1", partition=1)
    table.loaded([0, 1])
    assert table.hold([2, 1]) == [1, 2]
    assert table.held() == {1, 2}
    assert table.get("k1", partition=1) is None  # read back from the topic, not kept stale
    assert table.get("k0", partition=0) is None
    assert table.get("k0", partition=2) is None


def test_a_held_partition_is_ready_only_once_loaded_in_this_hold() -> None:
    table: Table[str] = Table(partitioned=True)
    table.hold([3, 1])
    assert not table.ready(3) and not table.ready(1)
    table.loaded([3])
    assert table.ready(3) and not table.ready(1)
    table.loaded([7])  # not held: never ready
    assert not table.ready(7)
    table.hold([1, 3])  # assigned again: both must be read again
    assert not table.ready(3) and not table.ready(1)


def test_a_global_table_is_always_ready() -> None:
    assert Table(partitioned=False).ready(0)


def test_a_partition_forgotten_and_assigned_again_starts_empty() -> None:
    table: Table[str] = Table(partitioned=True)
    table.hold([0])
    table.put("k", "v", partition=0)
    assert table.hold([]) == []
    assert table.held() == set()
    assert table.hold([0]) == [0]
    assert table.get("k", partition=0) is None


def test_hold_returns_the_new_partitions_sorted() -> None:
    table: Table[str] = Table(partitioned=True)
    assert table.hold([5, 2, 9, 2]) == [2, 5, 9]


# ---- expiry ------------------------------------------------------------------------------------


def test_without_keep_ms_nothing_expires() -> None:
    clock = Clock()
    table: Table[str] = Table(partitioned=False, clock=clock)
    table.put("k", "v")
    clock.advance_ms(10**12)
    assert table.get("k") == "v"
    assert not table.expired(0)


def test_an_entry_is_kept_at_least_half_of_keep_ms_and_gone_after_keep_ms() -> None:
    clock = Clock()
    table: Table[str] = Table(partitioned=True, keep_ms=1_000, clock=clock)
    table.put("k", "v", partition=0)  # generation 0 started at the same instant
    clock.advance_ms(499)
    assert table.get("k", partition=0) == "v"
    clock.advance_ms(1)  # 500: rotation, "k" moves to the previous generation, still readable
    assert table.get("k", partition=0) == "v"
    clock.advance_ms(499)  # 999
    assert table.get("k", partition=0) == "v"
    clock.advance_ms(1)  # 1000: the second rotation forgets it
    assert table.get("k", partition=0) is None
    assert len(table) == 0


def test_a_write_in_the_current_generation_shadows_the_previous_one() -> None:
    clock = Clock()
    table: Table[str] = Table(partitioned=False, keep_ms=1_000, clock=clock)
    table.put("k", "old")
    clock.advance_ms(500)
    table.put("k", "new")  # rotates first: "old" is previous, "new" current
    assert table.get("k") == "new"
    assert list(table.items()) == [("k", "new")]
    assert len(table) == 1
    clock.advance_ms(500)  # rotates again: "new" is previous now, "old" is forgotten
    assert table.get("k") == "new"
    clock.advance_ms(500)
    assert table.get("k") is None


def test_each_partition_rotates_on_its_own_clock() -> None:
    clock = Clock()
    table: Table[str] = Table(partitioned=True, keep_ms=1_000, clock=clock)
    table.put("a", "v", partition=0)  # partition 0's generations start at 0
    clock.advance_ms(300)
    table.put("b", "v", partition=1)  # partition 1's start at 300
    clock.advance_ms(300)  # 600
    assert table.get("a", partition=0) == "v"  # partition 0 rotates: "a" is previous
    assert table.get("b", partition=1) == "v"  # partition 1 does not (300 ms old)
    clock.advance_ms(250)  # 850
    assert table.get("b", partition=1) == "v"  # partition 1 rotates: "b" is previous
    assert table.get("a", partition=0) == "v"
    clock.advance_ms(250)  # 1100
    assert table.get("a", partition=0) is None  # partition 0's second rotation
    assert table.get("b", partition=1) == "v"
    clock.advance_ms(250)  # 1350
    assert table.get("b", partition=1) is None


def test_expired_says_whether_a_record_is_too_old_to_load() -> None:
    clock = Clock(seconds=100.0)  # now = 100_000 ms
    table: Table[str] = Table(partitioned=True, keep_ms=10_000, clock=clock)
    assert table.expired(89_999)
    assert not table.expired(90_000)  # exactly keep_ms old: still loaded
    assert not table.expired(99_999)
    clock.advance_ms(1)
    assert table.expired(90_000)


def test_an_entry_older_than_keep_ms_is_gone_even_if_nothing_touched_the_table_meanwhile() -> None:
    clock = Clock()
    table: Table[str] = Table(partitioned=False, keep_ms=1_000, clock=clock)
    table.put("k", "v")
    clock.advance_ms(5_000)  # no access at all in between
    assert table.get("k") is None


def test_generations_directly() -> None:
    gen: Generations[str] = Generations(keep_ms=100, rotated_at=0)
    gen.put("a", "1", now_ms=10)
    gen.put("b", "2", now_ms=60)  # rotates at 50: a → previous
    assert (gen.current, gen.previous) == ({"b": "2"}, {"a": "1"})
    assert sorted(gen.items(now_ms=60)) == [("a", "1"), ("b", "2")]
    assert gen.size(now_ms=60) == 2
    gen.delete("a")
    assert gen.get("a", now_ms=60) is None
    assert GLOBAL == -1
