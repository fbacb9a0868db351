"""Field mapping (SPEC §7), pure: which event fields may fill which CRM fields, and how a value is
converted for the CRM.

A source path must name a scalar field of the event's Avro schema (`booker.phone`, `start_at`), so
nothing else of the Python object (`__class__`, private attributes) is reachable. A timestamp
becomes the CRM's datetime; `<path>:date` gives its date in the company's time zone. A mapping never
overwrites a rendered core field (Subject, Description, `hs_*` …) unless it was stored with
`allow_core`; mapped text is cut to the field's length and escaped where HubSpot expects HTML.
"""

from __future__ import annotations

import enum
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from processors.domain import render
from processors.domain.model import Crm, Event, EventType, FieldMapping
from schemas import load_schema

DATE_SUFFIX = ":date"

EVENT_SCHEMAS = {
    EventType.MEETING_BOOKED: "MeetingBooked",
    EventType.RESEARCH_COMPLETED: "ResearchCompleted",
    EventType.PRE_MEETING_SURVEY_ANSWERED: "SurveyAnswered",
    EventType.PRE_EXIT_SURVEY_ANSWERED: "SurveyAnswered",
}

# What the worker renders or resolves itself (render.salesforce_task, domain.deliver), compared
# case-insensitively as Salesforce does. The external-id field is set after the mapping at delivery.
SALESFORCE_CORE = frozenset(
    name.lower() for name in ("Id", "Subject", "Description", "ActivityDate", "WhoId", "WhatId", "OwnerId")
)
HUBSPOT_CORE_PREFIX = "hs_"
HUBSPOT_CORE = frozenset({"hubspot_owner_id"})
HUBSPOT_HTML = frozenset({"hs_meeting_body", "hs_note_body", "hs_internal_meeting_notes"})

SALESFORCE_TEXT_LIMIT = 255  # a Salesforce text field's default length
SALESFORCE_LIMITS = {"subject": render.SUBJECT_LIMIT, "description": render.DESCRIPTION_LIMIT}
HUBSPOT_TEXT_LIMIT = 65_536  # HubSpot's limit for a string property value
HUBSPOT_LIMITS = {"hs_meeting_title": render.SUBJECT_LIMIT}

# Salesforce API names: letters, digits, single underscores, an optional `ns__` prefix and `__c`.
_SF_WORD = r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*"
_SALESFORCE_FIELD = re.compile(rf"^(?:{_SF_WORD}__)?{_SF_WORD}(?:__c)?$")
_HUBSPOT_PROPERTY = re.compile(r"^[a-z][a-z0-9_]*$")  # HubSpot internal names are lower case
FIELD_NAME_LIMITS = {Crm.SALESFORCE: 80, Crm.HUBSPOT: 100}


class MappingError(ValueError):
    """A field mapping that cannot be stored; the one-line message says why."""


class Kind(str, enum.Enum):
    """How a source value is converted: by its Avro type."""

    STRING = "string"
    TIMESTAMP = "timestamp"
    DATE = "date"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    NUMBER = "number"


_PRIMITIVE_KINDS = {
    "string": Kind.STRING,
    "boolean": Kind.BOOLEAN,
    "int": Kind.INTEGER,
    "long": Kind.INTEGER,
    "float": Kind.NUMBER,
    "double": Kind.NUMBER,
}


def schema_kinds(schema: Mapping[str, Any]) -> dict[str, Kind]:
    """Every scalar path of a record schema → its kind, in schema order; arrays and maps are left out."""
    named: dict[str, Any] = {}
    found: dict[str, Kind] = {}

    def kind_of(avro: Any) -> Kind | Mapping[str, Any] | None:
        if isinstance(avro, list):
            branches = [b for b in avro if b != "null"]
            return kind_of(branches[0]) if len(branches) == 1 else None
        if isinstance(avro, str):
            if avro in _PRIMITIVE_KINDS:
                return _PRIMITIVE_KINDS[avro]
            return kind_of(named[avro]) if avro in named else None
        kind = avro.get("type")
        if kind in ("record", "enum", "fixed"):
            name = avro["name"] if "." in avro["name"] else f"{avro.get('namespace', 'crmsync.v1')}.{avro['name']}"
            named[name] = named[avro["name"]] = avro
            return avro if kind == "record" else Kind.STRING if kind == "enum" else None
        if kind == "long" and avro.get("logicalType") == "timestamp-millis":
            return Kind.TIMESTAMP
        if isinstance(kind, str) and kind in _PRIMITIVE_KINDS:
            return _PRIMITIVE_KINDS[kind]
        return None  # array, map, bytes, a union of several types

    def walk(record: Mapping[str, Any], prefix: str) -> None:
        for field in record["fields"]:
            path = f"{prefix}{field['name']}"
            kind = kind_of(field["type"])
            if isinstance(kind, Kind):
                found[path] = kind
                if kind is Kind.TIMESTAMP:
                    found[path + DATE_SUFFIX] = Kind.DATE
            elif kind is not None:
                walk(kind, f"{path}.")

    kind_of(schema)
    walk(schema, "")
    return found


