"""The settings audit (SPEC §11: every settings change is audited with its author): one record per
changed document, saying when, who and what changed from what to what.

The records go to an append-only topic in the same Kafka transaction as the change itself, so the
audit holds exactly the changes the workers see.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Mapping

from processors.domain.model import CompanySettings, MeetingTypeSettings

Doc = CompanySettings | MeetingTypeSettings
# Bookkeeping, not settings: every change moves them.
_UNAUDITED = frozenset({"updated_at", "updated_by"})


def _plain(value: Any) -> Any:
    """JSON-ready: enums by value, nested dataclasses (already dicts via asdict) as they are."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {(k.value if isinstance(k, Enum) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _defaults(doc: Doc) -> Doc:
    """A new document of the same identity with every setting at its default."""
    if isinstance(doc, CompanySettings):
        return CompanySettings(doc.company_id)
    return MeetingTypeSettings(doc.company_id, doc.meeting_type_id)


def changes(before: Doc | None, after: Doc) -> dict[str, dict[str, Any]]:
    """Field → {"old", "new"} for every setting that differs; a new document shows the settings it
    sets away from their defaults, with no old value."""
    old = {k: _plain(v) for k, v in asdict(before if before is not None else _defaults(after)).items()}
    new = {k: _plain(v) for k, v in asdict(after).items()}
    return {
        name: {"old": old[name] if before is not None else None, "new": value}
        for name, value in new.items()
        if name not in _UNAUDITED and old[name] != value
    }


def summary(diff: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: `paused: false → true; timezone: Asia/Tokyo → Europe/Paris` (or `no change`)."""
    parts = [f"{name}: {json.dumps(change['old'], ensure_ascii=False)} → {json.dumps(change['new'], ensure_ascii=False)}" for name, change in diff.items()]
    return "; ".join(parts) or "no change"


@dataclass(frozen=True)
class AuditRecord:
    at: int
    actor: str
    company_id: str
    key: str  # the settings document's key (company/<c> or meeting-type/<c>/<m>)
    changes: dict[str, dict[str, Any]]

    @property
    def summary(self) -> str:
        return summary(self.changes)

    def to_json(self) -> bytes:
        return json.dumps({"at": self.at, "actor": self.actor, "company_id": self.company_id, "key": self.key, "changes": self.changes}, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuditRecord:
        value = json.loads(raw)
        return cls(int(value["at"]), str(value["actor"]), str(value["company_id"]), str(value["key"]), dict(value["changes"]))
