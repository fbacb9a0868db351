"""The backfill's pace: at most `rate` sends a second, without bursting after a pause."""

from __future__ import annotations

from processors.ops.backfill import Pace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_sends_are_spaced_by_the_rate() -> None:
    clock = Clock()
    pace = Pace(4.0, clock, clock.sleep)
    for _ in range(5):
        pace.wait()
    assert clock.slept == [0.25, 0.25, 0.25, 0.25] and clock.now == 101.0


def test_a_slow_sender_is_not_made_to_burst_afterwards() -> None:
    clock = Clock()
    pace = Pace(10.0, clock, clock.sleep)
    pace.wait()
    clock.now += 5.0  # the producer was slow: no credit is saved up for a burst
    pace.wait()
    pace.wait()
    assert clock.slept == [0.1]
