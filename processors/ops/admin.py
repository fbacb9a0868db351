"""Admin operations (library API behind `crm-sync settings …` and `crm-sync dlq …`).

Every settings change publishes whole documents to the compacted settings topic through a
transactional producer, each with its audit entry in the same transaction: a change touching
several documents (apply to other meeting types) becomes visible all at once or not at all to the
workers, which read `read_committed`.

Each document carries its version (the applied one + 1) and its audit entry's id; the workers
apply it only as the next version with its audit entry (`processors.state.settings`). Two admins
changing the same document at once: inside its transaction, before committing, a change reads the
topic from where its load ended up to its own records. A committed record for one of its documents
in between means it lost the race: it aborts (the workers never see it), reloads, and makes its
change again on the fresh documents, unless the other change set one of the settings this one
sets (or the caller named the version it edited, as the console does), in which case it raises
`SettingsConflict` and writes nothing.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from confluent_kafka import Message, Producer

from processors.domain import mapping, rules
from processors.domain.audit import AuditRecord, SettingsConflict, Stamp, changes
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
from processors.kafka.read import NotCaughtUp, TopicReader, read_to_end
from processors.kafka.topics import create_missing
from processors.ops.acls import ADMIN_TRANSACTIONAL_PREFIX

Doc = CompanySettings | MeetingTypeSettings
D = TypeVar("D", CompanySettings, MeetingTypeSettings)


# How long a change waits to read the other admins' changes committed before its own. Well under
# the coordinator's transaction timeout (60 s), which would fence our own open transaction. A read
# that cannot finish in time (another admin's transaction still open, or one aborted whose marker
# lies past our own records) counts as a lost race: we abort, which releases whoever waits on us,
# and redo the change on fresh documents.
RACE_READ_TIMEOUT_S = 20.0


def now_ms() -> int:
    return int(time.time() * 1000)


# Losing the race this many times in a row (a storm of edits to one document) is reported as a conflict.
MAX_ATTEMPTS = 5


def doc_key(doc: Doc) -> str:
    return rules.company_key(doc.company_id) if isinstance(doc, CompanySettings) else rules.meeting_type_key(doc.company_id, doc.meeting_type_id)


def _current(store: SettingsStore, doc: Doc) -> Doc | None:
    return store.company(doc.company_id) if isinstance(doc, CompanySettings) else store.meeting_type(doc.company_id, doc.meeting_type_id)


class _LostRace(Exception):
    """A record for one of the change's documents was committed between its load and its records."""


