"""Sync history aggregation (SPEC §7): local days, 7-day expiry, counts by outcome and reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from processors.domain.history import HistoryRecord, add, day_window, fold, format_report, local_day, report
from processors.kafka.producer import partition_for


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


_ids = iter(range(1_000_000))


def rec(day: str, outcome: str, *, crm: str = "salesforce", event_type: str = "meeting_booked", reason: str | None = None) -> HistoryRecord:
    """A record of its own action (records of one action and outcome count once)."""
    return HistoryRecord("acme", day, "Asia/Tokyo", crm, event_type, outcome, reason, 0, "evt-1", f"act-{next(_ids)}")


def test_the_day_is_the_companys_local_day_not_utcs() -> None:
    # 2026-11-23 16:30 UTC is already 2026-11-24 in Tokyo, still 2026-11-23 in New York.
    at = ms("2026-11-23T16:30:00")
    assert local_day(at, "Asia/Tokyo") == "2026-11-24"
    assert local_day(at, "America/New_York") == "2026-11-23"
    assert local_day(at, "UTC") == "2026-11-23"


def test_counts_created_failed_and_skipped_by_reason_per_crm_and_event_type() -> None:
    state = fold(
        [
            rec("2026-11-24", "created"),
            rec("2026-11-24", "created"),
            rec("2026-11-24", "failed", reason="INVALID_FIELD"),
            rec("2026-11-24", "skipped", reason="contact_not_found"),
            rec("2026-11-24", "skipped", reason="contact_not_found", crm="hubspot"),
            rec("2026-11-24", "skipped", reason="no_settings", crm="any", event_type="research_completed"),
        ]
    )
    body = report(state, today="2026-11-24", days=7)
    assert body["rows"] == [
        {"day": "2026-11-24", "crm": "any", "event_type": "research_completed", "created": 0, "skipped": {"no_settings": 1}, "failed": 0, "retried": 0, "resolved": 0, "rechecked": 0},
        {"day": "2026-11-24", "crm": "hubspot", "event_type": "meeting_booked", "created": 0, "skipped": {"contact_not_found": 1}, "failed": 0, "retried": 0, "resolved": 0, "rechecked": 0},
        {"day": "2026-11-24", "crm": "salesforce", "event_type": "meeting_booked", "created": 2, "skipped": {"contact_not_found": 1}, "failed": 1, "retried": 0, "resolved": 0, "rechecked": 0},
    ]
    assert body["totals"] == {"created": 2, "failed": 1, "retried": 0, "resolved": 0, "rechecked": 0, "skipped": {"no_settings": 1, "contact_not_found": 2}}
    assert (body["from"], body["to"]) == ("2026-11-18", "2026-11-24")


def test_only_seven_days_are_kept_and_a_late_record_for_an_expired_day_is_not_counted() -> None:
    state = fold(rec(f"2026-11-{d:02d}", "created") for d in range(10, 25))
    assert sorted(state) == [f"2026-11-{d:02d}" for d in range(18, 25)]
    assert sorted(add(state, rec("2026-11-17", "created"))) == sorted(state)
    state = add(state, rec("2026-11-26", "created"))
    assert min(state) == "2026-11-20"


def test_add_does_not_change_the_state_it_was_given() -> None:
    state = fold([rec("2026-11-24", "created")])
    add(state, rec("2026-11-24", "created"))
    assert state["2026-11-24"]["salesforce"]["meeting_booked"]["created"] == 1


def test_report_window_and_bounds() -> None:
    state = fold([rec("2026-11-20", "created"), rec("2026-11-24", "failed")])
    assert [r["day"] for r in report(state, today="2026-11-24", days=1)["rows"]] == ["2026-11-24"]
    assert [r["day"] for r in report(state, today="2026-11-24", days=5)["rows"]] == ["2026-11-24", "2026-11-20"]
    assert day_window("2026-03-01", 3) == ["2026-03-01", "2026-02-28", "2026-02-27"]
    for days in (0, 8):
        with pytest.raises(ValueError):
            report(state, today="2026-11-24", days=days)


def test_records_round_trip_as_json_and_only_known_outcomes_exist() -> None:
    record = rec("2026-11-24", "skipped", reason="integration_disabled")
    assert HistoryRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError):
        rec("2026-11-24", "duplicate")


def test_the_cli_table_names_every_count() -> None:
    body = {"timezone": "Asia/Tokyo", **report(fold([rec("2026-11-24", "created"), rec("2026-11-24", "skipped", reason="contact_not_found")]), today="2026-11-24", days=7)}
    text = format_report("acme", body)
    assert "created=1" in text and "contact_not_found=1" in text and "Asia/Tokyo" in text
    assert "no activity" in format_report("acme", {"timezone": "UTC", **report({}, today="2026-11-24", days=1)})


def test_a_companys_partition_is_the_one_the_java_and_faust_partitioners_pick() -> None:
    """Writers put a company's records in this partition; the reader reads only that one."""
    from aiokafka.partitioner import DefaultPartitioner

    for company in ("acme", "beta", "会社"):
        assert partition_for(company.encode(), 6) == DefaultPartitioner()(company.encode(), list(range(6)), list(range(6)))