@lru_cache(maxsize=None)
def _kinds(event_type: EventType) -> Mapping[str, Kind]:
    return schema_kinds(load_schema(EVENT_SCHEMAS[event_type]))


def source_kinds(event_type: EventType) -> Mapping[str, Kind]:
    """The valid source paths of an event type and their kinds, from the event's Avro schema."""
    return _kinds(event_type)


def mapping_sources(event_type: EventType) -> list[str]:
    """The valid source paths of an event type (schema order), e.g. for a drop-down."""
    return list(_kinds(event_type))


def check_source(event_type: EventType, source: str) -> Kind:
    """The kind of a valid source path, else MappingError saying what is wrong with it."""
    kind = _kinds(event_type).get(source)
    if kind is not None:
        return kind
    path = source.removesuffix(DATE_SUFFIX)
    if any(part.startswith("_") for part in path.split(".")):
        raise MappingError(f"source {source!r}: private attributes cannot be mapped")
    if source.endswith(DATE_SUFFIX) and _kinds(event_type).get(path) is not None:
        raise MappingError(f"source {source!r}: {DATE_SUFFIX} is only for timestamps")
    prefixes = {p.rsplit(".", 1)[0] for p in _kinds(event_type) if "." in p}
    if path in prefixes:
        raise MappingError(f"source {source!r} is a record; map one of its fields, e.g. {path}.{_first_field(event_type, path)}")
    raise MappingError(
        f"source {source!r} is not a field of {event_type.value}; valid: {', '.join(mapping_sources(event_type))}"
    )


def _first_field(event_type: EventType, prefix: str) -> str:
    return next(p for p in _kinds(event_type) if p.startswith(prefix + ".")).split(".")[-1]


def is_core(crm: Crm, crm_field: str) -> bool:
    """A field the worker renders or resolves itself (SPEC §5, §6), which a mapping must not replace by accident."""
    if crm is Crm.SALESFORCE:
        return crm_field.lower() in SALESFORCE_CORE
    return crm_field.startswith(HUBSPOT_CORE_PREFIX) or crm_field in HUBSPOT_CORE


def check_field(crm: Crm, crm_field: str, reserved: Iterable[str] = ()) -> None:
    """A CRM field name in the CRM's format; `reserved` are names never mappable (the external-id field)."""
    limit = FIELD_NAME_LIMITS[crm]
    pattern = _SALESFORCE_FIELD if crm is Crm.SALESFORCE else _HUBSPOT_PROPERTY
    if len(crm_field) > limit or not pattern.match(crm_field):
        shape = (
            "an API name such as Phone__c (letters, digits, single underscores)"
            if crm is Crm.SALESFORCE
            else "an internal property name such as booker_phone (lower case letters, digits, underscores)"
        )
        raise MappingError(f"CRM field {crm_field!r} is not {shape}, at most {limit} characters")
    if crm_field.lower() in {r.lower() for r in reserved if r}:
        raise MappingError(f"CRM field {crm_field!r} is the external-id field the worker sets itself")


def check_mapping(mapping: FieldMapping, reserved: Iterable[str] = ()) -> FieldMapping:
    """A mapping that may be stored, else MappingError: the source exists, the field is well-formed
    and, unless `allow_core`, not a core field."""
    check_source(mapping.event_type, mapping.source)
    check_field(mapping.crm, mapping.crm_field, reserved)
    if is_core(mapping.crm, mapping.crm_field) and not mapping.allow_core:
        raise MappingError(
            f"CRM field {mapping.crm_field!r} is rendered by crm-sync; pass allow_core to overwrite it"
        )
    return mapping


