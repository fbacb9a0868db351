"""Failure history (SPEC §7, §11): list, show, retry and resolve dead letters — the library API
behind `crm-sync dlq …`.

The dead-letter topic holds the dead letters and, beside them, what admins did about each
(`DeadLetterStatus`: retried, resolved), so the topic alone is the whole failure history.
- A failure that carries an action goes back through the **retry topic** with a fresh give-up
  clock: the releaser re-checks the company's connection and pause, so a retry obeys them like any
  delivery (held while paused, dropped as `integration_disabled` when disconnected), and the
  sinks' ledger keeps it idempotent (retrying something that did succeed creates nothing).
- A failure from before planning (decode, validate, plan) is retried by re-ingesting the original
  record on its original topic, once its cause is fixed; a letter that keeps only a prefix of a
  large original cannot be re-ingested (it says where the whole record is).
- Retries and resolutions are counted in sync history.

Reads take only the range asked for. Dead letters are keyed by company, so one company's are on
one partition; `--since` starts each partition at the broker's time index (`offsets_for_times`);
and the compacted dead-letter index (`processors.domain.deadletter_index`) finds one dead letter by
id in one partition of the index plus a short stretch of its company's partition. A call never
reads the whole 30 days unless it asks for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from confluent_kafka import Message, Producer

from processors.codec import Codec, DecodeError
from processors.config import Config
from processors.domain.deadletter_index import IndexEntry, entry_of, parse_entry
from processors.domain.history import DEFAULT_TIMEZONE, HistoryRecord, local_day
from processors.domain.records import action_from_record, action_headers, action_to_record
from processors.kafka import clients
from processors.kafka.producer import partition_for
from processors.kafka.read import TopicReader

RE_INGEST_STAGES = frozenset({"decode", "validate", "plan"})
# How far before an index entry's created_at its dead letter may be stamped by the broker (the
# worker sets created_at just before it sends; the record's timestamp is the send's).
LOOKUP_MARGIN_MS = 5 * 60 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Failure:
    dead_letter_id: str
    record: dict[str, Any]
    offset: int
    partition: int
    statuses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resolved(self) -> bool:
        return any(s["status"] == "resolved" for s in self.statuses)

    @property
    def retries(self) -> int:
        return sum(1 for s in self.statuses if s["status"] == "retried")


def read_dead_letters(
    config: Config, codec: Codec, *, company_id: str | None = None, since_ms: int | None = None, timeout: float = 30.0
) -> list[Failure]:
    """The failure history in the range asked for, oldest first; one entry per dead-letter id (its
    latest record), with what admins did about it. `company_id` reads that company's partition
    only; `since_ms` starts every partition at that time."""
    latest: dict[str, Failure] = {}
    statuses: dict[str, list[dict[str, Any]]] = {}

    def add(msg: Message) -> None:
        try:
            decoded = codec.decode(msg.value())
        except DecodeError:
            return
        record = decoded.value
        if decoded.schema_name == "DeadLetterStatus":
            statuses.setdefault(record["dead_letter_id"], []).append(record)
        elif decoded.schema_name == "DeadLetter":
            latest[record["dead_letter_id"]] = Failure(record["dead_letter_id"], record, msg.offset(), msg.partition())

    topic = config.topics.dead_letter
    with TopicReader(clients.librdkafka(config), topic, isolation="read_uncommitted") as reader:
        partitions = reader.partitions(timeout)
        if company_id is not None and partitions:
            partitions = [partition_for(company_id.encode(), len(partitions))]
        # A dead letter stamped just before `since` may carry a created_at after it: read a margin more.
        reader.assign(partitions, None if since_ms is None else since_ms - LOOKUP_MARGIN_MS, timeout)
        reader.read_to_end(add, timeout)
    for failure in latest.values():
        failure.statuses = statuses.get(failure.dead_letter_id, [])
    found = [f for f in latest.values() if company_id is None or f.record.get("company_id") == company_id]
    if since_ms is not None:
        found = [f for f in found if f.record.get("created_at", 0) >= since_ms]
    return sorted(found, key=lambda f: (f.record.get("created_at", 0), f.dead_letter_id))


class _Found(Exception):
    """Ends a read early: the record looked for was seen, or the stretch it could be in has passed."""


def lookup(config: Config, dead_letter_id: str, timeout: float = 30.0) -> IndexEntry | None:
    """The index entry of one dead letter: one partition of the compacted index is read."""
    entry: IndexEntry | None = None

    def add(msg: Message) -> None:
        nonlocal entry
        if msg.key() == dead_letter_id.encode():
            entry = parse_entry(msg.key(), msg.value())  # the latest one wins (a tombstone clears it)

    topic = config.topics.dead_letter_index
    with TopicReader(clients.librdkafka(config), topic, isolation="read_uncommitted") as reader:
        partitions = reader.partitions(timeout)
        if not partitions:
            return None
        reader.assign([partition_for(dead_letter_id.encode(), len(partitions))])
        reader.read_to_end(add, timeout)
    return entry


def find_failure(config: Config, codec: Codec, dead_letter_id: str, timeout: float = 30.0) -> Failure | None:
    """One dead letter by id: its index entry, then a short stretch of its company's partition read
    from its time. None when the index does not know it (see `reindex`)."""
    entry = lookup(config, dead_letter_id, timeout)
    if entry is None:
        return None
    found: Failure | None = None

    def add(msg: Message) -> None:
        nonlocal found
        if msg.timestamp()[1] > entry.created_at + LOOKUP_MARGIN_MS:
            raise _Found
        try:
            decoded = codec.decode(msg.value())
        except DecodeError:
            return
        if decoded.schema_name == "DeadLetter" and decoded.value["dead_letter_id"] == dead_letter_id:
            found = Failure(dead_letter_id, decoded.value, msg.offset(), msg.partition(), list(entry.statuses))

    topic = config.topics.dead_letter
    with TopicReader(clients.librdkafka(config), topic, isolation="read_uncommitted") as reader:
        partitions = reader.partitions(timeout)
        if not partitions:
            return None
        reader.assign([partition_for((entry.company_id or "").encode(), len(partitions))], entry.created_at - LOOKUP_MARGIN_MS, timeout)
        try:
            reader.read_to_end(add, timeout)
        except _Found:
            pass
    return found


def reindex(config: Config, codec: Codec, timeout: float = 120.0) -> int:
    """Rebuild the index from the whole dead-letter topic (after an upgrade from a version without
    it, or to repair it); idempotent. Returns how many entries were written."""
    failures = read_dead_letters(config, codec, timeout=timeout)
    producer = Producer({**clients.librdkafka(config), "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"})
    for failure in failures:
        entry = entry_of(failure.record, tuple(failure.statuses))
        producer.produce(config.topics.dead_letter_index, key=entry.key, value=entry.to_json())
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("some index entries were not acknowledged by the broker")
    return len(failures)


def filter_failures(
    failures: Iterable[Failure],
    *,
    company_id: str | None = None,
    crm: str | None = None,
    error_class: str | None = None,
    since_ms: int | None = None,
    include_resolved: bool = False,
) -> list[Failure]:
    def keep(f: Failure) -> bool:
        r = f.record
        return (
            (include_resolved or not f.resolved)
            and (company_id is None or r.get("company_id") == company_id)
            and (crm is None or (r.get("crm") or "").lower() == crm.lower())
            and (error_class is None or r.get("error_class") == error_class)
            and (since_ms is None or r.get("created_at", 0) >= since_ms)
        )

    return [f for f in failures if keep(f)]


class FailureAdmin:
    """Sends retries, statuses and their history records; one producer, flushed per call."""

    def __init__(
        self, config: Config, codec: Codec | None = None, actor: str | None = None, timezone_of: Callable[[str], str] | None = None
    ) -> None:
        self._config = config
        self._timezone_of = timezone_of or (lambda company_id: DEFAULT_TIMEZONE)
        self._codec = codec or Codec()
        self._actor = actor
        # murmur2, as the worker's own producer: a re-sent action lands where its earlier copies did.
        self._producer = Producer({**clients.librdkafka(config), "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"})
        self._history_partitions: int | None = None

    def retry(self, failures: Iterable[Failure], on_skip: Callable[[Failure, str], None]) -> int:
        sent = 0
        for failure in failures:
            why = self._send_retry(failure)
            if why is not None:
                on_skip(failure, why)
                continue
            self._status(failure, "retried")
            sent += 1
        self._flush()
        return sent

    def resolve(self, failures: Iterable[Failure], note: str | None = None) -> int:
        done = 0
        for failure in failures:
            if not failure.resolved:
                self._status(failure, "resolved", note)
                done += 1
        self._flush()
        return done

    def _send_retry(self, failure: Failure) -> str | None:
        """Sends the retry; returns why it cannot be retried, or None."""
        record = failure.record
        if record.get("action"):
            now = now_ms()
            action = action_from_record(record["action"])
            # A fresh give-up clock, due now: the retry releaser checks pause and connection first.
            retried = replace(action, attempt=action.attempt + 1, due_at=now, first_due_at=now)
            headers = [*action_headers(retried), ("retry_of", failure.dead_letter_id.encode())]
            value = self._codec.encode("Action", action_to_record(retried))
            self._producer.produce(self._config.topics.retry, key=action.company_id.encode(), value=value, headers=headers)
            return None
        if record["stage"] in RE_INGEST_STAGES and record.get("original_value") is not None:
            if record["source_topic"] not in self._config.topics.inputs:
                return f"its source topic {record['source_topic']} is not an input topic"
            if (record.get("original_length") or 0) > len(record["original_value"]):
                return (
                    f"it keeps only the first {len(record['original_value'])} of the original's {record['original_length']} bytes; "
                    f"the whole record is at {record['source_topic']} partition {record['source_partition']} offset {record['source_offset']}"
                )
            headers = [(h["key"], h["value"]) for h in record.get("original_headers") or []]
            self._producer.produce(record["source_topic"], key=record.get("original_key"), value=record["original_value"], headers=headers)
            return None
        return f"a {record['stage']} failure carries no action or input record to send again; resolve it instead"

    def _status(self, failure: Failure, status: str, note: str | None = None) -> None:
        at = now_ms()
        doc = {"dead_letter_id": failure.dead_letter_id, "status": status, "at": at, "by": self._actor, "note": note}
        key = (failure.record.get("company_id") or "").encode()
        self._producer.produce(self._config.topics.dead_letter, key=key, value=self._codec.encode("DeadLetterStatus", doc))
        failure.statuses = [*failure.statuses, doc]
        entry = entry_of(failure.record, tuple(failure.statuses))
        self._producer.produce(self._config.topics.dead_letter_index, key=entry.key, value=entry.to_json())
        company = failure.record.get("company_id")
        if company:
            action = failure.record.get("action") or {}
            tz = self._timezone_of(company)
            rec = HistoryRecord(
                company, local_day(at, tz), tz, failure.record.get("crm") or "any", action.get("event_type") or "unknown",
                status, failure.record.get("error_code"), at, action.get("event_id") or "", action.get("action_id"),
                ref=failure.dead_letter_id,
            )
            self._producer.produce(
                self._config.topics.history, key=rec.key.encode(), value=rec.to_json(),
                partition=partition_for(company.encode(), self._partitions()),
            )

    def _partitions(self) -> int:
        if self._history_partitions is None:
            topic = self._producer.list_topics(self._config.topics.history, timeout=10).topics.get(self._config.topics.history)
            if topic is None or topic.error is not None or not topic.partitions:
                raise RuntimeError(f"history topic {self._config.topics.history} not found")
            self._history_partitions = len(topic.partitions)
        return self._history_partitions

    def _flush(self) -> None:
        if self._producer.flush(30) != 0:
            raise RuntimeError("some records were not acknowledged by the broker")
