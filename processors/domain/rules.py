"""Settings rules (SPEC §3), pure: keys, the gate at ingest, the re-check when due, admin edits.

Settings records live on a compacted topic as whole documents. Keys are
`company/<company_id>` and `meeting-type/<company_id>/<meeting_type_id>`, each id percent-encoded
so that any id (even one holding `/`) maps to exactly one key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Iterable, Protocol
from urllib.parse import quote, unquote

from processors.domain.model import (
    MAX_ID,
    CompanySettings,
    Crm,
    EventType,
    FieldMapping,
    MeetingTypeSettings,
)


class SettingsError(ValueError):
    """An admin edit that cannot be applied (unknown id, bad argument); the message says why."""


def company_key(company_id: str) -> str:
    return f"company/{quote(company_id, safe='')}"


def meeting_type_key(company_id: str, meeting_type_id: str) -> str:
    return f"meeting-type/{quote(company_id, safe='')}/{quote(meeting_type_id, safe='')}"


@dataclass(frozen=True)
class SettingsKey:
    kind: str
    company_id: str
    meeting_type_id: str | None = None


def parse_settings_key(key: str) -> SettingsKey:
    parts = key.split("/")
    if len(parts) == 2 and parts[0] == "company" and parts[1]:
        return SettingsKey("company", unquote(parts[1]))
    if len(parts) == 3 and parts[0] == "meeting-type" and parts[1] and parts[2]:
        return SettingsKey("meeting_type", unquote(parts[1]), unquote(parts[2]))
    raise SettingsError(f"not a settings key: {key!r}")


class SettingsView(Protocol):
    def company(self, company_id: str) -> CompanySettings | None: ...

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None: ...


class DueDecision(str, enum.Enum):
    DELIVER = "deliver"
    HOLD = "hold"
    DROP = "drop"


def decide_when_due(crm: Crm, company: CompanySettings | None) -> DueDecision:
    """Rule 7: at the due time only connection and `paused` are looked at again."""
    if company is None or not company.connected(crm):
        return DueDecision.DROP
    if company.paused:
        return DueDecision.HOLD
    return DueDecision.DELIVER


# ---- admin edits (each returns the whole new document to publish) -----------------------------


def check_id(value: str, what: str) -> str:
    """Ids the topic contract accepts (non-blank, at most MAX_ID characters), so no document is born invalid."""
    if not value.strip():
        raise SettingsError(f"{what} id must not be empty")
    if len(value) > MAX_ID:
        raise SettingsError(f"{what} id is too long ({len(value)} > {MAX_ID} characters)")
    return value


def new_company(company_id: str, now_ms: int, by: str | None = None) -> CompanySettings:
    return CompanySettings(company_id=check_id(company_id, "company"), updated_at=now_ms, updated_by=by)


def new_meeting_type(company_id: str, meeting_type_id: str, now_ms: int, by: str | None = None) -> MeetingTypeSettings:
    return MeetingTypeSettings(
        company_id=check_id(company_id, "company"),
        meeting_type_id=check_id(meeting_type_id, "meeting type"),
        updated_at=now_ms,
        updated_by=by,
    )


def set_connected(doc: CompanySettings, crm: Crm, on: bool, now_ms: int, by: str | None = None) -> CompanySettings:
    """Rule 3: only the company flag changes; meeting-type documents are untouched and resume as they were."""
    if crm is Crm.SALESFORCE:
        return replace(doc, salesforce_connected=on, updated_at=now_ms, updated_by=by)
    return replace(doc, hubspot_connected=on, updated_at=now_ms, updated_by=by)


def set_paused(doc: CompanySettings, paused: bool, now_ms: int, by: str | None = None) -> CompanySettings:
    return replace(doc, paused=paused, updated_at=now_ms, updated_by=by)


def set_company_todo(
    doc: CompanySettings, event_type: EventType, on: bool, now_ms: int, by: str | None = None
) -> CompanySettings:
    return replace(
        doc,
        salesforce_company_todo=doc.salesforce_company_todo.with_(event_type, on),
        updated_at=now_ms,
        updated_by=by,
    )


def set_meeting_type_toggle(
    doc: MeetingTypeSettings, crm: Crm, event_type: EventType, on: bool, now_ms: int, by: str | None = None
) -> MeetingTypeSettings:
    if crm is Crm.SALESFORCE:
        return replace(doc, salesforce_todo=doc.salesforce_todo.with_(event_type, on), updated_at=now_ms, updated_by=by)
    return replace(doc, hubspot_sync=doc.hubspot_sync.with_(event_type, on), updated_at=now_ms, updated_by=by)


def copy_mappings(
    source: Iterable[FieldMapping], target: Iterable[FieldMapping], crm: Crm, event_types: Iterable[EventType]
) -> tuple[FieldMapping, ...]:
    """The target's mappings with those of `crm` and the chosen event types replaced by the source's."""
    chosen = set(event_types)

    def selected(m: FieldMapping) -> bool:
        return m.crm is crm and m.event_type in chosen

    return tuple(m for m in target if not selected(m)) + tuple(m for m in source if selected(m))


def apply_to_other_meeting_types(
    source: MeetingTypeSettings,
    targets: Iterable[MeetingTypeSettings],
    crm: Crm,
    event_types: Iterable[EventType],
    now_ms: int,
    by: str | None = None,
) -> list[MeetingTypeSettings]:
    """Rule 5: copy the chosen event types' toggles and field mappings of one CRM; everything else
    on the targets stays.

    The caller publishes all returned documents in one Kafka transaction, so all targets change or
    none do.
    """
    chosen = tuple(dict.fromkeys(event_types))
    if not chosen:
        raise SettingsError("no event type selected")
    targets = list(targets)
    if not targets:
        raise SettingsError("no target meeting type given")
    result = []
    for target in targets:
        if target.company_id != source.company_id:
            raise SettingsError("targets must belong to the source's company")
        if target.meeting_type_id == source.meeting_type_id:
            raise SettingsError("a meeting type cannot be its own target")
        updated = target
        for event_type in chosen:
            updated = set_meeting_type_toggle(updated, crm, event_type, source.toggles(crm).get(event_type), now_ms, by)
        if crm is Crm.SALESFORCE and EventType.MEETING_BOOKED in chosen:
            updated = replace(
                updated, salesforce_subject=source.salesforce_subject, salesforce_comment=source.salesforce_comment
            )
        if crm is Crm.HUBSPOT and EventType.MEETING_BOOKED in chosen:
            updated = replace(
                updated,
                hubspot_meeting_title=source.hubspot_meeting_title,
                hubspot_meeting_body=source.hubspot_meeting_body,
            )
        updated = replace(updated, field_mappings=copy_mappings(source.field_mappings, updated.field_mappings, crm, chosen))
        result.append(updated)
    return result
