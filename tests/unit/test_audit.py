"""The settings audit says what changed from what to what, leaving out the bookkeeping fields, and
decides which settings records a worker applies: only the audited next version."""

from __future__ import annotations

from dataclasses import replace

import pytest

from processors.domain.audit import Accept, AuditRecord, Refusal, Stamp, Verdict, changes, summary, verdict
from processors.domain.model import CompanySettings, Crm, EventType, MeetingTypeSettings
from processors.domain import rules


def test_a_change_lists_only_the_fields_that_changed() -> None:
    before = CompanySettings("acme", updated_at=1, updated_by="User:a")
    after = replace(before, paused=True, timezone="Europe/Paris", updated_at=2, updated_by="User:b")
    diff = changes(before, after)
    assert diff == {"paused": {"old": False, "new": True}, "timezone": {"old": "Asia/Tokyo", "new": "Europe/Paris"}}
    assert summary(diff) == 'paused: false → true; timezone: "Asia/Tokyo" → "Europe/Paris"'


def test_a_new_document_shows_every_setting_as_new() -> None:
    doc = rules.set_meeting_type_toggle(
        rules.new_meeting_type("acme", "intro-30", 5, "User:a"), Crm.HUBSPOT, EventType.MEETING_BOOKED, True, 5, "User:a"
    )
    diff = changes(None, doc)
    assert diff["hubspot_sync"]["old"] is None
    assert diff["hubspot_sync"]["new"]["meeting_booked"] is True
    assert set(diff) == {"hubspot_sync"}  # ids and untouched defaults are not changes
    assert isinstance(doc, MeetingTypeSettings)


def test_no_change_says_so_and_a_record_round_trips() -> None:
    doc = CompanySettings("acme")
    assert summary(changes(doc, replace(doc, updated_at=9))) == "no change"
    record = AuditRecord(7, "User:admin", "acme", "company/acme", changes(doc, replace(doc, paused=True)))
    assert AuditRecord.from_json(record.to_json()) == record
    assert record.summary == "paused: false → true"


def test_an_entry_written_before_versions_still_reads() -> None:
    old = b'{"at": 7, "actor": "User:admin", "company_id": "acme", "key": "company/acme", "changes": {}}'
    assert AuditRecord.from_json(old) == AuditRecord(7, "User:admin", "acme", "company/acme", {})
    new = AuditRecord(7, "User:admin", "acme", "company/acme", {}, id="a-1", version=3)
    assert AuditRecord.from_json(new.to_json()) == new


KEY = "company/acme"


def entry(audit_id: str, version: int, key: str = KEY) -> AuditRecord:
    return AuditRecord(1, "User:admin", "acme", key, {}, id=audit_id, version=version)


@pytest.mark.parametrize(
    "applied, record, found, latest, expected",
    [
        # records written before versions: a baseline until the document has a versioned record
        (None, Stamp(0, None), None, None, Accept.APPLY),
        (Stamp(0, None), Stamp(0, None), None, None, Accept.APPLY),
        (Stamp(3, "a-3"), Stamp(0, None), None, 3, Refusal.UNVERSIONED),
        # the next version with its own audit entry
        (None, Stamp(1, "a-1"), entry("a-1", 1), 1, Accept.APPLY),
        (Stamp(0, None), Stamp(1, "a-1"), entry("a-1", 1), 1, Accept.APPLY),
        (Stamp(3, "a-3"), Stamp(4, "a-4"), entry("a-4", 4), 4, Accept.APPLY),
        # compaction removed the earlier versions: the first one read is taken…
        (None, Stamp(7, "a-7"), entry("a-7", 7), 7, Accept.APPLY),
        # …unless the audit vouches for a newer one (a rebuild passing an old version)
        (None, Stamp(6, "a-6"), entry("a-6", 6), 7, Accept.SUPERSEDED),
        # no audit entry, or one for something else
        (Stamp(3, "a-3"), Stamp(4, None), None, 3, Refusal.AUDIT_MISSING),
        (Stamp(3, "a-3"), Stamp(4, "forged"), None, 3, Refusal.AUDIT_MISSING),
        (None, Stamp(1, "a-1"), None, None, Refusal.AUDIT_MISSING),
        (Stamp(3, "a-3"), Stamp(4, "a-4"), entry("a-4", 5), 5, Refusal.AUDIT_MISMATCH),
        (Stamp(3, "a-3"), Stamp(4, "a-4"), entry("a-4", 4, "company/other"), 3, Refusal.AUDIT_MISMATCH),
        # replays, lost races, skips
        (Stamp(3, "a-3"), Stamp(3, "a-3"), entry("a-3", 3), 3, Refusal.VERSION_REPEATED),
        (Stamp(3, "a-3"), Stamp(2, "a-2"), entry("a-2", 2), 3, Refusal.VERSION_REPEATED),
        (Stamp(3, "a-3"), Stamp(5, "a-5"), entry("a-5", 5), 5, Refusal.VERSION_SKIPPED),
        (Stamp(0, None), Stamp(2, "a-2"), entry("a-2", 2), 2, Refusal.VERSION_SKIPPED),
    ],
)
def test_only_the_audited_next_version_is_applied(
    applied: Stamp | None, record: Stamp, found: AuditRecord | None, latest: int | None, expected: Verdict
) -> None:
    assert verdict(KEY, applied, record, found, latest) == expected
