"""What the pages show, computed without I/O: the history chart's bars and a failure's state and
outcome. Kept apart from the handlers so it is unit-tested on its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo

from processors.domain.history import COUNTED, HistoryRecord

SERIES = ("created", "skipped", "failed")


@dataclass(frozen=True)
class Bar:
    """One stacked bar of the chart: a day's created / skipped / failed, and the segments' x and width."""

    label: str
    counts: dict[str, int]
    segments: tuple[tuple[str, float, float], ...]  # (series, x, width) in chart units

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def bars(report: Mapping[str, Any], width: float = 400.0) -> list[Bar]:
    """Per day (newest first, every day of the window, empty ones too): the stacked bar of the
    report's rows, scaled so the biggest day fills `width`."""
    days: dict[str, dict[str, int]] = {}
    for row in report["rows"]:
        counts = days.setdefault(row["day"], dict.fromkeys(SERIES, 0))
        counts["created"] += row["created"]
        counts["failed"] += row["failed"]
        counts["skipped"] += sum(row["skipped"].values())
    window = _window(report)
    peak = max([sum(c.values()) for c in days.values()] + [1])
    out = []
    for day in window:
        counts = days.get(day, dict.fromkeys(SERIES, 0))
        x, segments = 0.0, []
        for series in SERIES:
            w = width * counts[series] / peak
            if w > 0:
                segments.append((series, round(x, 1), round(w, 1)))
            x += w
        out.append(Bar(day, counts, tuple(segments)))
    return out


def _window(report: Mapping[str, Any]) -> list[str]:
    from processors.domain.history import day_window

    start, end = report["from"], report["to"]
    n = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).days + 1
    return day_window(end, n)


def breakdown(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The window's counts per CRM and event type (the table under the chart)."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in report["rows"]:
        t = totals.setdefault((row["crm"], row["event_type"]), {"crm": row["crm"], "event_type": row["event_type"], **dict.fromkeys(COUNTED, 0), "skipped": {}})
        for name in COUNTED:
            t[name] += row.get(name, 0)
        for reason, n in row["skipped"].items():
            t["skipped"][reason] = t["skipped"].get(reason, 0) + n
    return [totals[k] for k in sorted(totals)]


def failure_outcome(action_id: str | None, retried_at: int | None, records: Iterable[HistoryRecord]) -> str | None:
    """What became of a failure's latest retry, from sync history: delivered, failed (again),
    skipped, pending; None when it was never retried or carries no action."""
    if retried_at is None or not action_id:
        return None
    after = [r for r in records if r.action_id == action_id and r.at_ms >= retried_at and r.outcome in ("created", "failed", "skipped")]
    if not after:
        return "pending"
    latest = max(after, key=lambda r: r.at_ms)
    return {"created": "delivered", "failed": "failed", "skipped": "skipped"}[latest.outcome]


def local_time(at_ms: int | None, tz: str) -> str:
    if not at_ms:
        return "-"
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S")
