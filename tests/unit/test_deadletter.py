"""A dead letter is always producible: a bounded prefix of the original value with its full length
and sha256 (the topic, partition and offset find the rest), a bounded key and message, and less of
the original beside a large action. The original headers are kept whole within bounds, and the Kafka
record carries them with Kafka Connect's error headers."""

from __future__ import annotations

import hashlib

import pytest

from processors.codec import Codec
from processors.domain.deadletter import (
    LETTER_BUDGET_BYTES,
    MESSAGE_CHARS,
    ORIGINAL_HEADERS_BYTES,
    ORIGINAL_HEADERS_MAX,
    ORIGINAL_KEY_BYTES,
    ORIGINAL_PREFIX_BYTES,
    Source,
    connect_headers,
    dead_letter,
    letter_headers,
)
from tests.unit.test_routing import action

NOW = 1_800_000_000_000


def letter_for(value: bytes | None, key: bytes | None = b"acme", **kw: object) -> dict[str, object]:
    return dead_letter(stage="decode", error_class="DecodeError", message="bad", source=Source("in", 1, 42, key, value), now_ms=NOW, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "kept"),
    [(0, 0), (100, 100), (ORIGINAL_PREFIX_BYTES, ORIGINAL_PREFIX_BYTES), (ORIGINAL_PREFIX_BYTES + 1, ORIGINAL_PREFIX_BYTES), (1_010_000, ORIGINAL_PREFIX_BYTES)],
)
def test_the_original_is_kept_whole_up_to_the_prefix_size_and_always_with_its_length_and_hash(size: int, kept: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    letter = letter_for(value)
    assert letter["original_value"] == value[:kept]
    assert letter["original_length"] == size
    assert letter["original_sha256"] == hashlib.sha256(value).hexdigest()
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == ("in", 1, 42)


def test_no_original_means_no_length_or_hash() -> None:
    letter = letter_for(None, key=None)
    assert (letter["original_value"], letter["original_length"], letter["original_sha256"], letter["original_key"]) == (None, None, None, None)


def test_the_key_and_message_are_bounded_too() -> None:
    letter = dead_letter(stage="plan", error_class="InternalError", message="m" * 1_000_000, source=Source("in", 0, 1, b"k" * 1_000_000, b"v"), now_ms=NOW)
    assert len(letter["original_key"]) == ORIGINAL_KEY_BYTES
    assert len(letter["message"]) == MESSAGE_CHARS and letter["message"].endswith("…")


def test_a_letter_for_a_huge_record_encodes_far_below_what_librdkafka_accepts() -> None:
    encoded = Codec().encode("DeadLetter", letter_for(b"x" * 1_010_000))
    assert len(encoded) < 100_000


def test_beside_a_large_action_less_of_the_original_is_kept_so_the_letter_still_fits() -> None:
    big = action()
    big = type(big)(**{**big.__dict__, "properties": {"Description": "d" * 880_000}})
    letter = letter_for(b"y" * 900_000, action=big)
    assert len(letter["original_value"]) < ORIGINAL_PREFIX_BYTES and letter["original_length"] == 900_000
    assert len(Codec().encode("DeadLetter", letter)) <= LETTER_BUDGET_BYTES


def test_dlq_retry_refuses_to_re_ingest_a_prefix_and_says_where_the_whole_record_is() -> None:
    from processors.config import Config
    from processors.ops.dlq import Failure, FailureAdmin

    config = Config.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    letter = {**letter_for(b"z" * 1_010_000), "source_topic": config.topics.meetings}
    skipped: list[str] = []
    sent = FailureAdmin(config).retry([Failure("dl-1", letter, 0, 0)], lambda failure, why: skipped.append(why))
    assert sent == 0
    assert skipped == [
        f"it keeps only the first {ORIGINAL_PREFIX_BYTES} of the original's 1010000 bytes; "
        f"the whole record is at {config.topics.meetings} partition 1 offset 42"
    ]


TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def letter_with_headers(headers: tuple[tuple[str, bytes | None], ...]) -> dict[str, object]:
    return dead_letter(stage="decode", error_class="DecodeError", message="bad magic byte", source=Source("in", 1, 42, b"k", b"v", headers), now_ms=NOW)


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ((), None),
        ((("traceparent", TRACEPARENT), ("empty", None)), [("traceparent", TRACEPARENT), ("empty", None)]),
        # Each header whole or not at all: one too large is left out, the next that fits is kept.
        ((("big", b"x" * (ORIGINAL_HEADERS_BYTES + 1)), ("traceparent", TRACEPARENT)), [("traceparent", TRACEPARENT)]),
        (tuple((f"h{i}", b"1") for i in range(ORIGINAL_HEADERS_MAX + 5)), [(f"h{i}", b"1") for i in range(ORIGINAL_HEADERS_MAX)]),
        # A record that was itself a Connect dead letter: its error headers are not carried twice.
        ((("__connect.errors.topic", b"old"), ("traceparent", TRACEPARENT)), [("traceparent", TRACEPARENT)]),
    ],
)
def test_original_headers_are_kept_whole_within_count_and_byte_bounds(
    headers: tuple[tuple[str, bytes | None], ...], kept: list[tuple[str, bytes | None]] | None
) -> None:
    letter = letter_with_headers(headers)
    expected = None if kept is None else [{"key": k, "value": v} for k, v in kept]
    assert letter["original_headers"] == expected


def test_many_large_headers_stay_within_the_byte_bound_and_the_letter_encodes() -> None:
    headers = tuple((f"h{i}", b"y" * 1000) for i in range(40))
    letter = letter_with_headers(headers)
    kept = letter["original_headers"]
    assert isinstance(kept, list)
    assert sum(len(h["key"]) + len(h["value"]) for h in kept) <= ORIGINAL_HEADERS_BYTES
    assert len(Codec().encode("DeadLetter", letter)) < LETTER_BUDGET_BYTES


def test_kafka_headers_are_the_original_ones_then_kafka_connects_as_utf8_strings() -> None:
    letter = letter_with_headers((("traceparent", TRACEPARENT),))
    assert letter_headers(letter) == [
        ("traceparent", TRACEPARENT),
        ("__connect.errors.topic", b"in"),
        ("__connect.errors.partition", b"1"),
        ("__connect.errors.offset", b"42"),
        ("__connect.errors.stage", b"decode"),
        ("__connect.errors.exception.class.name", b"DecodeError"),
        ("__connect.errors.exception.message", b"bad magic byte"),
    ]
    long = dead_letter(stage="plan", error_class="ValueError", message="caf\u00e9 " + "x" * 10_000, source=Source("in", 0, 7), now_ms=NOW)
    message = dict(connect_headers(long))["__connect.errors.exception.message"].decode("utf-8")
    assert message.startswith("café") and len(message) == MESSAGE_CHARS
