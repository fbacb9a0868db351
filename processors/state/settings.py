"""The settings table: every worker reads the whole compacted settings topic (a global table).

Settings are small and every event may need any company's document, so each worker replicates all
of it from the topic itself (a global `Table`; the topic is its own changelog). It reads
`read_committed`, so an apply-to-other-meeting-types transaction shows up all at once or not at
all.

Only audited changes are applied (SPEC §11, `processors.domain.audit.verdict`): the reader also
reads the audit topic, and takes a versioned settings record only once it has read the audit entry
the record names, and only as the next version of the document it holds. A record whose entry is
not there yet waits (it and every record after it, so the order stays the topic's); once the audit
topic has been read to an end measured after that record was read, an entry still missing was never
committed with it, and the record is refused. Refused and malformed records are ignored here
(counted and logged, their verdict kept by position); the settings guard stage dead-letters them,
so they are reported once, not once per worker.

Readiness (SPEC §11, no decision on missing state): the table is `ready` only once it has read the
topic to its end as `read_committed` sees it and decided every record. An admin transaction left
open holds that back; the reader then says so in the log, keeps reading, and stays not ready, and
the worker plans nothing. A reader that restarts after a failure rebuilds a new table beside the
live one, which keeps answering (and the store stays ready), and swaps it in once caught up.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple

from confluent_kafka import Message

from connectors.retry import RetryPolicy
from processors.codec import Codec, DecodeError
from processors.domain.audit import Accept, AuditRecord, Refusal, Stamp, verdict
from processors.domain.model import CompanySettings, MeetingTypeSettings, ValidationError
from processors.domain.records import company_from_record, meeting_type_from_record
from processors.domain.rules import SettingsError, company_key, meeting_type_key, parse_settings_key
from processors.kafka.read import NotCaughtUp, TopicReader
from processors.state.table import Table

log = logging.getLogger(__name__)
# The warning for each refused or malformed settings record (the CLI counts these instead of printing each).
REFUSED_LOG = "settings record refused"

ChangeListener = Callable[[str], None]
Doc = CompanySettings | MeetingTypeSettings
RESTART_POLICY = RetryPolicy(base=1.0, cap=30.0, max_elapsed=None)


class ParsedSettings(NamedTuple):
    kind: str
    company_id: str
    meeting_type_id: str | None
    key: str  # canonical
    doc: Doc | None  # None: a tombstone
    stamp: Stamp | None  # None: a tombstone


def parse_settings(codec: Codec, key: bytes | None, value: bytes | None) -> ParsedSettings:
    """Key bytes + value bytes → the document and its stamp (version, audit id).

    Raises SettingsError / DecodeError / ValidationError / UnicodeDecodeError with the reason for a
    malformed record.
    """
    if key is None:
        raise SettingsError("settings record without a key")
    parsed = parse_settings_key(key.decode("utf-8", errors="strict"))
    canonical = company_key(parsed.company_id) if parsed.kind == "company" else meeting_type_key(parsed.company_id, parsed.meeting_type_id or "")
    if value is None:
        return ParsedSettings(parsed.kind, parsed.company_id, parsed.meeting_type_id, canonical, None, None)
    decoded = codec.decode(value)
    if parsed.kind == "company":
        if decoded.schema_name != "CompanySettings":
            raise SettingsError(f"key is a company key but the record is {decoded.schema_name}")
        doc: Doc = company_from_record(decoded.value)
        if doc.company_id != parsed.company_id:
            raise SettingsError("company_id in the record does not match the key")
    else:
        if decoded.schema_name != "MeetingTypeSettings":
            raise SettingsError(f"key is a meeting-type key but the record is {decoded.schema_name}")
        doc = meeting_type_from_record(decoded.value)
        if (doc.company_id, doc.meeting_type_id) != (parsed.company_id, parsed.meeting_type_id):
            raise SettingsError("company_id/meeting_type_id in the record do not match the key")
    version = decoded.value.get("version") or 0
    audit_id = decoded.value.get("audit_id") or None
    if not isinstance(version, int) or version < 0:
        raise SettingsError(f"version must be a whole number ≥ 0, got {version!r}")
    return ParsedSettings(parsed.kind, parsed.company_id, parsed.meeting_type_id, canonical, doc, Stamp(version, audit_id))


def parse_settings_record(
    codec: Codec, key: bytes | None, value: bytes | None
) -> tuple[str, str | None, CompanySettings | MeetingTypeSettings | None]:
    """Key bytes + value bytes → (kind, meeting_type_id, document or None for a tombstone)."""
    parsed = parse_settings(codec, key, value)
    return parsed.kind, parsed.meeting_type_id, parsed.doc


_MALFORMED = (SettingsError, DecodeError, ValidationError, UnicodeDecodeError)


@dataclass(frozen=True)
class Decision:
    """What the table did with one settings record: `refusal` None when it was applied or superseded."""

    refusal: Refusal | None
    detail: str


@dataclass
class _Replica:
    """One build of the table: the documents and their stamps, the audit entries read so far (slim:
    no changes), the records waiting for their entry, and the refusals by (partition, offset)."""

    table: Table[Doc] = field(default_factory=lambda: Table(partitioned=False))
    stamps: dict[str, Stamp] = field(default_factory=dict)
    audits: dict[str, AuditRecord] = field(default_factory=dict)
    latest_audited: dict[str, int] = field(default_factory=dict)
    pending: deque[tuple[Message, ParsedSettings | Exception]] = field(default_factory=deque)
    refusals: dict[tuple[int, int], Decision] = field(default_factory=dict)
    decided: dict[int, int] = field(default_factory=dict)  # partition → first offset not decided yet


class _AuditFeed:
    """The audit topic's reader, assigned once the topic exists (no admin may have written yet)."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader
        self._assigned = False

    def read(self, on_record: Callable[[Message], None], timeout: float) -> None:
        if not self._assigned:
            partitions = self.reader.partitions(timeout)
            if not partitions:
                return
            self.reader.assign(partitions)
            self._assigned = True
        self.reader.read_to_end(on_record, timeout)


