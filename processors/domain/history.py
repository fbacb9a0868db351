"""Sync history (SPEC §7), pure: per company, per local day, per CRM and event type, how many
actions were created, skipped (by reason), failed, retried, resolved and re-checked (a missing
Lead/Contact looked for again later); kept 7 days.

Every outcome is one small JSON record on the history topic, put in its company's partition (so
one company's records share a partition) under an idempotency key (`HistoryRecord.key`): the
topic is compacted as well as time-limited, and `fold` counts each key once, so a batch handled
again after a crash counts nothing twice (at-least-once writes, exactly-once counts). A company's
day starts at its own midnight: the day is computed from the company's time zone when the outcome
is recorded, and days older than 7 are pruned.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

from processors.domain.rules import SettingsView

KEEP_DAYS = 7
OUTCOMES = ("created", "skipped", "failed", "retried", "resolved", "rechecked")
COUNTED = ("created", "failed", "retried", "resolved", "rechecked")  # plain counts; skipped counts by reason
DEFAULT_TIMEZONE = "Asia/Tokyo"

# company state: {day: {crm: {event_type: {"created": n, "failed": n, "skipped": {reason: n}}}}}
State = dict[str, dict[str, dict[str, dict[str, Any]]]]


@dataclass(frozen=True)
class HistoryRecord:
    """One outcome. Ids only (event and action ids are not personal data); never an e-mail."""

    company_id: str
    day: str
    timezone: str
    crm: str
    event_type: str
    outcome: str
    reason: str | None
    at_ms: int
    event_id: str
    action_id: str | None = None
    ref: str | None = None  # the dead letter a retried/resolved record is about; a re-check's number

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "HistoryRecord":
        return cls(**json.loads(raw))

    @property
    def key(self) -> str:
        """Idempotency key: an outcome of an action counts once, however often it is recorded
        (a batch handled again after a crash records its outcomes again). Each retry counts, and
        each re-check of an action once."""
        subject = self.action_id or f"{self.event_id}/{self.crm}"
        if self.outcome == "rechecked":
            subject = f"{subject}/{self.ref}"
        elif self.outcome in ("retried", "resolved"):
            subject = f"{self.ref}/{self.at_ms}" if self.outcome == "retried" else f"{self.ref}"
        return f"{self.company_id}/{subject}/{self.outcome}"


def local_day(at_ms: int, tz: str) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).astimezone(ZoneInfo(tz)).date().isoformat()


def day_window(today: str, days: int) -> list[str]:
    """The `days` local dates ending with `today`, newest first."""
    end = date.fromisoformat(today)
    return [(end - timedelta(days=n)).isoformat() for n in range(days)]


def add(state: State, record: HistoryRecord, keep_days: int = KEEP_DAYS) -> State:
    """A new state with the record counted and days older than `keep_days` (before the newest) gone."""
    newest = max([record.day, *state])
    oldest_kept = day_window(newest, keep_days)[-1]
    if record.day < oldest_kept:
        return {day: v for day, v in state.items() if day >= oldest_kept}
    out: State = json.loads(json.dumps({day: v for day, v in state.items() if day >= oldest_kept}))
    counts = out.setdefault(record.day, {}).setdefault(record.crm, {}).setdefault(record.event_type, empty_counts())
    if record.outcome == "skipped":
        reason = record.reason or "unknown"
        counts["skipped"][reason] = counts["skipped"].get(reason, 0) + 1
    else:
        counts[record.outcome] = counts.get(record.outcome, 0) + 1
    return out


def empty_counts() -> dict[str, Any]:
    return {"created": 0, "skipped": {}, "failed": 0, "retried": 0, "resolved": 0, "rechecked": 0}


def fold(records: Iterable[HistoryRecord], keep_days: int = KEEP_DAYS) -> State:
    """Counts per day, each record key once (the first occurrence: a repeat after a crash may carry
    a later time)."""
    state: State = {}
    seen: set[str] = set()
    for record in records:
        if record.key in seen:
            continue
        seen.add(record.key)
        state = add(state, record, keep_days)
    return state


def report(state: State, *, today: str, days: int) -> dict[str, Any]:
    """Rows (newest day first, then CRM, event type) and totals for the last `days` local days."""
    if not 1 <= days <= KEEP_DAYS:
        raise ValueError(f"days must be between 1 and {KEEP_DAYS}")
    window = day_window(today, days)
    rows = []
    totals: dict[str, Any] = empty_counts()
    for day in window:
        for crm, by_event in sorted(state.get(day, {}).items()):
            for event_type, counts in sorted(by_event.items()):
                rows.append({"day": day, "crm": crm, "event_type": event_type, **empty_counts(), **counts})
                for name in COUNTED:
                    totals[name] += counts.get(name, 0)
                for reason, n in counts["skipped"].items():
                    totals["skipped"][reason] = totals["skipped"].get(reason, 0) + n
    return {"from": window[-1], "to": window[0], "rows": rows, "totals": totals}


def format_report(company_id: str, body: Mapping[str, Any]) -> str:
    """The CLI's table: one line per day, CRM and event type."""
    lines = [f"sync history of {company_id}, {body['from']} .. {body['to']} ({body['timezone']})"]
    if not body["rows"]:
        lines.append("  no activity")
    for row in body["rows"]:
        skipped = ", ".join(f"{reason}={n}" for reason, n in sorted(row["skipped"].items())) or "-"
        lines.append(
            f"  {row['day']}  {row['crm']:<10} {row['event_type']:<28} created={row['created']:<4} "
            f"failed={row['failed']:<4} retried={row['retried']:<4} resolved={row['resolved']:<4} "
            f"rechecked={row['rechecked']:<4} skipped: {skipped}"
        )
    totals = body["totals"]
    lines.append(
        f"  total: created={totals['created']} failed={totals['failed']} retried={totals['retried']} "
        f"resolved={totals['resolved']} rechecked={totals['rechecked']} skipped={sum(totals['skipped'].values())}"
    )
    return "\n".join(lines)


def company_timezone(settings: SettingsView) -> Callable[[str], str]:
    """A company's days follow its settings' time zone (unknown company: the product default)."""

    def timezone_of(company_id: str) -> str:
        company = settings.company(company_id)
        return company.timezone if company is not None else DEFAULT_TIMEZONE

    return timezone_of
