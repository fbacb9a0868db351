"""Dead-letter records (SPEC §7): what failed, where, why, and everything needed to retry it.

A dead letter must always be producible, whatever the record that failed: the original value is
kept whole only up to `ORIGINAL_PREFIX_BYTES`; beyond that it keeps a prefix, and always the full
length and sha256, so an admin can tell what it was and find the rest by topic, partition and
offset (`dlq retry` re-reads it from there). The key and the message are bounded the same way.

The original record's headers (a `traceparent`, say) are kept too, each whole or not at all (a cut
header value would be re-sent corrupt by `dlq retry`), up to `ORIGINAL_HEADERS_MAX` headers and
`ORIGINAL_HEADERS_BYTES` bytes. On Kafka the letter carries them again as record headers, beside
Kafka Connect's `__connect.errors.*` headers, so generic dead-letter tools can read it.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from processors.domain.model import Action
from processors.domain.records import action_to_record


# Far below librdkafka's `message.max.bytes` (1,000,000), so a letter that also carries an action fits.
ORIGINAL_PREFIX_BYTES = 64 * 1024
ORIGINAL_KEY_BYTES = 1024
MESSAGE_CHARS = 4000
ORIGINAL_HEADERS_MAX = 64
ORIGINAL_HEADERS_BYTES = 16 * 1024
# Kafka Connect's dead-letter header names (`DeadLetterQueueReporter`); ours are not forwarded twice.
CONNECT_PREFIX = "__connect.errors."
# What the whole letter may take (librdkafka refuses records over 1,000,000 bytes): room for the
# Avro framing and headers beside an action and a prefix.
LETTER_BUDGET_BYTES = 900_000


class Source(NamedTuple):
    """Where a record came from, for the dead letter's provenance (a tuple: one is made per input
    record, and ingest processes receive them by pickle)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


Header = tuple[str, bytes | None]


def dead_letter_id(source: Source, stage: str, action_id: str | None = None) -> str:
    """Deterministic, so re-processing the same record after a crash names the same failure."""
    raw = f"{source.topic}\x1f{source.partition}\x1f{source.offset}\x1f{stage}\x1f{action_id or ''}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def bounded(text: str, limit: int = MESSAGE_CHARS) -> str:
    """An error message cut to `limit` characters (an exception may quote a whole record)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _approx_size(value: Any) -> int:
    """An upper-bound guess of a record's Avro size (strings and bytes dominate)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace")) + 10
    if isinstance(value, bytes):
        return len(value) + 10
    if isinstance(value, dict):
        return sum(_approx_size(k) + _approx_size(v) for k, v in value.items()) + 10
    if isinstance(value, (list, tuple)):
        return sum(_approx_size(v) for v in value) + 10
    return 10


def prefix_limit(action_record: dict[str, Any] | None, headers_size: int = 0) -> int:
    """How much of the original value fits beside the letter's action and kept headers."""
    if action_record is None:
        return ORIGINAL_PREFIX_BYTES
    return max(0, min(ORIGINAL_PREFIX_BYTES, LETTER_BUDGET_BYTES - _approx_size(action_record) - headers_size))


def bounded_headers(headers: tuple[Header, ...] | list[Header]) -> list[Header]:
    """The headers kept whole, in order, while their count and bytes stay within the bounds; the
    rest stay on the original record (topic, partition, offset)."""
    kept: list[Header] = []
    used = 0
    for key, value in headers:
        size = len(key.encode("utf-8", "replace")) + (len(value) if value is not None else 0)
        if key.startswith(CONNECT_PREFIX) or len(kept) >= ORIGINAL_HEADERS_MAX or used + size > ORIGINAL_HEADERS_BYTES:
            continue
        kept.append((key, value))
        used += size
    return kept


def connect_headers(letter: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Kafka Connect's error headers for a letter, each value a UTF-8 string as Connect writes it."""
    values = {
        "topic": letter["source_topic"],
        "partition": str(letter["source_partition"]),
        "offset": str(letter["source_offset"]),
        "stage": letter["stage"],
        "exception.class.name": letter["error_class"],
        "exception.message": letter["message"],
    }
    return [(CONNECT_PREFIX + name, value.encode("utf-8", "replace")) for name, value in values.items()]


def letter_headers(letter: dict[str, Any]) -> list[Header]:
    """The Kafka headers of a dead-letter record: the original record's kept headers, then Connect's."""
    original = [(h["key"], h["value"]) for h in letter.get("original_headers") or []]
    return [*original, *connect_headers(letter)]


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
    action_record = action_to_record(action) if action else None
    headers = bounded_headers(source.headers)
    limit = prefix_limit(action_record, _approx_size([[k, v] for k, v in headers]))
    return {
        "dead_letter_id": dead_letter_id(source, stage, action.action_id if action else None),
        "stage": stage,
        "error_class": error_class,
        "error_code": error_code,
        "message": bounded(message),
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "original_key": source.key[:ORIGINAL_KEY_BYTES] if source.key is not None else None,
        "original_value": source.value[:limit] if source.value is not None else None,
        "original_length": len(source.value) if source.value is not None else None,
        "original_sha256": hashlib.sha256(source.value).hexdigest() if source.value is not None else None,
        "original_headers": [{"key": k, "value": v} for k, v in headers] if headers else None,
        "action": action_record,
        "company_id": company_id or (action.company_id if action else None),
        "crm": crm or (action.crm.value if action else None),
        "attempts": attempts,
        "first_attempt_at": first_attempt_at,
        "last_attempt_at": last_attempt_at,
        "created_at": now_ms,
    }