class SettingsStore:
    """An in-memory replica of the settings topic, kept current by a background thread."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topic: str,
        codec: Codec,
        *,
        audit_topic: str,
        ready_timeout: float = 30.0,
        reader_factory: Callable[[str], TopicReader] | None = None,
    ) -> None:
        self._conf = kafka_config
        self._topic = topic
        self._audit_topic = audit_topic
        self._reader = reader_factory or (lambda name: TopicReader(kafka_config, name))
        self._codec = codec
        self._ready_timeout = ready_timeout
        self._live = _Replica()
        self._lock = threading.Lock()
        self._decided = threading.Condition(self._lock)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._listeners: list[ChangeListener] = []
        self._thread: threading.Thread | None = None
        self.rejected = 0
        self.ends: dict[int, int] = {}  # after `load_once`: the offsets read up to, per partition

    # -- SettingsView --
    def company(self, company_id: str) -> CompanySettings | None:
        with self._lock:
            doc = self._live.table.get(company_key(company_id))
        return doc if isinstance(doc, CompanySettings) else None

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        with self._lock:
            doc = self._live.table.get(meeting_type_key(company_id, meeting_type_id))
        return doc if isinstance(doc, MeetingTypeSettings) else None

    def meeting_types(self, company_id: str) -> list[MeetingTypeSettings]:
        with self._lock:
            docs = [d for _, d in self._live.table.items() if isinstance(d, MeetingTypeSettings) and d.company_id == company_id]
        return sorted(docs, key=lambda d: d.meeting_type_id)

    def companies(self) -> list[CompanySettings]:
        with self._lock:
            return [d for _, d in self._live.table.items() if isinstance(d, CompanySettings)]

    def stamp(self, key: str) -> Stamp | None:
        """The version and audit id of the document applied under `key` (None: no document)."""
        with self._lock:
            return self._live.stamps.get(key)

    def next_version(self, key: str) -> int:
        """The version a change of `key` writes: after the applied one, and after any the audit
        vouches for (a document whose record compaction removed after a refused one is re-saved
        past it, so rebuilt tables do not pass the new one over as superseded)."""
        with self._lock:
            stamp = self._live.stamps.get(key)
            return max(stamp.version if stamp is not None else 0, self._live.latest_audited.get(key, 0)) + 1

    def add_listener(self, listener: ChangeListener) -> None:
        """Called from the reader thread with the company id of every change."""
        self._listeners.append(listener)

    def wait_decision(self, partition: int, offset: int, timeout: float) -> Decision | None:
        """What the table did with the settings record at (partition, offset); None if it has not
        decided within `timeout` (not read yet, or waiting for its audit entry)."""
        with self._decided:
            self._decided.wait_for(lambda: self._live.decided.get(partition, 0) > offset, timeout)
            if self._live.decided.get(partition, 0) <= offset:
                return None
            return self._live.refusals.get((partition, offset), Decision(None, "applied"))

    # -- lifecycle --
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="settings-store", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def load_once(self, timeout: float = 30.0) -> None:
        """Read up to the current end and stop: what the CLI needs for a consistent view.

        Raises `NotCaughtUp` when the end is not reached in time (e.g. a transaction left open).
        """
        replica = self._fresh()
        with self._reader(self._topic) as reader, self._reader(self._audit_topic) as audit_reader:
            audit = _AuditFeed(audit_reader)
            reader.assign(reader.partitions(timeout))
            audit.read(lambda msg: self._index(replica, msg), timeout)
            reader.read_to_end(lambda msg: self._offer(replica, msg, True), timeout)
            self.ends = dict(reader.ends)
            self._settle(replica, audit, timeout, True)

    def _fresh(self) -> _Replica:
        """An empty live table, to build before the store is ready."""
        with self._decided:
            self._live = _Replica()
            self._decided.notify_all()
            return self._live

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with self._reader(self._topic) as reader, self._reader(self._audit_topic) as audit_reader:
                    audit = _AuditFeed(audit_reader)
                    # Until ready, the table being built is the live one (nothing is served from it
                    # meanwhile, and a failed attempt's records are not kept); once ready, a rebuild
                    # goes beside it, so the live one keeps answering until this one is caught up.
                    first = not self._ready.is_set()
                    replica = self._fresh() if first else _Replica()
                    if not self._catch_up(replica, reader, audit, notify=first):
                        return
                    if not first:
                        self._swap(replica)
                    failures = 0
                    while not self._stop.is_set():
                        reader.follow(lambda msg: self._follow(replica, audit, msg), 0.5)
                        self._follow_settle(replica, audit)
            except Exception:
                failures += 1
                wait = RESTART_POLICY.backoff(failures)
                log.exception("settings reader failed; rebuilding its table beside the live one", extra={"retry_in": round(wait, 2)})
                self._stop.wait(wait)

    def _catch_up(self, replica: _Replica, reader: TopicReader, audit: _AuditFeed, *, notify: bool) -> bool:
        """Until the topic is read to its end and every record decided (not ready meanwhile,
        whatever the deadline says); False when stopped first."""
        while not self._stop.is_set():
            partitions = reader.partitions(self._ready_timeout)
            if not partitions:
                log.warning("settings topic not found; waiting for it", extra={"topic": self._topic})
                self._stop.wait(1.0)
                continue
            reader.assign(partitions)
            break
        while not self._stop.is_set():
            try:
                audit.read(lambda msg: self._index(replica, msg), self._ready_timeout)
                reader.read_to_end(lambda msg: self._offer(replica, msg, notify), self._ready_timeout)
                self._settle(replica, audit, self._ready_timeout, notify)
            except NotCaughtUp as exc:
                log.warning(
                    "settings not read to their end yet: planning waits (is an admin transaction open?)",
                    extra={"reason": str(exc)},
                )
                continue
            if not self._ready.is_set():
                log.info("settings table ready", extra={"topic": self._topic, "documents": len(replica.table)})
            self._ready.set()
            return True
        return False

    def _swap(self, replica: _Replica) -> None:
        """Put a rebuilt table in place of the live one; the companies whose documents differ are changes."""
        with self._decided:
            old, self._live = self._live, replica
            self._decided.notify_all()
            keys = {k for k, _ in old.table.items()} | {k for k, _ in replica.table.items()}
            changed = sorted({parse_settings_key(k).company_id for k in keys if old.table.get(k) != replica.table.get(k)})
        log.info("settings table rebuilt and swapped in", extra={"documents": len(replica.table), "companies_changed": len(changed)})
        for company_id in changed:
            for listener in self._listeners:
                listener(company_id)

    def _index(self, replica: _Replica, msg: Message) -> None:
        """One audit entry: kept by id (without its changes), and the highest version per key."""
        try:
            entry = AuditRecord.from_json(msg.value())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("settings audit entry ignored", extra={"reason": str(exc), "partition": msg.partition(), "offset": msg.offset()})
            return
        if entry.id is None or entry.version is None:
            return  # written before versions: vouches for no record
        replica.audits[entry.id] = replace(entry, changes={})
        replica.latest_audited[entry.key] = max(entry.version, replica.latest_audited.get(entry.key, 0))

    def _offer(self, replica: _Replica, msg: Message, notify: bool) -> None:
        """Decide a settings record now, or queue it behind the ones waiting for their audit entry."""
        try:
            parsed: ParsedSettings | Exception = parse_settings(self._codec, msg.key(), msg.value())
        except _MALFORMED as exc:
            parsed = exc
        waits = isinstance(parsed, ParsedSettings) and parsed.stamp is not None and parsed.stamp.audit_id is not None and parsed.stamp.audit_id not in replica.audits
        if replica.pending or waits:
            replica.pending.append((msg, parsed))
        else:
            self._decide(replica, msg, parsed, notify)

    def _follow(self, replica: _Replica, audit: _AuditFeed, msg: Message) -> None:
        """A record arriving on the live table: one waiting for its audit entry is settled at once
        (planning sees a change as soon as its entry is read, not after the follow period)."""
        self._offer(replica, msg, True)
        self._follow_settle(replica, audit)

    def _follow_settle(self, replica: _Replica, audit: _AuditFeed) -> None:
        try:
            self._settle(replica, audit, self._ready_timeout, True)
        except NotCaughtUp as exc:
            log.warning("settings audit not read to its end yet: records wait for their entry", extra={"reason": str(exc)})

    def _settle(self, replica: _Replica, audit: _AuditFeed, timeout: float, notify: bool) -> None:
        """Decide the waiting records: after the audit topic was read to an end measured now (after
        they were read), an entry not found was never committed with its record.

        Raises NotCaughtUp when the audit topic is not read to its end in time (they keep waiting)."""
        if not replica.pending:
            return
        audit.read(lambda msg: self._index(replica, msg), timeout)
        while replica.pending:
            msg, parsed = replica.pending.popleft()
            self._decide(replica, msg, parsed, notify)

    def _decide(self, replica: _Replica, msg: Message, parsed: ParsedSettings | Exception, notify: bool) -> None:
        refusal: Refusal | None
        if isinstance(parsed, Exception):
            refusal, detail = Refusal.MALFORMED, str(parsed)
        elif parsed.doc is None or parsed.stamp is None:
            refusal, detail = Refusal.TOMBSTONE, f"a tombstone for {parsed.key}: the admin tool never deletes a document"
        else:
            stamp = parsed.stamp
            applied = replica.stamps.get(parsed.key)
            entry = replica.audits.get(stamp.audit_id) if stamp.audit_id else None
            outcome = verdict(parsed.key, applied, stamp, entry, replica.latest_audited.get(parsed.key))
            refusal = outcome if isinstance(outcome, Refusal) else None
            detail = _detail(outcome, parsed.key, applied, stamp)
            if outcome is Accept.APPLY:
                with self._lock:
                    replica.table.put(parsed.key, parsed.doc)
                    replica.stamps[parsed.key] = stamp
                if notify:
                    for listener in self._listeners:
                        listener(parsed.company_id)
        with self._decided:
            if refusal is not None:
                replica.refusals[(msg.partition(), msg.offset())] = Decision(refusal, detail)
                self.rejected += 1
            replica.decided[msg.partition()] = max(replica.decided.get(msg.partition(), 0), msg.offset() + 1)
            self._decided.notify_all()
        if refusal is not None:
            log.warning(
                REFUSED_LOG,
                extra={"reason": refusal.value, "detail": detail, "partition": msg.partition(), "offset": msg.offset()},
            )


def _detail(outcome: Accept | Refusal, key: str, applied: Stamp | None, record: Stamp) -> str:
    """The one line a dead letter and the log carry for a verdict."""
    held = f"version {applied.version}" if applied is not None else "no document"
    messages = {
        Accept.APPLY: "applied",
        Accept.SUPERSEDED: f"version {record.version} of {key} is superseded by a newer audited version",
        Refusal.UNVERSIONED: f"a record without a version for {key}, which holds {held}",
        Refusal.AUDIT_MISSING: f"version {record.version} of {key}: no audit entry {record.audit_id} was committed with it",
        Refusal.AUDIT_MISMATCH: f"version {record.version} of {key}: audit entry {record.audit_id} vouches for another key or version",
        Refusal.VERSION_REPEATED: f"version {record.version} of {key} is not newer than the applied {held}",
        Refusal.VERSION_SKIPPED: f"version {record.version} of {key} does not follow the applied {held}",
    }
    return messages.get(outcome, str(outcome))
