"""Records ↔ domain, pure: the codec works on plain dicts (Avro records with timestamps as int
milliseconds); this module turns them into the typed data of `processors.domain.model` and back, and
is where a record that decodes but breaks the contract (empty ids, bad e-mail, unknown time zone,
oversized text) becomes a `ValidationError` with a readable reason.
"""

from __future__ import annotations

from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processors.domain.model import (
    Action,
    CompanySettings,
    Crm,
    Event,
    EventToggles,
    EventType,
    FieldMapping,
    MAX_ID,
    MAX_QA_ITEMS,
    MAX_TEXT,
    MeetingBooked,
    MeetingTypeSettings,
    ObjectType,
    Origin,
    Person,
    QA,
    ResearchCompleted,
    SurveyAnswered,
    ValidationError,
)


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
    # `split()` splits at exactly the characters `isspace()` knows, in C rather than per character.
    if not at or not local or "." not in domain or len(email.split()) != 1:
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


MAX_RECHECKS = 10
MAX_RECHECK_SECONDS = 7 * 86_400


def check_recheck_delays(delays: Any) -> tuple[int, ...]:
    """Contact re-check delays (seconds after the first due time): positive, rising, at most a week."""
    items = tuple(delays or ())
    if len(items) > MAX_RECHECKS:
        raise ValidationError(f"at most {MAX_RECHECKS} contact re-checks, not {len(items)}")
    for delay in items:
        if not isinstance(delay, int) or isinstance(delay, bool) or not 0 < delay <= MAX_RECHECK_SECONDS:
            raise ValidationError(f"a contact re-check delay must be 1..{MAX_RECHECK_SECONDS} seconds, not {delay!r}")
    if list(items) != sorted(set(items)):
        raise ValidationError("contact re-check delays must be rising, each once")
    return items


def company_from_record(value: Mapping[str, Any]) -> CompanySettings:
    return CompanySettings(
        company_id=_req(value.get("company_id"), "company_id", MAX_ID),
        salesforce_connected=bool(value.get("salesforce_connected", False)),
        hubspot_connected=bool(value.get("hubspot_connected", False)),
        salesforce_company_todo=_toggles(value.get("salesforce_company_todo")),
        paused=bool(value.get("paused", False)),
        timezone=_tz(value.get("timezone", "Asia/Tokyo"), "timezone") or "Asia/Tokyo",
        contact_recheck_seconds=check_recheck_delays(value.get("contact_recheck_seconds")),
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
        "contact_recheck_seconds": list(doc.contact_recheck_seconds),
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
                    allow_core=bool(m.get("allow_core", False)),
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
            {"crm": m.crm.name, "event_type": m.event_type.value, "crm_field": m.crm_field, "source": m.source,
             "allow_core": m.allow_core}
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
        "first_due_at": action.first_due_at,
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
        first_due_at=value.get("first_due_at"),
    )


def action_headers(action: Action) -> list[tuple[str, bytes]]:
    """What the releaser needs without decoding the value: due time, CRM, tenant, ids."""
    return headers_of(action.due_at, action.crm.value, action.company_id, action.action_id, action.event_id, action.event_type.value)


def headers_of(
    due_at: int, crm: str, company_id: str, action_id: str, event_id: str, event_type: str, *, planned_at: int | None = None
) -> list[tuple[str, bytes]]:
    """`action_headers` from the fields alone (an ingest process hands over fields, not Actions).

    `planned_at` only for an action already overdue when planned: its lateness counts from then.
    """
    headers = [
        ("due_at", str(due_at).encode()),
        ("crm", crm.encode()),
        ("company_id", company_id.encode()),
        ("action_id", action_id.encode()),
        ("event_id", event_id.encode()),
        ("event_type", event_type.encode()),
    ]
    if planned_at is not None:
        headers.append(("planned_at", str(planned_at).encode()))
    return headers