def same_target(a: FieldMapping, b: FieldMapping) -> bool:
    """Two mappings writing the same CRM field of the same event type (Salesforce names ignore case)."""
    if a.crm is not b.crm or a.event_type is not b.event_type:
        return False
    if a.crm is Crm.SALESFORCE:
        return a.crm_field.lower() == b.crm_field.lower()
    return a.crm_field == b.crm_field


def with_mapping(mappings: Sequence[FieldMapping], new: FieldMapping) -> tuple[FieldMapping, ...]:
    """`mappings` with `new` replacing any mapping to the same field, in place (else appended)."""
    out = [new if same_target(m, new) else m for m in mappings]
    if not any(same_target(m, new) for m in mappings):
        out.append(new)
    return tuple(out)


def without_mapping(
    mappings: Sequence[FieldMapping], crm: Crm, event_type: EventType, crm_field: str
) -> tuple[FieldMapping, ...]:
    """`mappings` without the one to this field, MappingError if there is none."""
    probe = FieldMapping(crm, event_type, crm_field, "")
    kept = tuple(m for m in mappings if not same_target(m, probe))
    if len(kept) == len(mappings):
        raise MappingError(f"no mapping to {crm.value} field {crm_field!r} for {event_type.value}")
    return kept


# ---- values -----------------------------------------------------------------------------------


def _number(value: float) -> str:
    """Plain decimal notation (no exponent), as both CRMs parse number fields."""
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def convert(value: Any, kind: Kind, crm: Crm, tz: str) -> str:
    """A source value as the CRM expects it in a string property.

    Salesforce: datetime ISO 8601 with the company's offset, date `YYYY-MM-DD`, checkbox `true`/
    `false`. HubSpot: datetime ISO 8601 in UTC with milliseconds (like `hs_timestamp`), date
    `YYYY-MM-DD`, bool `true`/`false`. Dates are the local date in `tz`.
    """
    if kind is Kind.TIMESTAMP:
        if crm is Crm.HUBSPOT:
            return render.iso_utc(int(value))
        return render.local_datetime(int(value), tz).isoformat(timespec="milliseconds")
    if kind is Kind.DATE:
        return render.local_date(int(value), tz).isoformat()
    if kind is Kind.BOOLEAN:
        return "true" if value else "false"
    if kind is Kind.INTEGER:
        return str(int(value))
    if kind is Kind.NUMBER:
        return _number(float(value))
    return str(value)


def fit(text: str, crm: Crm, crm_field: str) -> str:
    """Cut to the field's length; HubSpot HTML bodies are escaped first (text_to_html)."""
    if crm is Crm.SALESFORCE:
        return render.truncate(text, SALESFORCE_LIMITS.get(crm_field.lower(), SALESFORCE_TEXT_LIMIT))
    if crm_field in HUBSPOT_HTML:
        return render.truncate_html(render.text_to_html(text), render.NOTE_BODY_LIMIT)
    return render.truncate(text, HUBSPOT_LIMITS.get(crm_field, HUBSPOT_TEXT_LIMIT))


def _lookup(event: Event, path: str) -> Any:
    """A schema-checked path's value: every part is a field of the event's dataclasses."""
    value: Any = event
    for part in path.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def mapped_fields(event: Event, crm: Crm, mappings: Sequence[FieldMapping], tz: str) -> dict[str, str]:
    """The converted, fitted values of the mappings for this event's type and CRM.

    A stored mapping that would be refused today (unknown path, core field without allow_core) is
    ignored rather than trusted; an absent value (None) leaves the field out.
    """
    fields: dict[str, str] = {}
    kinds = _kinds(event.event_type)
    for mapping in mappings:
        if mapping.crm is not crm or mapping.event_type is not event.event_type:
            continue
        kind = kinds.get(mapping.source)
        if kind is None or (is_core(crm, mapping.crm_field) and not mapping.allow_core):
            continue
        value = _lookup(event, mapping.source.removesuffix(DATE_SUFFIX))
        if value is not None:
            fields[mapping.crm_field] = fit(convert(value, kind, crm, tz), crm, mapping.crm_field)
    return fields
