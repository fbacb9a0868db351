"""`crm-sync backfill`: bring in a company's events from before it connected (or from before a
toggle was switched on), under the current settings, without ever duplicating.

It re-ingests: the company's records in the time range are read from the input topics (each
partition starts at the broker's time index) and sent again to their own topic, paced, with a
`crm-sync-backfill` header. The worker then treats them as any late event: planned with the
current settings, due at once, held while the company is paused, and delivered through the
ledger, whose deterministic action ids make a second copy of an action create nothing. So running
a backfill twice creates nothing new, and the pace keeps other companies' live traffic on time.

Before sending, the same plan is made here (the worker's planner, the current settings) and
compared with the company's sync history, so the report says what is new and what was already
delivered; `--wait` then follows the history until every new action has an outcome.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from confluent_kafka import Message, Producer

from processors.codec import Codec, DecodeError
from processors.config import Config
from processors.domain.model import Event, EventType, ValidationError
from processors.domain.planner import plan
from processors.domain.records import event_from_record
from processors.domain.rules import SettingsView
from processors.kafka import clients
from processors.kafka.read import TopicReader
from processors.state.history import read_records

BACKFILL_HEADER = "crm-sync-backfill"
INPUT_SCHEMAS = frozenset({"MeetingBooked", "ResearchCompleted", "SurveyAnswered"})


@dataclass(frozen=True)
class Candidate:
    """One of the company's input records in the range, with what it plans now."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    event: Event
    action_ids: tuple[str, ...]


@dataclass
class Report:
    events: int = 0
    by_event_type: Counter[str] = field(default_factory=Counter)
    planned: int = 0
    already_delivered: int = 0
    already_handled: Counter[str] = field(default_factory=Counter)
    to_deliver: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    sent: int = 0
    created: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    waiting: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "events": self.events, "by_event_type": dict(self.by_event_type), "planned": self.planned,
            "already_delivered": self.already_delivered, "already_handled": dict(self.already_handled), "to_deliver": self.to_deliver, "skipped": dict(self.skipped),
            "unreadable": self.unreadable, "sent": self.sent, "created": self.created, "outcomes": dict(self.outcomes),
            "still_waiting": self.waiting,
        }


def _event(codec: Codec, value: bytes) -> Event | None:
    try:
        decoded = codec.decode(value)
        if decoded.schema_name not in INPUT_SCHEMAS:
            return None
        return event_from_record(decoded.schema_name, decoded.value)
    except (DecodeError, ValidationError):
        return None


def scan(
    config: Config, codec: Codec, settings: SettingsView, company_id: str, since_ms: int, until_ms: int | None,
    event_types: Iterable[EventType] | None, report: Report, now_ms: int,
) -> list[Candidate]:
    """The company's events in [since, until] on every input topic, oldest first per partition,
    each with what the current settings plan for it (skips counted in the report)."""
    wanted = set(event_types) if event_types else set(EventType)
    key = company_id.encode()
    found: list[Candidate] = []
    seen: set[str] = set()  # an event is on the topic again after a backfill (or an upstream repeat): once
    delay_ms = int(config.delay_seconds * 1000)
    for topic in config.topics.inputs:
        def add(msg: Message, topic: str = topic) -> None:
            if msg.key() != key or msg.value() is None:
                return  # another company's record: not even decoded
            if until_ms is not None and msg.timestamp()[1] > until_ms:
                return
            event = _event(codec, msg.value())
            if event is None:
                report.unreadable += 1  # the worker dead-lettered it when it first came; `dlq` has it
                return
            if event.company_id != company_id or event.event_type not in wanted or event.event_id in seen:
                return
            seen.add(event.event_id)
            planned = plan(event, settings.company(company_id), settings.meeting_type(company_id, event.meeting_type_id), now_ms, delay_ms)
            report.events += 1
            report.by_event_type[event.event_type.value] += 1
            for skip in planned.skips:
                report.skipped[skip.reason] += 1
            found.append(Candidate(topic, msg.key(), msg.value(), list(msg.headers() or []), event,
                                   tuple(a.action_id for a in planned.actions)))

        with TopicReader(clients.librdkafka(config), topic) as reader:
            partitions = reader.partitions()
            if partitions:
                reader.assign(partitions, since_ms)
                reader.read_to_end(add, timeout=120.0)
    return found


# A skip at the due time because the CRM was disconnected leaves no ledger entry: a backfill after
# reconnecting delivers those. Every other recorded outcome is final for the ledger.
NOT_FINAL = frozenset({"integration_disabled"})


def handled_actions(config: Config, company_id: str) -> dict[str, str]:
    """Action id → its final outcome in the company's sync history (the last 8 days): `created`,
    `failed` (a `dlq retry` delivers it again) or `skipped:<reason>`."""
    outcomes: dict[str, str] = {}
    try:
        records = read_records(config, company_id)
    except ValueError:  # no history topic yet: nothing was delivered
        return outcomes
    for record in records:
        if not record.action_id or record.outcome not in ("created", "skipped", "failed"):
            continue
        if record.outcome == "skipped" and record.reason in NOT_FINAL:
            outcomes.pop(record.action_id, None)
            continue
        outcomes[record.action_id] = record.outcome if record.outcome != "skipped" else f"skipped:{record.reason}"
    return outcomes


