"""Admin operations (library API behind `crm-sync settings …` and `crm-sync dlq …`).

Every settings change publishes whole documents to the compacted settings topic through a
transactional producer: a change touching several documents (apply to other meeting types) becomes
visible all at once or not at all to the workers, which read `read_committed`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors import rules
from processors.codec import Codec, DecodeError, EncodeError
from processors.config import Config
from processors.model import (
    CompanySettings,
    Crm,
    EventType,
    FieldMapping,
    MeetingTypeSettings,
    ValidationError,
    action_from_record,
    action_headers,
    company_to_record,
    meeting_type_to_record,
    valid_timezone,
)
from processors.settings_store import SettingsStore, parse_settings_record
from processors.topics import topic_specs

Doc = CompanySettings | MeetingTypeSettings


def now_ms() -> int:
    return int(time.time() * 1000)


class SettingsAdmin:
    def __init__(self, config: Config, codec: Codec | None = None, actor: str | None = None) -> None:
        self._config = config
        self._codec = codec or Codec()
        self._actor = actor
        self._topic_checked = False

    # -- reading --
    def load(self) -> SettingsStore:
        store = SettingsStore(self._config.kafka_client_config(), self._config.topics.settings, self._codec)
        store.load_once()
        return store

    def show(self, company_id: str) -> tuple[CompanySettings, list[MeetingTypeSettings]]:
        store = self.load()
        company = store.company(company_id)
        if company is None:
            raise rules.SettingsError(f"unknown company: {company_id}")
        return company, store.meeting_types(company_id)

    # -- writing --
    def encode(self, doc: Doc) -> tuple[bytes, bytes]:
        """Key and value of a document, refused (SettingsError) if the workers' settings table would reject it.

        Checking with the workers' own parser before anything is sent keeps a multi-document change
        all-or-nothing: a document the table would drop can never leave the others applied alone.
        """
        if isinstance(doc, CompanySettings):
            key = rules.company_key(doc.company_id)
            schema, record = "CompanySettings", company_to_record(doc)
        else:
            key = rules.meeting_type_key(doc.company_id, doc.meeting_type_id)
            schema, record = "MeetingTypeSettings", meeting_type_to_record(doc)
        try:
            value = self._codec.encode(schema, record)
            parse_settings_record(self._codec, key.encode(), value)
        except (EncodeError, DecodeError, ValidationError) as exc:
            raise rules.SettingsError(f"invalid settings for {key}: {exc}") from None
        return key.encode(), value

    def ensure_topic(self) -> None:
        """Create the settings topic compacted if it is missing: a topic auto-created by the first
        admin write (before any worker ran) would be non-compacted and lose settings to retention."""
        if self._topic_checked:
            return
        topic = self._config.topics.settings
        client = AdminClient(self._config.kafka_client_config())
        if topic not in client.list_topics(timeout=30).topics:
            new = NewTopic(
                topic,
                num_partitions=self._config.topic_partitions,
                replication_factor=self._config.replication_factor,
                config=topic_specs(self._config)[topic],
            )
            try:
                client.create_topics([new], operation_timeout=30)[topic].result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        self._topic_checked = True

    def publish(self, docs: Sequence[Doc]) -> None:
        """All documents in one Kafka transaction, after every one of them passed `encode`."""
        records = [self.encode(doc) for doc in docs]
        self.ensure_topic()
        producer = Producer(
            {
                **self._config.kafka_client_config(),
                "transactional.id": f"crm-sync-admin-{uuid.uuid4().hex}",
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        producer.init_transactions(30)
        producer.begin_transaction()
        try:
            for key, value in records:
                producer.produce(self._config.topics.settings, key=key, value=value)
            producer.commit_transaction(30)
        except Exception:
            producer.abort_transaction(30)
            raise

    def _company(self, store: SettingsStore, company_id: str, create: bool = False) -> CompanySettings:
        company = store.company(company_id)
        if company is None:
            if not create:
                raise rules.SettingsError(f"unknown company: {company_id} (connect a CRM first)")
            company = rules.new_company(company_id, now_ms(), self._actor)
        return company

    def set_connected(self, company_id: str, crm: Crm, on: bool) -> CompanySettings:
        doc = rules.set_connected(self._company(self.load(), company_id, create=on), crm, on, now_ms(), self._actor)
        self.publish([doc])
        return doc

    def set_paused(self, company_id: str, paused: bool) -> CompanySettings:
        doc = rules.set_paused(self._company(self.load(), company_id), paused, now_ms(), self._actor)
        self.publish([doc])
        return doc

    def set_company_todo(self, company_id: str, event_type: EventType, on: bool) -> CompanySettings:
        doc = rules.set_company_todo(self._company(self.load(), company_id), event_type, on, now_ms(), self._actor)
        self.publish([doc])
        return doc

    def set_timezone(self, company_id: str, tz: str) -> CompanySettings:
        if not valid_timezone(tz):
            raise rules.SettingsError(f"not an IANA time zone: {tz}")
        company = self._company(self.load(), company_id)
        doc = replace(company, timezone=tz, updated_at=now_ms(), updated_by=self._actor)
        self.publish([doc])
        return doc

    def set_toggle(
        self, company_id: str, meeting_type_id: str, crm: Crm, event_type: EventType, on: bool
    ) -> MeetingTypeSettings:
        store = self.load()
        self._company(store, company_id)
        current = store.meeting_type(company_id, meeting_type_id) or rules.new_meeting_type(
            company_id, meeting_type_id, now_ms(), self._actor
        )
        doc = rules.set_meeting_type_toggle(current, crm, event_type, on, now_ms(), self._actor)
        self.publish([doc])
        return doc

    def set_content(self, company_id: str, meeting_type_id: str, **fields: str | None) -> MeetingTypeSettings:
        """Meeting-type texts: salesforce_subject/comment, hubspot_meeting_title/body, meeting_type_name."""
        store = self.load()
        self._company(store, company_id)
        current = store.meeting_type(company_id, meeting_type_id) or rules.new_meeting_type(
            company_id, meeting_type_id, now_ms(), self._actor
        )
        changes = {k: v for k, v in fields.items() if v is not None}
        doc = replace(current, **changes, updated_at=now_ms(), updated_by=self._actor)
        self.publish([doc])
        return doc

    def set_field_mappings(
        self, company_id: str, meeting_type_id: str, mappings: Sequence[FieldMapping]
    ) -> MeetingTypeSettings:
        """Replace the meeting type's field mappings (SPEC §7): extra CRM fields from event fields."""
        store = self.load()
        self._company(store, company_id)
        current = store.meeting_type(company_id, meeting_type_id) or rules.new_meeting_type(
            company_id, meeting_type_id, now_ms(), self._actor
        )
        doc = replace(current, field_mappings=tuple(mappings), updated_at=now_ms(), updated_by=self._actor)
        self.publish([doc])
        return doc

    def apply(
        self,
        company_id: str,
        source_id: str,
        target_ids: Iterable[str],
        crm: Crm,
        event_types: Iterable[EventType],
    ) -> list[MeetingTypeSettings]:
        store = self.load()
        self._company(store, company_id)
        source = store.meeting_type(company_id, source_id)
        if source is None:
            raise rules.SettingsError(f"unknown meeting type: {source_id}")
        targets = [
            store.meeting_type(company_id, t) or rules.new_meeting_type(company_id, t, now_ms(), self._actor)
            for t in dict.fromkeys(target_ids)
        ]
        docs = rules.apply_to_other_meeting_types(source, targets, crm, event_types, now_ms(), self._actor)
        self.publish(docs)
        return docs


