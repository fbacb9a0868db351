"""One input record → typed event → plan, or a dead letter with the reason. No I/O.

Decoding is passed in (`decode`, the codec's), so this room stays free of Kafka and registry
clients; a registry outage (not `Undecodable`) propagates, because it is not the record's fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from processors.domain import errors
from processors.domain.deadletter import Source, dead_letter
from processors.domain.errors import Undecodable
from processors.domain.model import Event, ValidationError
from processors.domain.records import event_from_record
from processors.domain.planner import Plan, plan
from processors.domain.rules import SettingsView

INPUT_SCHEMAS = frozenset({"MeetingBooked", "ResearchCompleted", "SurveyAnswered"})


class DecodedRecord(Protocol):
    schema_name: str
    value: Mapping[str, Any]


@dataclass(frozen=True)
class Ingested:
    event: Event | None = None
    plan: Plan | None = None
    dead_letter: dict[str, Any] | None = None
    invalid_reason: str | None = None


def ingest(
    decode: Callable[[bytes], DecodedRecord], source: Source, settings: SettingsView, now_ms: int, delay_ms: int
) -> Ingested:
    """Bad input is data, not an exception: it comes back as a dead letter so the stream goes on."""

    def reject(stage: str, error_class: str, reason: str, message: str) -> Ingested:
        letter = dead_letter(stage=stage, error_class=error_class, message=message, source=source, now_ms=now_ms,
                             error_code=reason)
        return Ingested(dead_letter=letter, invalid_reason=reason)

    if source.value is None:
        return reject("decode", errors.DECODE, "empty", "record has no value (tombstone) on an input topic")
    try:
        decoded = decode(source.value)
    except Undecodable as exc:
        return reject("decode", errors.DECODE, exc.code, str(exc))
    if decoded.schema_name not in INPUT_SCHEMAS:
        return reject("validate", errors.VALIDATION, "wrong_schema", f"schema {decoded.schema_name} is not an input event")
    try:
        event = event_from_record(decoded.schema_name, decoded.value)
    except ValidationError as exc:
        return reject("validate", errors.VALIDATION, "invalid", str(exc))
    company = settings.company(event.company_id)
    meeting_type = settings.meeting_type(event.company_id, event.meeting_type_id)
    return Ingested(event=event, plan=plan(event, company, meeting_type, now_ms, delay_ms))