class SettingsAdmin:
    def __init__(self, config: Config, codec: Codec | None = None, actor: str | None = None) -> None:
        self._config = config
        self._codec = codec or Codec()
        self._actor = actor
        self._topic_checked = False

    # -- reading --
    def load(self) -> SettingsStore:
        store = SettingsStore(
            clients.librdkafka(self._config), self._config.topics.settings, self._codec, audit_topic=self._config.topics.audit
        )
        store.load_once()
        return store

    def show(self, company_id: str) -> tuple[CompanySettings, list[MeetingTypeSettings]]:
        store = self.load()
        company = store.company(company_id)
        if company is None:
            raise rules.SettingsError(f"unknown company: {company_id}")
        return company, store.meeting_types(company_id)

    # -- writing --
    def encode(self, doc: Doc, stamp: Stamp) -> tuple[bytes, bytes]:
        """Key and value of a document, refused (SettingsError) if the workers' settings table would reject it.

        Checking with the workers' own parser before anything is sent keeps a multi-document change
        all-or-nothing: a document the table would drop can never leave the others applied alone.
        """
        key = doc_key(doc)
        if isinstance(doc, CompanySettings):
            schema, record = "CompanySettings", company_to_record(doc)
        else:
            schema, record = "MeetingTypeSettings", meeting_type_to_record(doc)
        try:
            value = self._codec.encode(schema, {**record, "version": stamp.version, "audit_id": stamp.audit_id})
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

    def audit_log(self, company_id: str, since_ms: int | None = None) -> list[AuditRecord]:
        """The company's settings changes, oldest first (committed ones only, like the workers see)."""
        found: list[AuditRecord] = []

        def add(msg: Message) -> None:
            record = AuditRecord.from_json(msg.value())
            if record.company_id == company_id and (since_ms is None or record.at >= since_ms):
                found.append(record)

        read_to_end(clients.librdkafka(self._config), self._config.topics.audit, add)
        return sorted(found, key=lambda r: r.at)

    def records(self, store: SettingsStore, docs: Sequence[Doc]) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) of one change: each document as the next version of the one in
        `store`, and its audit entry; every document passed `encode` first."""
        out: list[tuple[str, bytes, bytes]] = []
        audits: list[AuditRecord] = []
        for doc in docs:
            key = doc_key(doc)
            stamp = Stamp(store.next_version(key), uuid.uuid4().hex)
            out.append((self._config.topics.settings, *self.encode(doc, stamp)))
            audits.append(
                AuditRecord(
                    doc.updated_at or now_ms(), self._actor or "unknown", doc.company_id, key, changes(_current(store, doc), doc),
                    id=stamp.audit_id, version=stamp.version,
                )
            )
        out.extend((self._config.topics.audit, a.company_id.encode(), a.to_json()) for a in audits)
        return out

    def publish(self, store: SettingsStore, docs: Sequence[Doc]) -> None:
        """All documents and their audit records in one Kafka transaction, committed only if no
        other record for these documents was committed since `store` was loaded (else `_LostRace`,
        nothing visible): a change is audited exactly when it takes effect, and never silently
        overwrites another."""
        records = self.records(store, docs)
        keys = {key for topic, key, _ in records if topic == self._config.topics.settings}
        self.ensure_topic()
        producer = Producer(
            {
                **clients.librdkafka(self._config),
                "transactional.id": f"{ADMIN_TRANSACTIONAL_PREFIX}{uuid.uuid4().hex}",
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        mine: dict[int, int] = {}  # settings partition → the offset of this change's first record there

        def placed(err: Any, msg: Message) -> None:
            if err is None and msg.topic() == self._config.topics.settings:
                mine[msg.partition()] = min(msg.offset(), mine.get(msg.partition(), msg.offset()))

        producer.init_transactions(30)
        producer.begin_transaction()
        try:
            for topic, key, value in records:
                producer.produce(topic, key=key, value=value, on_delivery=placed)
            producer.flush(30)
            if self._changed_since(store, keys, mine):
                raise _LostRace()
            producer.commit_transaction(30)
        except BaseException:
            producer.abort_transaction(30)
            raise

    def _changed_since(self, store: SettingsStore, keys: set[bytes], mine: Mapping[int, int]) -> bool:
        """Whether a committed record for one of `keys` lies between the end of `store`'s load and
        this change's own records. Records of other open transactions before ours are waited for."""
        seen: list[bytes | None] = []
        with TopicReader(clients.librdkafka(self._config), self._config.topics.settings) as reader:
            reader.assign(mine, start={p: store.ends.get(p, 0) for p in mine})
            try:
                reader.read_to_end(lambda msg: seen.append(msg.key()), RACE_READ_TIMEOUT_S, until=mine)
            except NotCaughtUp:
                return True
        return any(key in keys for key in seen)

    def change(self, make: Callable[[SettingsStore], Sequence[Doc]], expected: Mapping[str, int] | None = None) -> list[Doc]:
        """Load the settings, make the change's documents from them, publish; on a lost race, again
        on the fresh documents (see the module's docstring).

        `expected`: document key → the version the user edited (a form); any other is a conflict.
        """
        base: dict[str, Doc | None] = {}
        touched: dict[str, set[str]] = {}
        for attempt in range(MAX_ATTEMPTS):
            store = self.load()
            docs = list(make(store))
            for doc in docs:
                key, before = doc_key(doc), _current(store, doc)
                applied = store.stamp(key)
                version = applied.version if applied is not None else 0
                if expected is not None and key in expected and expected[key] != version:
                    by = before.updated_by if before is not None else None
                    raise SettingsConflict(f"{key} was changed meanwhile (now version {version}, by {by or 'unknown'}): nothing saved, reload and edit again")
                if attempt == 0:
                    base[key], touched[key] = before, set(changes(before, doc))
                    continue
                theirs = set(changes(base.get(key), before)) if before is not None else set()
                if theirs & touched.get(key, set()):
                    by = before.updated_by if before is not None else None
                    raise SettingsConflict(
                        f"{key}: {', '.join(sorted(theirs & touched[key]))} changed meanwhile (by {by or 'unknown'}): nothing saved"
                    )
            try:
                self.publish(store, docs)
                return docs
            except _LostRace:
                continue
        raise SettingsConflict(f"the documents kept changing during {MAX_ATTEMPTS} attempts: nothing saved, try again")

    def set_connected(self, company_id: str, crm: Crm, on: bool) -> CompanySettings:
        return self._one(lambda s: rules.set_connected(self._company(s, company_id, create=on), crm, on, now_ms(), self._actor))

    def set_paused(self, company_id: str, paused: bool) -> CompanySettings:
        return self._one(lambda s: rules.set_paused(self._company(s, company_id), paused, now_ms(), self._actor))

    def set_company_todo(self, company_id: str, event_type: EventType, on: bool) -> CompanySettings:
        return self._one(lambda s: rules.set_company_todo(self._company(s, company_id), event_type, on, now_ms(), self._actor))

    def set_company_todos(
        self, company_id: str, toggles: Mapping[EventType, bool], expected_version: int | None = None
    ) -> CompanySettings:
        """Several company-level ToDo toggles in one document (the console's one save button);
        `expected_version`: the version the form showed (another one is a conflict)."""

        def make(store: SettingsStore) -> CompanySettings:
            doc = self._company(store, company_id)
            for event_type, on in toggles.items():
                doc = rules.set_company_todo(doc, event_type, on, now_ms(), self._actor)
            return doc

        return self._one(make, rules.company_key(company_id), expected_version)

    def set_timezone(self, company_id: str, tz: str) -> CompanySettings:
        if not valid_timezone(tz):
            raise rules.SettingsError(f"not an IANA time zone: {tz}")
        return self._one(lambda s: replace(self._company(s, company_id), timezone=tz, updated_at=now_ms(), updated_by=self._actor))

    def set_toggle(
        self, company_id: str, meeting_type_id: str, crm: Crm, event_type: EventType, on: bool
    ) -> MeetingTypeSettings:
        return self._one(
            lambda s: rules.set_meeting_type_toggle(self._meeting_type(s, company_id, meeting_type_id), crm, event_type, on, now_ms(), self._actor)
        )

    def save_meeting_type(
        self,
        company_id: str,
        meeting_type_id: str,
        toggles: Mapping[tuple[Crm, EventType], bool],
        expected_version: int | None = None,
        **fields: str | None,
    ) -> MeetingTypeSettings:
        """A meeting type's event × CRM matrix and texts in one document (the console's save button);
        `expected_version`: the version the form showed (another one is a conflict)."""

        def make(store: SettingsStore) -> MeetingTypeSettings:
            doc = self._meeting_type(store, company_id, meeting_type_id)
            for (crm, event_type), on in toggles.items():
                doc = rules.set_meeting_type_toggle(doc, crm, event_type, on, now_ms(), self._actor)
            return replace(doc, **{k: v for k, v in fields.items() if v is not None}, updated_at=now_ms(), updated_by=self._actor)

        return self._one(make, rules.meeting_type_key(company_id, meeting_type_id), expected_version)

    def set_content(self, company_id: str, meeting_type_id: str, **fields: str | None) -> MeetingTypeSettings:
        """Meeting-type texts: salesforce_subject/comment, hubspot_meeting_title/body, meeting_type_name."""
        texts = {k: v for k, v in fields.items() if v is not None}
        return self._one(
            lambda s: replace(self._meeting_type(s, company_id, meeting_type_id), **texts, updated_at=now_ms(), updated_by=self._actor)
        )

    def set_field_mappings(
        self, company_id: str, meeting_type_id: str, mappings: Sequence[FieldMapping]
    ) -> MeetingTypeSettings:
        """Replace the meeting type's field mappings (SPEC §7): extra CRM fields from event fields,
        each checked as `map_field` checks it (MappingError)."""
        for m in mappings:
            mapping.check_mapping(m, self._reserved(m.crm))
        return self._one(
            lambda s: replace(
                self._meeting_type(s, company_id, meeting_type_id), field_mappings=tuple(mappings), updated_at=now_ms(), updated_by=self._actor
            )
        )

    def _reserved(self, crm: Crm) -> list[str]:
        """The worker-wide external-id field of the CRM, which no mapping may write."""
        name = self._config.salesforce_action_id_field if crm is Crm.SALESFORCE else self._config.hubspot_action_id_property
        return [name] if name else []

    def _one(self, make: Callable[[SettingsStore], D], key: str | None = None, expected_version: int | None = None) -> D:
        """A change of one document (see `change`)."""
        expected = {key: expected_version} if key is not None and expected_version is not None else None
        return self.change(lambda store: [make(store)], expected)[0]  # type: ignore[return-value]

    def _company(self, store: SettingsStore, company_id: str, create: bool = False) -> CompanySettings:
        company = store.company(company_id)
        if company is None:
            if not create:
                raise rules.SettingsError(f"unknown company: {company_id} (connect a CRM first)")
            company = rules.new_company(company_id, now_ms(), self._actor)
        return company

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

        def make(store: SettingsStore) -> MeetingTypeSettings:
            current = self._meeting_type(store, company_id, meeting_type_id)
            return replace(
                current, field_mappings=mapping.with_mapping(current.field_mappings, new), updated_at=now_ms(), updated_by=self._actor
            )

        return self._one(make)

    def unmap_field(
        self, company_id: str, meeting_type_id: str, crm: Crm, event_type: EventType, crm_field: str
    ) -> MeetingTypeSettings:
        """Remove the mapping to `crm_field`; MappingError if there is none."""

        def make(store: SettingsStore) -> MeetingTypeSettings:
            self._company(store, company_id)
            current = store.meeting_type(company_id, meeting_type_id)
            if current is None:
                raise rules.SettingsError(f"unknown meeting type: {meeting_type_id}")
            kept = mapping.without_mapping(current.field_mappings, crm, event_type, crm_field)
            return replace(current, field_mappings=kept, updated_at=now_ms(), updated_by=self._actor)

        return self._one(make)

    def set_contact_recheck(self, company_id: str, delays_seconds: Sequence[int]) -> CompanySettings:
        """Check again for the Lead/Contact this long after the first due time before skipping as
        contact_not_found; empty turns the re-check off (the default)."""
        try:
            delays = check_recheck_delays(list(delays_seconds))
        except ValidationError as exc:
            raise rules.SettingsError(str(exc)) from None
        return self._one(
            lambda s: replace(self._company(s, company_id), contact_recheck_seconds=delays, updated_at=now_ms(), updated_by=self._actor)
        )

    def apply(
        self,
        company_id: str,
        source_id: str,
        target_ids: Iterable[str],
        crm: Crm,
        event_types: Iterable[EventType],
    ) -> list[MeetingTypeSettings]:
        targets_wanted = list(dict.fromkeys(target_ids))
        kinds = list(event_types)

        def make(store: SettingsStore) -> list[MeetingTypeSettings]:
            self._company(store, company_id)
            source = store.meeting_type(company_id, source_id)
            if source is None:
                raise rules.SettingsError(f"unknown meeting type: {source_id}")
            targets = [
                store.meeting_type(company_id, t) or rules.new_meeting_type(company_id, t, now_ms(), self._actor) for t in targets_wanted
            ]
            return rules.apply_to_other_meeting_types(source, targets, crm, kinds, now_ms(), self._actor)

        return self.change(make)  # type: ignore[return-value]
