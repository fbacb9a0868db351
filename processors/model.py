"""Typed domain data: events, settings documents, actions, outcomes.

The codec works on plain dicts (Avro records with timestamps as int milliseconds); this module turns
them into dataclasses and back, and is where a record that decodes but breaks the contract (empty ids,
bad e-mail, unknown time zone, oversized text) becomes a `ValidationError` with a readable reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_TEXT = 100_000
MAX_QA_ITEMS = 500
MAX_ID = 256


class ValidationError(ValueError):
    """A record that decoded but breaks the topic contract; the message is the dead-letter reason."""


class EventType(str, enum.Enum):
    MEETING_BOOKED = "meeting_booked"
    RESEARCH_COMPLETED = "research_completed"
    PRE_MEETING_SURVEY_ANSWERED = "pre_meeting_survey_answered"
    PRE_EXIT_SURVEY_ANSWERED = "pre_exit_survey_answered"


class Crm(str, enum.Enum):
    SALESFORCE = "salesforce"
    HUBSPOT = "hubspot"


class ObjectType(str, enum.Enum):
    TASK = "TASK"
    MEETING = "MEETING"
    NOTE = "NOTE"


class Origin(str, enum.Enum):
    COMPANY = "company"
    MEETING_TYPE = "meeting_type"


@dataclass(frozen=True)
class Person:
    email: str
    name: str
    company_name: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class MeetingBooked:
    event_id: str
    occurred_at: int
    company_id: str
    meeting_type_id: str
    meeting_id: str
    meeting_type_name: str
    host: Person
    booker: Person
    start_at: int
    end_at: int
    timezone: str
    meeting_url: str | None = None
    form_answers: tuple[QA, ...] = ()

    event_type = EventType.MEETING_BOOKED


@dataclass(frozen=True)
class ResearchCompleted:
    event_id: str
    occurred_at: int
    company_id: str
    meeting_type_id: str
    research_kind: str
    target: Person
    result: str
    form_answers: tuple[QA, ...] = ()

    event_type = EventType.RESEARCH_COMPLETED


@dataclass(frozen=True)
class SurveyAnswered:
    event_id: str
    occurred_at: int
    company_id: str
    meeting_type_id: str
    survey_kind: str
    respondent: Person
    host: Person | None = None
    meeting_start_at: int | None = None
    timezone: str | None = None
    answers: tuple[QA, ...] = ()

    @property
    def event_type(self) -> EventType:
        if self.survey_kind == "PRE_MEETING":
            return EventType.PRE_MEETING_SURVEY_ANSWERED
        return EventType.PRE_EXIT_SURVEY_ANSWERED


Event = Union[MeetingBooked, ResearchCompleted, SurveyAnswered]


@dataclass(frozen=True)
class EventToggles:
    meeting_booked: bool = False
    research_completed: bool = False
    pre_meeting_survey_answered: bool = False
    pre_exit_survey_answered: bool = False

    def get(self, event_type: EventType) -> bool:
        return bool(getattr(self, event_type.value))

    def with_(self, event_type: EventType, on: bool) -> "EventToggles":
        return replace(self, **{event_type.value: on})


@dataclass(frozen=True)
class CompanySettings:
    company_id: str
    salesforce_connected: bool = False
    hubspot_connected: bool = False
    salesforce_company_todo: EventToggles = EventToggles()
    paused: bool = False
    timezone: str = "Asia/Tokyo"
    updated_at: int = 0
    updated_by: str | None = None

    def connected(self, crm: Crm) -> bool:
        return self.salesforce_connected if crm is Crm.SALESFORCE else self.hubspot_connected


@dataclass(frozen=True)
class FieldMapping:
    crm: Crm
    event_type: EventType
    crm_field: str
    source: str


@dataclass(frozen=True)
class MeetingTypeSettings:
    company_id: str
    meeting_type_id: str
    meeting_type_name: str | None = None
    salesforce_todo: EventToggles = EventToggles()
    hubspot_sync: EventToggles = EventToggles()
    salesforce_subject: str | None = None
    salesforce_comment: str | None = None
    hubspot_meeting_title: str | None = None
    hubspot_meeting_body: str | None = None
    field_mappings: tuple[FieldMapping, ...] = ()
    updated_at: int = 0
    updated_by: str | None = None

    def toggles(self, crm: Crm) -> EventToggles:
        return self.salesforce_todo if crm is Crm.SALESFORCE else self.hubspot_sync


@dataclass(frozen=True)
class Action:
    """One CRM write, planned at ingest with a settings snapshot, executed when due."""

    action_id: str
    event_id: str
    event_type: EventType
    company_id: str
    meeting_type_id: str
    crm: Crm
    object_type: ObjectType
    origin: Origin
    occurred_at: int
    due_at: int
    planned_at: int
    contact_email: str
    owner_email: str | None
    properties: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0


# ---- validation helpers ---------------------------------------------------------------------


def _text(value: Any, name: str, *, required: bool = True, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        if required:
            raise ValidationError(f"required field missing: {name}")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"field {name} must be a string")
    if required and not value.strip():
        raise ValidationError(f"required field is empty: {name}")
    if len(value) > limit:
        raise ValidationError(f"field {name} is too long ({len(value)} > {limit} characters)")
    return value


def _req(value: Any, name: str, limit: int = MAX_TEXT) -> str:
    text = _text(value, name, limit=limit)
    assert text is not None
    return text


def _email(value: Any, name: str) -> str:
    email = _req(value, name, limit=320).strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise ValidationError(f"field {name} is not an e-mail address")
    return email


def _millis(value: Any, name: str, *, required: bool = True) -> int | None:
    if value is None:
        if required:
            raise ValidationError(f"required field missing: {name}")
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"field {name} must be a timestamp in milliseconds")
    return value


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata directory such as "Asia"
        return False
    return True


def _tz(value: Any, name: str, *, required: bool = True) -> str | None:
    tz = _text(value, name, required=required, limit=64)
    if tz is not None and not valid_timezone(tz):
        raise ValidationError(f"field {name} is not an IANA time zone: {tz!r}")
    return tz


RESEARCH_KINDS = ("COMPANY", "CUSTOMER")
SURVEY_KINDS = ("PRE_MEETING", "PRE_EXIT")


def _kind(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    kind = _req(value, name, 32)
    if kind not in allowed:
        raise ValidationError(f"field {name} must be one of {', '.join(allowed)}, not {kind!r}")
    return kind


def _person(value: Any, name: str) -> Person:
    if not isinstance(value, Mapping):
        raise ValidationError(f"required field missing: {name}")
    return Person(
        email=_email(value.get("email"), f"{name}.email"),
        name=_req(value.get("name"), f"{name}.name", limit=1_000),
        company_name=_text(value.get("company_name"), f"{name}.company_name", required=False, limit=1_000),
        phone=_text(value.get("phone"), f"{name}.phone", required=False, limit=100),
    )


def _qas(value: Any, name: str) -> tuple[QA, ...]:
    items = value or []
    if len(items) > MAX_QA_ITEMS:
        raise ValidationError(f"field {name} has too many items ({len(items)} > {MAX_QA_ITEMS})")
    return tuple(
        QA(
            question=_text(item.get("question"), f"{name}[{i}].question", required=False) or "",
            answer=_text(item.get("answer"), f"{name}[{i}].answer", required=False) or "",
        )
        for i, item in enumerate(items)
    )


def _common(value: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_id": _req(value.get("event_id"), "event_id", MAX_ID),
        "occurred_at": _millis(value.get("occurred_at"), "occurred_at"),
        "company_id": _req(value.get("company_id"), "company_id", MAX_ID),
        "meeting_type_id": _req(value.get("meeting_type_id"), "meeting_type_id", MAX_ID),
    }


# ---- records → domain -----------------------------------------------------------------------


def event_from_record(schema_name: str, value: Mapping[str, Any]) -> Event:
    """Turn a decoded input record into an event, or raise ValidationError with the reason."""
    if schema_name == "MeetingBooked":
        start = _millis(value.get("start_at"), "start_at")
        end = _millis(value.get("end_at"), "end_at")
        assert start is not None and end is not None
        if end < start:
            raise ValidationError("end_at is before start_at")
        return MeetingBooked(
            **_common(value),
            meeting_id=_req(value.get("meeting_id"), "meeting_id", MAX_ID),
            meeting_type_name=_req(value.get("meeting_type_name"), "meeting_type_name", 1_000),
            host=_person(value.get("host"), "host"),
            booker=_person(value.get("booker"), "booker"),
            start_at=start,
            end_at=end,
            timezone=_tz(value.get("timezone"), "timezone") or "",
            meeting_url=_text(value.get("meeting_url"), "meeting_url", required=False, limit=4_000),
            form_answers=_qas(value.get("form_answers"), "form_answers"),
        )
    if schema_name == "ResearchCompleted":
        return ResearchCompleted(
            **_common(value),
            research_kind=_kind(value.get("research_kind"), "research_kind", RESEARCH_KINDS),
            target=_person(value.get("target"), "target"),
            result=_text(value.get("result"), "result", required=False) or "",
            form_answers=_qas(value.get("form_answers"), "form_answers"),
        )
    if schema_name == "SurveyAnswered":
        host = value.get("host")
        return SurveyAnswered(
            **_common(value),
            survey_kind=_kind(value.get("survey_kind"), "survey_kind", SURVEY_KINDS),
            respondent=_person(value.get("respondent"), "respondent"),
            host=_person(host, "host") if host is not None else None,
            meeting_start_at=_millis(value.get("meeting_start_at"), "meeting_start_at", required=False),
            timezone=_tz(value.get("timezone"), "timezone", required=False),
            answers=_qas(value.get("answers"), "answers"),
        )
    raise ValidationError(f"schema {schema_name} is not an input event")


def _toggles(value: Any) -> EventToggles:
    value = value or {}
    return EventToggles(**{t.value: bool(value.get(t.value, False)) for t in EventType})


def _toggles_record(toggles: EventToggles) -> dict[str, bool]:
    return {t.value: toggles.get(t) for t in EventType}


def company_from_record(value: Mapping[str, Any]) -> CompanySettings:
    return CompanySettings(
        company_id=_req(value.get("company_id"), "company_id", MAX_ID),
        salesforce_connected=bool(value.get("salesforce_connected", False)),
        hubspot_connected=bool(value.get("hubspot_connected", False)),
        salesforce_company_todo=_toggles(value.get("salesforce_company_todo")),
        paused=bool(value.get("paused", False)),
        timezone=_tz(value.get("timezone", "Asia/Tokyo"), "timezone") or "Asia/Tokyo",
        updated_at=_millis(value.get("updated_at", 0), "updated_at") or 0,
        updated_by=value.get("updated_by"),
    )


def company_to_record(doc: CompanySettings) -> dict[str, Any]:
    return {
        "company_id": doc.company_id,
        "salesforce_connected": doc.salesforce_connected,
        "hubspot_connected": doc.hubspot_connected,
        "salesforce_company_todo": _toggles_record(doc.salesforce_company_todo),
        "paused": doc.paused,
        "timezone": doc.timezone,
        "updated_at": doc.updated_at,
        "updated_by": doc.updated_by,
    }


def meeting_type_from_record(value: Mapping[str, Any]) -> MeetingTypeSettings:
    mappings = []
    for i, m in enumerate(value.get("field_mappings") or []):
        try:
            mappings.append(
                FieldMapping(
                    crm=Crm(str(m["crm"]).lower()),
                    event_type=EventType(m["event_type"]),
                    crm_field=_req(m.get("crm_field"), f"field_mappings[{i}].crm_field", 255),
                    source=_req(m.get("source"), f"field_mappings[{i}].source", 255),
                )
            )
        except (KeyError, ValueError) as exc:
            raise ValidationError(f"field_mappings[{i}] is invalid: {exc}") from None
    return MeetingTypeSettings(
        company_id=_req(value.get("company_id"), "company_id", MAX_ID),
        meeting_type_id=_req(value.get("meeting_type_id"), "meeting_type_id", MAX_ID),
        meeting_type_name=_text(value.get("meeting_type_name"), "meeting_type_name", required=False, limit=1_000),
        salesforce_todo=_toggles(value.get("salesforce_todo")),
        hubspot_sync=_toggles(value.get("hubspot_sync")),
        salesforce_subject=_text(value.get("salesforce_subject"), "salesforce_subject", required=False, limit=1_000),
        salesforce_comment=_text(value.get("salesforce_comment"), "salesforce_comment", required=False),
        hubspot_meeting_title=_text(value.get("hubspot_meeting_title"), "hubspot_meeting_title", required=False, limit=1_000),
        hubspot_meeting_body=_text(value.get("hubspot_meeting_body"), "hubspot_meeting_body", required=False),
        field_mappings=tuple(mappings),
        updated_at=_millis(value.get("updated_at", 0), "updated_at") or 0,
        updated_by=value.get("updated_by"),
    )


def meeting_type_to_record(doc: MeetingTypeSettings) -> dict[str, Any]:
    return {
        "company_id": doc.company_id,
        "meeting_type_id": doc.meeting_type_id,
        "meeting_type_name": doc.meeting_type_name,
        "salesforce_todo": _toggles_record(doc.salesforce_todo),
        "hubspot_sync": _toggles_record(doc.hubspot_sync),
        "salesforce_subject": doc.salesforce_subject,
        "salesforce_comment": doc.salesforce_comment,
        "hubspot_meeting_title": doc.hubspot_meeting_title,
        "hubspot_meeting_body": doc.hubspot_meeting_body,
        "field_mappings": [
            {"crm": m.crm.name, "event_type": m.event_type.value, "crm_field": m.crm_field, "source": m.source}
            for m in doc.field_mappings
        ],
        "updated_at": doc.updated_at,
        "updated_by": doc.updated_by,
    }


def action_to_record(action: Action) -> dict[str, Any]:
    return {
        "action_id": action.action_id,
        "event_id": action.event_id,
        "event_type": action.event_type.value,
        "company_id": action.company_id,
        "meeting_type_id": action.meeting_type_id,
        "crm": action.crm.name,
        "object_type": action.object_type.value,
        "origin": action.origin.value,
        "occurred_at": action.occurred_at,
        "due_at": action.due_at,
        "planned_at": action.planned_at,
        "contact_email": action.contact_email,
        "owner_email": action.owner_email,
        "properties": dict(action.properties),
        "attempt": action.attempt,
    }


def action_from_record(value: Mapping[str, Any]) -> Action:
    return Action(
        action_id=value["action_id"],
        event_id=value["event_id"],
        event_type=EventType(value["event_type"]),
        company_id=value["company_id"],
        meeting_type_id=value["meeting_type_id"],
        crm=Crm(str(value["crm"]).lower()),
        object_type=ObjectType(value["object_type"]),
        origin=Origin(value["origin"]),
        occurred_at=value["occurred_at"],
        due_at=value["due_at"],
        planned_at=value["planned_at"],
        contact_email=value["contact_email"],
        owner_email=value.get("owner_email"),
        properties=dict(value.get("properties") or {}),
        attempt=value.get("attempt", 0),
    )


def action_headers(action: Action) -> list[tuple[str, bytes]]:
    """What the releaser needs without decoding the value: due time, CRM, tenant, ids."""
    return [
        ("due_at", str(action.due_at).encode()),
        ("crm", action.crm.value.encode()),
        ("company_id", action.company_id.encode()),
        ("action_id", action.action_id.encode()),
        ("event_id", action.event_id.encode()),
        ("event_type", action.event_type.value.encode()),
    ]
