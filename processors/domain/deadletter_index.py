"""The dead-letter index: one small record per dead letter, keyed by its id, on a compacted topic.

It is what makes `dlq show/retry/resolve ID` read one partition instead of the whole failure
history: the entry says which company the dead letter belongs to (so which partition of the
dead-letter topic holds it, since dead letters are keyed by company) and when it was written (so
the broker's time index finds it), and it carries the admins' statuses so far.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

VERSION = 1


class IndexEntry(NamedTuple):
    dead_letter_id: str
    company_id: str | None
    created_at: int
    statuses: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> bytes:
        return self.dead_letter_id.encode()

    def to_json(self) -> bytes:
        return json.dumps(
            {"v": VERSION, "company_id": self.company_id, "created_at": self.created_at, "statuses": list(self.statuses)},
            separators=(",", ":"), ensure_ascii=False,
        ).encode()


def entry_of(letter: dict[str, Any], statuses: tuple[dict[str, Any], ...] = ()) -> IndexEntry:
    """The entry of a dead letter (a `DeadLetter` record's fields)."""
    return IndexEntry(letter["dead_letter_id"], letter.get("company_id"), int(letter["created_at"]), statuses)


def parse_entry(key: bytes | None, value: bytes | None) -> IndexEntry | None:
    """None for a tombstone or a record this version cannot read (a newer writer's is skipped, not fatal)."""
    if not key or not value:
        return None
    try:
        doc = json.loads(value)
        if doc.get("v") != VERSION:
            return None
        return IndexEntry(key.decode(), doc.get("company_id"), int(doc["created_at"]), tuple(doc.get("statuses") or ()))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