class Pace:
    """At most `rate` sends a second, so live traffic keeps the broker and the worker."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = clock()

    def wait(self) -> None:
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


def progress(done: int, total: int, what: str) -> None:
    """A bar on a terminal, a line every 10 % elsewhere (stderr: stdout stays the report)."""
    if not total:
        return
    if sys.stderr.isatty():
        width = 30
        filled = width * done // total
        print(f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    elif done == total or done % max(1, total // 10) == 0:
        print(f"{what}: {done}/{total}", file=sys.stderr, flush=True)


def send(config: Config, run_id: str, candidates: list[Candidate], rate: float, report: Report) -> None:
    """Each candidate again on its own topic, paced, its headers kept and the run's id added."""
    producer = Producer({**clients.librdkafka(config), "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"})
    pace = Pace(rate)
    for i, c in enumerate(candidates, 1):
        pace.wait()
        headers = [h for h in c.headers if h[0] != BACKFILL_HEADER] + [(BACKFILL_HEADER, run_id.encode())]
        producer.produce(c.topic, key=c.key, value=c.value, headers=headers)
        producer.poll(0)
        report.sent += 1
        progress(i, len(candidates), "sending")
    if producer.flush(60) != 0:
        raise RuntimeError("some records were not acknowledged by the broker")


def follow(config: Config, company_id: str, new_actions: set[str], started_ms: int, timeout: float, report: Report) -> None:
    """Until every new action has an outcome in the history written since the run started."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, str] = {}
        for record in read_records(config, company_id):
            if record.action_id in new_actions and record.at_ms >= started_ms and record.outcome in ("created", "skipped", "failed"):
                seen[record.action_id] = record.outcome if record.outcome != "skipped" else f"skipped:{record.reason}"
        progress(len(seen), len(new_actions), "delivered")
        if len(seen) == len(new_actions) or time.monotonic() > deadline:
            report.outcomes = Counter(seen.values())
            report.created = report.outcomes.get("created", 0)
            report.waiting = len(new_actions) - len(seen)
            return
        time.sleep(1.0)


def backfill(
    config: Config, codec: Codec, settings: SettingsView, company_id: str, since_ms: int, until_ms: int | None,
    event_types: Iterable[EventType] | None, *, run_id: str, dry_run: bool, rate: float, wait_seconds: float, now_ms: int,
) -> Report:
    """Scan, compare with what was delivered, then (unless a dry run) re-send and follow."""
    report = Report(dry_run=dry_run)
    candidates = scan(config, codec, settings, company_id, since_ms, until_ms, event_types, report, now_ms)
    handled = handled_actions(config, company_id)
    new_actions: set[str] = set()
    resend: list[Candidate] = []
    for c in candidates:
        report.planned += len(c.action_ids)
        fresh = [a for a in c.action_ids if a not in handled]
        for a in c.action_ids:
            if handled.get(a) == "created":
                report.already_delivered += 1
            elif a in handled:
                report.already_handled[handled[a]] += 1
        if fresh:
            new_actions.update(fresh)
            resend.append(c)
    report.to_deliver = len(new_actions)
    if dry_run or not resend:
        return report
    send(config, run_id, resend, rate, report)
    if wait_seconds > 0:
        follow(config, company_id, new_actions, now_ms, wait_seconds, report)
    return report


def format_report(company_id: str, r: Report) -> str:
    lines = [
        f"backfill of {company_id}{' (dry run: nothing sent)' if r.dry_run else ''}",
        f"  events found:       {r.events}" + (f"  ({', '.join(f'{k} {v}' for k, v in sorted(r.by_event_type.items()))})" if r.by_event_type else ""),
        f"  actions planned:    {r.planned}",
        f"  already delivered:  {r.already_delivered}",
        f"  to deliver:         {r.to_deliver}",
    ]
    if r.already_handled:
        lines.append("  already handled:    " + ", ".join(f"{k} {v}" for k, v in sorted(r.already_handled.items()))
                     + " (the ledger keeps these; failures: crm-sync dlq retry)")
    if r.skipped:
        lines.append("  skipped:            " + ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())))
    if r.unreadable:
        lines.append(f"  unreadable records: {r.unreadable} (dead-lettered when they first came: crm-sync dlq list)")
    if not r.dry_run:
        lines.append(f"  events re-sent:     {r.sent}")
    if r.outcomes or r.waiting:
        lines.append("  outcomes:           " + (", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())) or "none yet"))
        if r.waiting:
            lines.append(f"  still waiting:      {r.waiting} (paused, deferred or slow: crm-sync history --company {company_id})")
    return "\n".join(lines)
