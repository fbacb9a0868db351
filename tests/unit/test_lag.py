"""Consumer lag arithmetic: per topic, over this worker's partitions, never negative."""

from __future__ import annotations

from processors.kafka.lag import lag_by_topic


def test_lag_is_high_watermark_minus_committed_summed_per_topic() -> None:
    lag = lag_by_topic(
        ["meetings", "due-sf"],
        committed={("meetings", 0): 10, ("meetings", 1): 5, ("due-sf", 0): 7},
        watermarks={("meetings", 0): (0, 12), ("meetings", 1): (0, 5), ("due-sf", 0): (0, 7)},
    )
    assert lag == {"meetings": 2, "due-sf": 0}


def test_no_committed_offset_counts_from_the_low_watermark() -> None:
    # librdkafka reports "no committed offset" as a negative sentinel (OFFSET_INVALID = -1001).
    lag = lag_by_topic(["meetings"], committed={("meetings", 0): -1001}, watermarks={("meetings", 0): (40, 100), ("meetings", 1): (0, 3)})
    assert lag == {"meetings": 63}


def test_every_topic_has_a_value_and_foreign_partitions_are_ignored() -> None:
    lag = lag_by_topic(["meetings", "history"], committed={}, watermarks={("crm-sync-ledger-changelog", 0): (0, 9)})
    assert lag == {"meetings": 0, "history": 0}


def test_a_committed_offset_past_the_watermark_is_not_negative_lag() -> None:
    assert lag_by_topic(["t"], committed={("t", 0): 12}, watermarks={("t", 0): (0, 10)}) == {"t": 0}
