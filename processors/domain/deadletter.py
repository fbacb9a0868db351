"""Dead-letter records (SPEC §7): what failed, where, why, and everything needed to retry it."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from processors.domain.model import Action
from processors.domain.records import action_to_record


class Source(NamedTuple):
    """Where a record came from, for the dead letter's provenance (a tuple: one is made per input
    record, and ingest processes receive them by pickle)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None


def dead_letter_id(source: Source, stage: str, action_id: str | None = None) -> str:
    """Deterministic, so re-processing the same record after a crash names the same failure."""
    raw = f"{source.topic}\x1f{source.partition}\x1f{source.offset}\x1f{stage}\x1f{action_id or ''}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def dead_letter(
    *,
    stage: str,
    error_class: str,
    message: str,
    source: Source,
    now_ms: int,
    action: Action | None = None,
    error_code: str | None = None,
    company_id: str | None = None,
    crm: str | None = None,
    attempts: int = 0,
    first_attempt_at: int | None = None,
    last_attempt_at: int | None = None,
) -> dict[str, Any]:
    return {
        "dead_letter_id": dead_letter_id(source, stage, action.action_id if action else None),
        "stage": stage,
        "error_class": error_class,
        "error_code": error_code,
        "message": message,
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "original_key": source.key,
        "original_value": source.value,
        "action": action_to_record(action) if action else None,
        "company_id": company_id or (action.company_id if action else None),
        "crm": crm or (action.crm.value if action else None),
        "attempts": attempts,
        "first_attempt_at": first_attempt_at,
        "last_attempt_at": last_attempt_at,
        "created_at": now_ms,
    }