# ---- failure history (dead-letter topic) -------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    dead_letter_id: str
    record: dict[str, Any]
    offset: int
    partition: int


def read_dead_letters(config: Config, codec: Codec, timeout: float = 30.0) -> list[Failure]:
    """The whole dead-letter topic, oldest first (it is the failure history)."""
    consumer = Consumer(
        {
            **config.kafka_client_config(),
            "group.id": f"crm-sync-dlq-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(config.topics.dead_letter, timeout=timeout).topics.get(config.topics.dead_letter)
        if meta is None or meta.error is not None:
            return []
        parts = [TopicPartition(config.topics.dead_letter, p, OFFSET_BEGINNING) for p in meta.partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in parts}
        consumer.assign(parts)
        remaining = {p for p, end in ends.items() if end > 0}
        out: list[Failure] = []
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition())
                continue
            try:
                record = codec.decode(msg.value()).value
            except DecodeError:
                continue
            out.append(Failure(record["dead_letter_id"], record, msg.offset(), msg.partition()))
            if msg.offset() + 1 >= ends[msg.partition()]:
                remaining.discard(msg.partition())
        return out
    finally:
        consumer.close()


def filter_failures(
    failures: Iterable[Failure],
    *,
    company_id: str | None = None,
    crm: str | None = None,
    error_class: str | None = None,
    since_ms: int | None = None,
) -> list[Failure]:
    def keep(f: Failure) -> bool:
        r = f.record
        return (
            (company_id is None or r.get("company_id") == company_id)
            and (crm is None or (r.get("crm") or "").lower() == crm.lower())
            and (error_class is None or r.get("error_class") == error_class)
            and (since_ms is None or r.get("created_at", 0) >= since_ms)
        )

    latest: dict[str, Failure] = {}
    for failure in failures:
        if keep(failure):
            latest[failure.dead_letter_id] = failure
    return list(latest.values())


def retry_failures(
    config: Config, codec: Codec, failures: Iterable[Failure], on_skip: Callable[[Failure, str], None]
) -> int:
    """Send each failure's action back to its due topic; the sinks' ledger keeps it idempotent."""
    # murmur2, as the worker's own producer: the retry lands on the partition (and so the ledger
    # partition) of the action's earlier copies.
    producer = Producer({**config.kafka_client_config(), "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"})
    sent = 0
    for failure in failures:
        action_record = failure.record.get("action")
        if not action_record:
            on_skip(failure, "no action to retry (the failure happened before planning)")
            continue
        action = action_from_record(action_record)
        topic = config.topics.due(action.crm)
        record = dict(action_record, attempt=int(action_record.get("attempt", 0)) + 1)
        headers = [*action_headers(action), ("retry_of", failure.dead_letter_id.encode())]
        producer.produce(topic, key=action.action_id.encode(), value=codec.encode("Action", record), headers=headers)
        sent += 1
    if producer.flush(30) != 0:
        raise RuntimeError("some retries were not acknowledged by the broker")
    return sent
