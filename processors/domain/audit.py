"""The settings audit (SPEC §11: every settings change is audited with its author): one record per
changed document, saying when, who and what changed from what to what.

The records go to an append-only topic in the same Kafka transaction as the change itself. Each
settings record names its version and its audit entry's id, and each audit entry names the key and
version it audits: a worker applies a settings record only once it has read that entry, and only
as the next version of the document it holds (`verdict`). So the audit holds every change the
workers apply, in order; a record written beside the admin tool (a console producer, a replay) is
refused with a reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Mapping, Union

from processors.domain.model import CompanySettings, MeetingTypeSettings
from processors.domain.rules import SettingsError

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
    # The settings record this entry vouches for; None in entries written before versions.
    id: str | None = None
    version: int | None = None

    @property
    def summary(self) -> str:
        return summary(self.changes)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"at": self.at, "actor": self.actor, "company_id": self.company_id, "key": self.key, "changes": self.changes}
        if self.id is not None:
            body |= {"id": self.id, "version": self.version}
        return json.dumps(body, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuditRecord:
        """Raises ValueError (json's included), KeyError or TypeError for an entry that is not one."""
        value = json.loads(raw)
        version = value.get("version")
        return cls(
            int(value["at"]), str(value["actor"]), str(value["company_id"]), str(value["key"]), dict(value["changes"]),
            None if value.get("id") is None else str(value["id"]), None if version is None else int(version),
        )


class SettingsConflict(SettingsError):
    """Another admin changed the same setting of the same document meanwhile: nothing was written."""


@dataclass(frozen=True)
class Stamp:
    """A settings record's place in its document's history: `version` 0 is a record written before
    versions (no audit id); a versioned one is 1 for a new document and the applied version + 1 after."""

    version: int
    audit_id: str | None


class Refusal(str, Enum):
    """Why a settings record is not applied (the `reason` label of crm_sync_settings_refused_total)."""

    MALFORMED = "malformed"  # does not decode or validate
    TOMBSTONE = "tombstone"  # the admin tool never deletes a document
    UNVERSIONED = "unversioned"  # an old-format record for a document that already has versions
    AUDIT_MISSING = "audit_missing"  # no audit entry with its id was committed with it
    AUDIT_MISMATCH = "audit_mismatch"  # the entry vouches for another key or version
    VERSION_REPEATED = "version_repeated"  # not newer than the applied version (a replay, a lost race)
    VERSION_SKIPPED = "version_skipped"  # more than one ahead of the applied version


class Accept(Enum):
    APPLY = "apply"
    # Nothing applied for the key yet, and the audit already vouches for a newer version: a rebuild
    # passing an old version that compaction has not removed yet. Not applied, not an alarm.
    SUPERSEDED = "superseded"


Verdict = Union[Accept, Refusal]


def verdict(key: str, applied: Stamp | None, record: Stamp, entry: AuditRecord | None, latest_audited: int | None) -> Verdict:
    """Whether a settings record for `key` may replace the applied document.

    `entry` is the audit entry the record names (None when none was read), `latest_audited` the
    highest version any audit entry vouches for on this key. Without an applied document any
    audited version is taken: compaction removes the earlier ones from the topic.
    """
    if record.version == 0:
        return Refusal.UNVERSIONED if applied is not None and applied.version > 0 else Accept.APPLY
    if record.audit_id is None or entry is None:
        return Refusal.AUDIT_MISSING
    if entry.id != record.audit_id or entry.key != key or entry.version != record.version:
        return Refusal.AUDIT_MISMATCH
    if applied is None:
        return Accept.SUPERSEDED if latest_audited is not None and latest_audited > record.version else Accept.APPLY
    if record.version <= applied.version:
        return Refusal.VERSION_REPEATED
    if record.version > applied.version + 1:
        return Refusal.VERSION_SKIPPED
    return Accept.APPLY
