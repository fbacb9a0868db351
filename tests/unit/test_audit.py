"""The settings audit says what changed from what to what, leaving out the bookkeeping fields."""

from __future__ import annotations

from dataclasses import replace

from processors.domain.audit import AuditRecord, changes, summary
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
