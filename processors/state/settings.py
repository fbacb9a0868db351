"""The settings table: every worker reads the whole compacted settings topic (a global table).

Settings are small and every event may need any company's document, so each worker replicates all
of it from the topic itself (a global `Table`; the topic is its own changelog). It reads
`read_committed`, so an apply-to-other-meeting-types transaction shows up all at once or not at
all. Records that do not decode or validate are ignored here (counted and logged); the settings
guard stage is the one that dead-letters them, so they are reported once, not once per worker.

Readiness (SPEC §11, no decision on missing state): the table is `ready` only once it has read the
topic to its end as `read_committed` sees it. An admin transaction left open holds that back; the
reader then says so in the log, keeps reading, and stays not ready, and the worker plans nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from confluent_kafka import Message

from connectors.retry import RetryPolicy
from processors.codec import Codec, DecodeError
from processors.domain.model import CompanySettings, MeetingTypeSettings, ValidationError
from processors.domain.records import company_from_record, meeting_type_from_record
from processors.domain.rules import SettingsError, company_key, meeting_type_key, parse_settings_key
from processors.kafka.read import NotCaughtUp, TopicReader
from processors.state.table import Table

log = logging.getLogger(__name__)

ChangeListener = Callable[[str], None]


def parse_settings_record(
    codec: Codec, key: bytes | None, value: bytes | None
) -> tuple[str, str | None, CompanySettings | MeetingTypeSettings | None]:
    """Key bytes + value bytes → (kind, meeting_type_id, document or None for a tombstone).

    Raises SettingsError / DecodeError / ValidationError with the reason for a malformed record.
    """
    if key is None:
        raise SettingsError("settings record without a key")
    parsed = parse_settings_key(key.decode("utf-8", errors="strict"))
    if value is None:
        return parsed.kind, parsed.meeting_type_id, None
    decoded = codec.decode(value)
    if parsed.kind == "company":
        if decoded.schema_name != "CompanySettings":
            raise SettingsError(f"key is a company key but the record is {decoded.schema_name}")
        doc: CompanySettings | MeetingTypeSettings = company_from_record(decoded.value)
        if doc.company_id != parsed.company_id:
            raise SettingsError("company_id in the record does not match the key")
    else:
        if decoded.schema_name != "MeetingTypeSettings":
            raise SettingsError(f"key is a meeting-type key but the record is {decoded.schema_name}")
        doc = meeting_type_from_record(decoded.value)
        if (doc.company_id, doc.meeting_type_id) != (parsed.company_id, parsed.meeting_type_id):
            raise SettingsError("company_id/meeting_type_id in the record do not match the key")
    return parsed.kind, parsed.meeting_type_id, doc


Doc = CompanySettings | MeetingTypeSettings
RESTART_POLICY = RetryPolicy(base=1.0, cap=30.0, max_elapsed=None)


class SettingsStore:
    """An in-memory replica of the settings topic, kept current by a background thread."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topic: str,
        codec: Codec,
        *,
        ready_timeout: float = 30.0,
        reader_factory: Callable[[], TopicReader] | None = None,
    ) -> None:
        self._conf = kafka_config
        self._topic = topic
        self._reader = reader_factory or (lambda: TopicReader(kafka_config, topic))
        self._codec = codec
        self._ready_timeout = ready_timeout
        self._table: Table[Doc] = Table(partitioned=False)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._listeners: list[ChangeListener] = []
        self._thread: threading.Thread | None = None
        self.rejected = 0

    # -- SettingsView --
    def company(self, company_id: str) -> CompanySettings | None:
        with self._lock:
            doc = self._table.get(company_key(company_id))
        return doc if isinstance(doc, CompanySettings) else None

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        with self._lock:
            doc = self._table.get(meeting_type_key(company_id, meeting_type_id))
        return doc if isinstance(doc, MeetingTypeSettings) else None

    def meeting_types(self, company_id: str) -> list[MeetingTypeSettings]:
        with self._lock:
            docs = [d for _, d in self._table.items() if isinstance(d, MeetingTypeSettings) and d.company_id == company_id]
        return sorted(docs, key=lambda d: d.meeting_type_id)

    def companies(self) -> list[CompanySettings]:
        with self._lock:
            return [d for _, d in self._table.items() if isinstance(d, CompanySettings)]

    def add_listener(self, listener: ChangeListener) -> None:
        """Called from the reader thread with the company id of every change."""
        self._listeners.append(listener)

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
        with self._reader() as reader:
            reader.assign(reader.partitions(timeout))
            reader.read_to_end(self._apply, timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with self._reader() as reader:
                    self._catch_up(reader)
                    failures = 0
                    while not self._stop.is_set():
                        reader.follow(self._apply, 0.5)
            except Exception:
                failures += 1
                wait = RESTART_POLICY.backoff(failures)
                log.exception("settings reader failed; restarting it", extra={"retry_in": round(wait, 2)})
                self._stop.wait(wait)

    def _catch_up(self, reader: TopicReader) -> None:
        """Until the topic is read to its end (not ready meanwhile, whatever the deadline says)."""
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
                reader.read_to_end(self._apply, self._ready_timeout)
            except NotCaughtUp as exc:
                log.warning(
                    "settings not read to their end yet: planning waits (is an admin transaction open?)",
                    extra={"reason": str(exc)},
                )
                continue
            if not self._ready.is_set():
                log.info("settings table ready", extra={"topic": self._topic, "documents": len(self._table)})
            self._ready.set()
            return

    def _apply(self, msg: Message) -> None:
        key, value = msg.key(), msg.value()
        try:
            kind, meeting_type_id, doc = parse_settings_record(self._codec, key, value)
        except (SettingsError, DecodeError, ValidationError, UnicodeDecodeError) as exc:
            self.rejected += 1
            log.warning("settings record ignored", extra={"reason": str(exc)})
            return
        company_id = parse_settings_key(key.decode()).company_id  # type: ignore[union-attr]
        canonical = company_key(company_id) if kind == "company" else meeting_type_key(company_id, meeting_type_id or "")
        with self._lock:
            self._table.put(canonical, doc)
        for listener in self._listeners:
            listener(company_id)
