"""The settings table: every worker reads the whole compacted settings topic (a global table).

Settings are small and every event may need any company's document, so each worker replicates all
of it from the topic itself (the topic is its own changelog; no extra table changelog to keep in
step). It reads `read_committed`, so an apply-to-other-meeting-types transaction shows up all at
once or not at all. Records that do not decode or validate are ignored here (counted and logged);
the settings guard stage is the one that dead-letters them, so they are reported once, not once per
worker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processors.codec import Codec, DecodeError
from processors.model import (
    CompanySettings,
    MeetingTypeSettings,
    ValidationError,
    company_from_record,
    meeting_type_from_record,
)
from processors.rules import SettingsError, parse_settings_key

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


class SettingsStore:
    """An in-memory replica of the settings topic, kept current by a background thread."""

    def __init__(self, kafka_config: dict[str, str], topic: str, codec: Codec) -> None:
        self._conf = {
            **kafka_config,
            "group.id": f"crm-sync-settings-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
        self._topic = topic
        self._codec = codec
        self._companies: dict[str, CompanySettings] = {}
        self._meeting_types: dict[tuple[str, str], MeetingTypeSettings] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._listeners: list[ChangeListener] = []
        self._thread: threading.Thread | None = None
        self.rejected = 0

    # -- SettingsView --
    def company(self, company_id: str) -> CompanySettings | None:
        with self._lock:
            return self._companies.get(company_id)

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        with self._lock:
            return self._meeting_types.get((company_id, meeting_type_id))

    def meeting_types(self, company_id: str) -> list[MeetingTypeSettings]:
        with self._lock:
            return [doc for (c, _), doc in sorted(self._meeting_types.items()) if c == company_id]

    def companies(self) -> list[CompanySettings]:
        with self._lock:
            return list(self._companies.values())

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
        """Read up to the current end and stop: what the CLI needs for a consistent view."""
        consumer = Consumer(self._conf)
        try:
            self._catch_up(consumer, timeout)
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer, timeout: float) -> list[TopicPartition]:
        meta = consumer.list_topics(self._topic, timeout=timeout)
        topic = meta.topics.get(self._topic)
        if topic is None or topic.error is not None:
            return []
        return [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)]

    def _catch_up(self, consumer: Consumer, timeout: float) -> list[TopicPartition]:
        parts = self._partitions(consumer, timeout)
        consumer.assign(parts)
        ends = {}
        for tp in parts:
            _, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            ends[tp.partition] = high
        deadline = time.monotonic() + timeout
        position = {tp.partition: 0 for tp in parts}
        while any(position[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                for tp in consumer.position(parts):
                    if tp.offset >= 0:
                        position[tp.partition] = tp.offset
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("settings read error", extra={"error": str(msg.error())})
                continue
            self._apply(msg.key(), msg.value())
            position[msg.partition()] = msg.offset() + 1
        return parts

    def _run(self) -> None:
        while not self._stop.is_set():
            consumer = Consumer(self._conf)
            try:
                parts = self._catch_up(consumer, timeout=30.0)
                if not parts:
                    consumer.close()
                    time.sleep(1.0)
                    continue
                self._ready.set()
                while not self._stop.is_set():
                    msg = consumer.poll(0.2)
                    if msg is None or msg.error():
                        continue
                    self._apply(msg.key(), msg.value())
            except Exception:
                log.exception("settings reader failed; restarting it")
                time.sleep(1.0)
            finally:
                consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            kind, meeting_type_id, doc = parse_settings_record(self._codec, key, value)
        except (SettingsError, DecodeError, ValidationError, UnicodeDecodeError) as exc:
            self.rejected += 1
            log.warning("settings record ignored", extra={"reason": str(exc)})
            return
        company_id = parse_settings_key(key.decode()).company_id  # type: ignore[union-attr]
        with self._lock:
            if kind == "company":
                if doc is None:
                    self._companies.pop(company_id, None)
                else:
                    self._companies[company_id] = doc  # type: ignore[assignment]
            else:
                assert meeting_type_id is not None
                if doc is None:
                    self._meeting_types.pop((company_id, meeting_type_id), None)
                else:
                    self._meeting_types[(company_id, meeting_type_id)] = doc  # type: ignore[assignment]
        for listener in self._listeners:
            listener(company_id)
