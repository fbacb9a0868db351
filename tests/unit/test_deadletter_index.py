"""The dead-letter index's entries: what the worker and the admin tools write, and what a reader
of another version makes of them (skipped, never fatal)."""

from __future__ import annotations

import pytest

from processors.domain.deadletter import Source, dead_letter
from processors.domain.deadletter_index import VERSION, IndexEntry, entry_of, parse_entry

LETTER = dead_letter(stage="decode", error_class="DecodeError", message="m", company_id="acme", now_ms=1_700_000_000_000,
                     source=Source("t", 0, 7, b"acme", b"x"))


def test_an_entry_round_trips_with_its_statuses() -> None:
    statuses = ({"status": "retried", "at": 1, "by": "User:admin", "note": None},)
    entry = entry_of(LETTER, statuses)
    assert entry.key == LETTER["dead_letter_id"].encode()
    assert parse_entry(entry.key, entry.to_json()) == IndexEntry(LETTER["dead_letter_id"], "acme", 1_700_000_000_000, statuses)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"id", None),  # a tombstone
        (None, b'{"v": 1, "company_id": "a", "created_at": 1}'),
        (b"id", b"not json"),
        (b"id", b'{"v": %d, "company_id": "a", "created_at": 1}' % (VERSION + 1)),  # a newer writer's
        (b"id", b'{"v": 1, "company_id": "a"}'),  # no time
        (b"\xff", b'{"v": 1, "company_id": "a", "created_at": 1}'),
    ],
)
def test_what_this_version_cannot_read_is_skipped(key: bytes | None, value: bytes | None) -> None:
    assert parse_entry(key, value) is None


def test_a_dead_letter_without_a_company_is_indexed_under_the_empty_key_s_partition() -> None:
    letter = dict(LETTER, company_id=None)
    assert entry_of(letter).company_id is None
