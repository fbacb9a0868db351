"""Admin operations (library API behind `crm-sync settings …` and `crm-sync dlq …`).

Every settings change publishes whole documents to the compacted settings topic through a
transactional producer: a change touching several documents (apply to other meeting types) becomes
visible all at once or not at all to the workers, which read `read_committed`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from confluent_kafka import Message, Producer

from processors.domain import mapping, rules
from processors.domain.audit import AuditRecord, changes
from processors.codec import Codec, DecodeError, EncodeError
from processors.config import Config
from processors.domain.model import (
    CompanySettings,
    Crm,
    EventType,
    FieldMapping,
    MeetingTypeSettings,
    ValidationError,
)
from processors.domain.records import (
    check_recheck_delays,
    company_to_record,
    meeting_type_to_record,
    valid_timezone,
)
from processors.state.settings import SettingsStore, parse_settings_record
from processors.kafka import clients
from processors.kafka.read import read_to_end
from processors.kafka.topics import create_missing

Doc = CompanySettings | MeetingTypeSettings


def now_ms() -> int:
    return int(time.time() * 1000)


class SettingsAdmin:
    def __init__(self, config: Config, codec: Codec | None = None, actor: str | None = None) -> None:
        self._config = config
        self._codec = codec or Codec()
        self._actor = actor
        self._topic_checked = False
        self._store: SettingsStore | None = None  # what the change was made against (the audit's "old")

    # -- reading --
    def load(self) -> SettingsStore:
        store = SettingsStore(clients.librdkafka(self._config), self._config.topics.settings, self._codec)
        store.load_once()
        self._store = store
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
        admin write (before any worker ran) would be non-compacted and lose settings to retention.
        The audit topic likewise, with its long retention."""
        if not self._topic_checked:
            create_missing(self._config, [self._config.topics.settings, self._config.topics.audit])
            self._topic_checked = True

    def audit(self, doc: Doc) -> AuditRecord:
        """Who changed what in `doc`, compared with the document loaded before the change."""
        key = rules.company_key(doc.company_id) if isinstance(doc, CompanySettings) else rules.meeting_type_key(doc.company_id, doc.meeting_type_id)
        before: Doc | None = None
        if self._store is not None:
            before = self._store.company(doc.company_id) if isinstance(doc, CompanySettings) else self._store.meeting_type(doc.company_id, doc.meeting_type_id)
        return AuditRecord(doc.updated_at or now_ms(), self._actor or "unknown", doc.company_id, key, changes(before, doc))

    def audit_log(self, company_id: str, since_ms: int | None = None) -> list[AuditRecord]:
        """The company's settings changes, oldest first (committed ones only, like the workers see)."""
        found: list[AuditRecord] = []

        def add(msg: Message) -> None:
            record = AuditRecord.from_json(msg.value())
            if record.company_id == company_id and (since_ms is None or record.at >= since_ms):
                found.append(record)

        read_to_end(clients.librdkafka(self._config), self._config.topics.audit, add)
        return sorted(found, key=lambda r: r.at)

    def publish(self, docs: Sequence[Doc]) -> None:
        """All documents and their audit records in one Kafka transaction, after every document
        passed `encode`: a change is audited exactly when it takes effect."""
        records = [self.encode(doc) for doc in docs]
        audits = [self.audit(doc) for doc in docs]
        self.ensure_topic()
        producer = Producer(
            {
                **clients.librdkafka(self._config),
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
            for audit in audits:
                producer.produce(self._config.topics.audit, key=audit.company_id.encode(), value=audit.to_json())
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

    def set_company_todos(self, company_id: str, toggles: Mapping[EventType, bool]) -> CompanySettings:
        """Several company-level ToDo toggles in one document (the console's one save button)."""
        doc = self._company(self.load(), company_id)
        for event_type, on in toggles.items():
            doc = rules.set_company_todo(doc, event_type, on, now_ms(), self._actor)
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

    def save_meeting_type(
        self, company_id: str, meeting_type_id: str, toggles: Mapping[tuple[Crm, EventType], bool], **fields: str | None
    ) -> MeetingTypeSettings:
        """A meeting type's event × CRM matrix and texts in one document (the console's save button)."""
        store = self.load()
        self._company(store, company_id)
        doc = store.meeting_type(company_id, meeting_type_id) or rules.new_meeting_type(
            company_id, meeting_type_id, now_ms(), self._actor
        )
        for (crm, event_type), on in toggles.items():
            doc = rules.set_meeting_type_toggle(doc, crm, event_type, on, now_ms(), self._actor)
        doc = replace(doc, **{k: v for k, v in fields.items() if v is not None}, updated_at=now_ms(), updated_by=self._actor)
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
        """Replace the meeting type's field mappings (SPEC §7): extra CRM fields from event fields,
        each checked as `map_field` checks it (MappingError)."""
        for m in mappings:
            mapping.check_mapping(m, self._reserved(m.crm))
        store = self.load()
        self._company(store, company_id)
        current = store.meeting_type(company_id, meeting_type_id) or rules.new_meeting_type(
            company_id, meeting_type_id, now_ms(), self._actor
        )
        doc = replace(current, field_mappings=tuple(mappings), updated_at=now_ms(), updated_by=self._actor)
        self.publish([doc])
        return doc

    def _reserved(self, crm: Crm) -> list[str]:
        """The worker-wide external-id field of the CRM, which no mapping may write."""
        name = self._config.salesforce_action_id_field if crm is Crm.SALESFORCE else self._config.hubspot_action_id_property
        return [name] if name else []

    def _meeting_type(self, store: SettingsStore, company_id: str, meeting_type_id: str) -> MeetingTypeSettings:
        self._company(store, company_id)
        return store.meeting_type(company_id, meeting_type_id) or rules.new_meeting_type(
            company_id, meeting_type_id, now_ms(), self._actor
        )

    def map_field(
        self,
        company_id: str,
        meeting_type_id: str,
        crm: Crm,
        event_type: EventType,
        crm_field: str,
        source: str,
        allow_core: bool = False,
    ) -> MeetingTypeSettings:
        """Fill `crm_field` from the event path `source` (replacing a mapping to the same field).

        MappingError (a ValueError, one line) for a path not in the event's schema, a badly formed
        field name, the external-id field, or a core field without `allow_core`.
        """
        new = mapping.check_mapping(FieldMapping(crm, event_type, crm_field, source, allow_core), self._reserved(crm))
        store = self.load()
        current = self._meeting_type(store, company_id, meeting_type_id)
        doc = replace(
            current, field_mappings=mapping.with_mapping(current.field_mappings, new), updated_at=now_ms(), updated_by=self._actor
        )
        self.publish([doc])
        return doc

    def unmap_field(
        self, company_id: str, meeting_type_id: str, crm: Crm, event_type: EventType, crm_field: str
    ) -> MeetingTypeSettings:
        """Remove the mapping to `crm_field`; MappingError if there is none."""
        store = self.load()
        self._company(store, company_id)
        current = store.meeting_type(company_id, meeting_type_id)
        if current is None:
            raise rules.SettingsError(f"unknown meeting type: {meeting_type_id}")
        kept = mapping.without_mapping(current.field_mappings, crm, event_type, crm_field)
        doc = replace(current, field_mappings=kept, updated_at=now_ms(), updated_by=self._actor)
        self.publish([doc])
        return doc

    def set_contact_recheck(self, company_id: str, delays_seconds: Sequence[int]) -> CompanySettings:
        """Check again for the Lead/Contact this long after the first due time before skipping as
        contact_not_found; empty turns the re-check off (the default)."""
        try:
            delays = check_recheck_delays(list(delays_seconds))
        except ValidationError as exc:
            raise rules.SettingsError(str(exc)) from None
        company = self._company(self.load(), company_id)
        doc = replace(company, contact_recheck_seconds=delays, updated_at=now_ms(), updated_by=self._actor)
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
