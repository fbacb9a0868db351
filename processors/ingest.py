"""One input record → typed event → plan, or a dead letter with the reason. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.codec import Codec, DecodeError
from processors.deadletter import Source, dead_letter
from processors.model import Event, ValidationError, event_from_record
from processors.planner import Plan, plan
from processors.rules import SettingsView

INPUT_SCHEMAS = frozenset({"MeetingBooked", "ResearchCompleted", "SurveyAnswered"})


@dataclass(frozen=True)
class Ingested:
    event: Event | None = None
    plan: Plan | None = None
    dead_letter: dict[str, Any] | None = None
    invalid_reason: str | None = None


def ingest(codec: Codec, source: Source, settings: SettingsView, now_ms: int, delay_ms: int) -> Ingested:
    """Bad input is data, not an exception: it comes back as a dead letter so the stream goes on."""

    def reject(stage: str, error_class: str, reason: str, message: str) -> Ingested:
        letter = dead_letter(stage=stage, error_class=error_class, message=message, source=source, now_ms=now_ms)
        return Ingested(dead_letter=letter, invalid_reason=reason)

    if source.value is None:
        return reject("decode", "DecodeError", "empty", "record has no value (tombstone) on an input topic")
    try:
        decoded = codec.decode(source.value)
    except DecodeError as exc:
        return reject("decode", "DecodeError", exc.code, str(exc))
    if decoded.schema_name not in INPUT_SCHEMAS:
        return reject("validate", "ValidationError", "wrong_schema", f"schema {decoded.schema_name} is not an input event")
    try:
        event = event_from_record(decoded.schema_name, decoded.value)
    except ValidationError as exc:
        return reject("validate", "ValidationError", "invalid", str(exc))
    company = settings.company(event.company_id)
    meeting_type = settings.meeting_type(event.company_id, event.meeting_type_id)
    return Ingested(event=event, plan=plan(event, company, meeting_type, now_ms, delay_ms))
