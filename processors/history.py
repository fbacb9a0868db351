"""Sync history (SPEC §7): per company, per local day, per CRM and event type, how many actions
were created, skipped (by reason) and failed; kept 7 days.

Every outcome becomes one small JSON record on the history topic, keyed by company (so one
company's records share a partition). The `history` agent folds them into a Faust table keyed by
company whose value holds that company's last 7 local days. It is not a Faust windowed table on
purpose: Faust's tumbling windows are aligned to UTC epoch days, while a company's day starts at
its own midnight; so the day is computed from the company's time zone when the outcome is
recorded, and `add` prunes days older than 7 (the same expiry, in the right calendar). The table's
changelog is compacted per company, so it stays bounded; the topic itself keeps 8 days, enough for
`crm-sync history` to rebuild the same counts from it with the same `add`.

Counts are at least once: a crash between recording an outcome and committing its offset can count
it twice (the CRM still has one object: the sinks are idempotent).

The top of this module is pure (records, days, folding, reports); `History` and
`register_history` are the Faust part; `history_from_topic` and `history_from_worker` are the two
ways `crm-sync history` reads it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

import faust
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, TopicPartition

from processors.config import Config
from processors.rules import SettingsView

log = logging.getLogger("crm_sync.history")

KEEP_DAYS = 7
OUTCOMES = ("created", "skipped", "failed")
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

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "HistoryRecord":
        return cls(**json.loads(raw))


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
    counts = out.setdefault(record.day, {}).setdefault(record.crm, {}).setdefault(
        record.event_type, {"created": 0, "skipped": {}, "failed": 0}
    )
    if record.outcome == "skipped":
        reason = record.reason or "unknown"
        counts["skipped"][reason] = counts["skipped"].get(reason, 0) + 1
    else:
        counts[record.outcome] += 1
    return out


def fold(records: Iterable[HistoryRecord], keep_days: int = KEEP_DAYS) -> State:
    state: State = {}
    for record in records:
        state = add(state, record, keep_days)
    return state


def report(state: State, *, today: str, days: int) -> dict[str, Any]:
    """Rows (newest day first, then CRM, event type) and totals for the last `days` local days."""
    if not 1 <= days <= KEEP_DAYS:
        raise ValueError(f"days must be between 1 and {KEEP_DAYS}")
    window = day_window(today, days)
    rows = []
    totals: dict[str, Any] = {"created": 0, "skipped": {}, "failed": 0}
    for day in window:
        for crm, by_event in sorted(state.get(day, {}).items()):
            for event_type, counts in sorted(by_event.items()):
                rows.append({"day": day, "crm": crm, "event_type": event_type, **counts})
                totals["created"] += counts["created"]
                totals["failed"] += counts["failed"]
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
            f"failed={row['failed']:<4} skipped: {skipped}"
        )
    totals = body["totals"]
    lines.append(f"  total: created={totals['created']} failed={totals['failed']} skipped={sum(totals['skipped'].values())}")
    return "\n".join(lines)


class History:
    """The one entry point the stages use (`record`), plus the per-company report for the endpoint."""

    def __init__(self, topic: faust.TopicT, table: Any, timezone_of: Callable[[str], str]) -> None:
        self.topic = topic
        self.table = table
        self._timezone_of = timezone_of

    def record(
        self,
        *,
        company_id: str,
        crm: str,
        event_type: str,
        outcome: str,
        reason: str | None,
        at_ms: int,
        event_id: str,
        action_id: str | None = None,
    ) -> None:
        """Non-blocking (Faust's producer buffer), so sync callbacks such as the releaser's can call it.

        `crm` is "any" when no CRM applies (no settings at all); `outcome` is created/skipped/failed.
        """
        tz = self._timezone_of(company_id)
        rec = HistoryRecord(company_id, local_day(at_ms, tz), tz, crm, event_type, outcome, reason, at_ms, event_id, action_id)
        self.topic.send_soon(key=company_id.encode(), value=rec.to_json())

    def report(self, company_id: str, days: int, now_ms: int) -> dict[str, Any]:
        """Only meaningful on the worker that holds the company's partition (the view routes there)."""
        tz = self._timezone_of(company_id)
        body = report(self.table.get(company_id) or {}, today=local_day(now_ms, tz), days=days)
        return {"company_id": company_id, "timezone": tz, "days": days, **body}


def company_timezone(settings: SettingsView) -> Callable[[str], str]:
    """A company's days follow its settings' time zone (unknown company: the product default)."""

    def timezone_of(company_id: str) -> str:
        company = settings.company(company_id)
        return company.timezone if company is not None else DEFAULT_TIMEZONE

    return timezone_of


def register_history(app: faust.App, config: Config, timezone_of: Callable[[str], str]) -> History:
    topic = app.topic(
        config.topics.history, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    table = app.Table("history", default=None, partitions=config.topic_partitions, key_type=str)

    @app.agent(topic, name="history", concurrency=1)
    async def fold_history(stream: faust.StreamT) -> None:
        async for raw in stream:
            try:
                record = HistoryRecord.from_json(raw)
            except (ValueError, TypeError) as exc:  # not ours: counting it is impossible, stopping is worse
                log.warning("history record ignored", extra={"reason": str(exc)})
                continue
            table[record.company_id] = add(table.get(record.company_id) or {}, record)

    return History(topic, table, timezone_of)


def history_partition(company_id: str, partitions: int) -> int:
    """The partition Faust's producer (murmur2, as Java clients) puts a company's records in."""
    return (murmur2(company_id.encode()) & 0x7FFFFFFF) % partitions


def read_records(config: Config, company_id: str, timeout: float = 10.0) -> list[HistoryRecord]:
    """The company's records now on the history topic (its one partition only)."""
    topic = config.topics.history
    consumer = Consumer({**config.kafka_client_config(), "group.id": f"crm-sync-history-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ValueError(f"history topic {topic} not found")
        tp = TopicPartition(topic, history_partition(company_id, len(meta.partitions)))
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        tp.offset = low
        consumer.assign([tp])
        records: list[HistoryRecord] = []
        position, deadline = low, time.monotonic() + timeout
        while position < high and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            position = msg.offset() + 1
            if msg.key() == company_id.encode():
                records.append(HistoryRecord.from_json(msg.value()))
        if position < high:
            raise TimeoutError(f"history topic not read to its end within {timeout:.0f}s")
        return records
    finally:
        consumer.close()


def history_from_topic(config: Config, company_id: str, days: int, now_ms: int) -> dict[str, Any]:
    """The same report as the worker's, rebuilt from the topic (days follow the latest record's zone)."""
    records = read_records(config, company_id)
    tz = records[-1].timezone if records else DEFAULT_TIMEZONE
    body = report(fold(records), today=local_day(now_ms, tz), days=days)
    return {"company_id": company_id, "timezone": tz, "days": days, **body}


def history_from_worker(url: str, company_id: str, days: int, timeout: float = 10.0) -> dict[str, Any]:
    query = urllib.parse.urlencode({"company": company_id, "days": days})
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/history?{query}", timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"worker answered {exc.code}: {exc.read().decode(errors='replace')}") from None
