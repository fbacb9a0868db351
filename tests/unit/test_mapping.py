"""Field mapping (SPEC §7): source paths from the Avro schemas, core-field protection, conversion."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from processors.domain import mapping, rules
from processors.domain.mapping import Kind, MappingError
from processors.domain.model import (
    Crm,
    EventType,
    FieldMapping,
    MeetingBooked,
    MeetingTypeSettings,
    Person,
    SurveyAnswered,
)
from processors.domain.render import DESCRIPTION_LIMIT, NOTE_BODY_LIMIT, TRUNCATION_MARKER

SF, HS = Crm.SALESFORCE, Crm.HUBSPOT
MB = EventType.MEETING_BOOKED
T = int(datetime(2026, 11, 30, 15, 30, tzinfo=timezone.utc).timestamp() * 1000)  # 2026-12-01 00:30 in Tokyo


def booking(**kw) -> MeetingBooked:
    base = dict(
        event_id="e-1", occurred_at=T, company_id="acme", meeting_type_id="mt-1", meeting_id="m-1",
        meeting_type_name="Demo", host=Person("host@example.com", "Hana"),
        booker=Person("lead@example.org", "Lee", "Lead Co", "+81-90"), start_at=T, end_at=T + 1_800_000,
        timezone="Asia/Tokyo",
    )
    return MeetingBooked(**{**base, **kw})


# ---- source paths ------------------------------------------------------------------------------

def test_sources_are_the_scalar_fields_of_the_schema_in_order():
    assert mapping.mapping_sources(MB) == [
        "event_id", "occurred_at", "occurred_at:date", "company_id", "meeting_type_id", "meeting_id",
        "meeting_type_name", "host.email", "host.name", "host.company_name", "host.phone",
        "booker.email", "booker.name", "booker.company_name", "booker.phone",
        "start_at", "start_at:date", "end_at", "end_at:date", "timezone", "meeting_url",
    ]


@pytest.mark.parametrize("event_type,path,kind", [
    (MB, "booker.phone", Kind.STRING),
    (MB, "start_at", Kind.TIMESTAMP),
    (MB, "start_at:date", Kind.DATE),
    (MB, "meeting_url", Kind.STRING),  # nullable union
    (EventType.RESEARCH_COMPLETED, "research_kind", Kind.STRING),  # enum
    (EventType.RESEARCH_COMPLETED, "target.company_name", Kind.STRING),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, "host.email", Kind.STRING),  # nullable record
    (EventType.PRE_EXIT_SURVEY_ANSWERED, "meeting_start_at", Kind.TIMESTAMP),  # nullable timestamp
    (EventType.PRE_EXIT_SURVEY_ANSWERED, "meeting_start_at:date", Kind.DATE),
])
def test_valid_sources(event_type, path, kind):
    assert mapping.check_source(event_type, path) is kind


@pytest.mark.parametrize("event_type,path,message", [
    (MB, "__class__", "private attributes"),
    (MB, "booker.__dict__", "private attributes"),
    (MB, "_secret", "private attributes"),
    (MB, "booker", "is a record; map one of its fields, e.g. booker.email"),
    (MB, "booker.fax", "is not a field of meeting_booked"),
    (MB, "form_answers", "is not a field"),  # arrays are not scalar
    (MB, "booker.name:date", ":date is only for timestamps"),
    (MB, "result", "is not a field of meeting_booked"),  # a field of another event
    (MB, "", "is not a field"),
    (EventType.RESEARCH_COMPLETED, "booker.phone", "is not a field of research_completed"),
])
def test_invalid_sources(event_type, path, message):
    with pytest.raises(MappingError, match=message.replace(".", r"\.")) as caught:
        mapping.check_source(event_type, path)
    assert "\n" not in str(caught.value)


def test_schema_kinds_of_other_avro_types():
    schema = {"type": "record", "name": "X", "fields": [
        {"name": "flag", "type": "boolean"}, {"name": "n", "type": "int"}, {"name": "big", "type": ["null", "long"]},
        {"name": "x", "type": "double"}, {"name": "f", "type": {"type": "float"}}, {"name": "raw", "type": "bytes"},
        {"name": "either", "type": ["string", "long"]}, {"name": "m", "type": {"type": "map", "values": "string"}},
    ]}
    assert mapping.schema_kinds(schema) == {
        "flag": Kind.BOOLEAN, "n": Kind.INTEGER, "big": Kind.INTEGER, "x": Kind.NUMBER, "f": Kind.NUMBER,
    }


# ---- CRM fields --------------------------------------------------------------------------------

@pytest.mark.parametrize("crm,name,ok", [
    (SF, "Phone__c", True), (SF, "Lead_Source__c", True), (SF, "ns__Score__c", True), (SF, "CallDisposition", True),
    (SF, "Bad Name", False), (SF, "1Field", False), (SF, "a__b__c__c", False), (SF, "Trailing_", False),
    (SF, "x" * 81, False), (SF, "", False), (SF, "Field$", False),
    (HS, "booker_phone", True), (HS, "x1", True), (HS, "BookerPhone", False), (HS, "booker-phone", False),
    (HS, "_x", False), (HS, "x" * 101, False),
])
def test_field_name_format(crm, name, ok):
    if ok:
        mapping.check_field(crm, name)
    else:
        with pytest.raises(MappingError, match="is not an? "):
            mapping.check_field(crm, name)


@pytest.mark.parametrize("crm,name,core", [
    (SF, "Subject", True), (SF, "subject", True), (SF, "Description", True), (SF, "ActivityDate", True),
    (SF, "WhoId", True), (SF, "OwnerId", True), (SF, "WhatId", True), (SF, "Id", True), (SF, "Phone__c", False),
    (HS, "hs_meeting_title", True), (HS, "hs_timestamp", True), (HS, "hs_note_body", True),
    (HS, "hubspot_owner_id", True), (HS, "lead_company", False), (HS, "phs_x", False),
])
def test_core_fields(crm, name, core):
    assert mapping.is_core(crm, name) is core


def test_core_field_needs_allow_core_and_external_id_is_never_mappable():
    with pytest.raises(MappingError, match="rendered by crm-sync; pass allow_core"):
        mapping.check_mapping(FieldMapping(SF, MB, "Subject", "booker.name"))
    assert mapping.check_mapping(FieldMapping(SF, MB, "Subject", "booker.name", allow_core=True)).allow_core
    with pytest.raises(MappingError, match="external-id field"):
        mapping.check_mapping(FieldMapping(SF, MB, "crm_sync_id__c", "booker.name"), ["CRM_Sync_Id__c"])
    with pytest.raises(MappingError, match="external-id field"):
        mapping.check_mapping(FieldMapping(HS, MB, "crm_sync_id", "booker.name", allow_core=True), ["crm_sync_id"])


def test_with_and_without_mapping():
    a = FieldMapping(SF, MB, "Phone__c", "booker.phone")
    b = FieldMapping(HS, MB, "phone", "booker.phone")
    replaced = mapping.with_mapping((a, b), FieldMapping(SF, MB, "PHONE__C", "host.phone"))
    assert replaced == (FieldMapping(SF, MB, "PHONE__C", "host.phone"), b)
    assert mapping.with_mapping((a,), b) == (a, b)
    assert mapping.without_mapping((a, b), SF, MB, "phone__c") == (b,)
    with pytest.raises(MappingError, match="no mapping to hubspot field 'Phone'"):
        mapping.without_mapping((a, b), HS, MB, "Phone")  # HubSpot names are case-sensitive
    with pytest.raises(MappingError, match="no mapping"):
        mapping.without_mapping((a,), SF, EventType.RESEARCH_COMPLETED, "Phone__c")


# ---- conversion -------------------------------------------------------------------------------

@pytest.mark.parametrize("value,kind,crm,tz,expected", [
    (T, Kind.TIMESTAMP, SF, "Asia/Tokyo", "2026-12-01T00:30:00.000+09:00"),
    (T, Kind.TIMESTAMP, SF, "America/New_York", "2026-11-30T10:30:00.000-05:00"),
    (T + 7, Kind.TIMESTAMP, HS, "Asia/Tokyo", "2026-11-30T15:30:00.007Z"),
    (T, Kind.DATE, SF, "Asia/Tokyo", "2026-12-01"),
    (T, Kind.DATE, SF, "UTC", "2026-11-30"),
    (T, Kind.DATE, HS, "Asia/Tokyo", "2026-12-01"),
    (True, Kind.BOOLEAN, SF, "UTC", "true"),
    (False, Kind.BOOLEAN, HS, "UTC", "false"),
    (42, Kind.INTEGER, SF, "UTC", "42"),
    (-3, Kind.INTEGER, HS, "UTC", "-3"),
    (1.5, Kind.NUMBER, SF, "UTC", "1.5"),
    (1e-7, Kind.NUMBER, SF, "UTC", "0.0000001"),
    (2e21, Kind.NUMBER, HS, "UTC", "2000000000000000000000"),
    (3.0, Kind.NUMBER, HS, "UTC", "3"),
    ("予約", Kind.STRING, SF, "UTC", "予約"),
])
def test_convert(value, kind, crm, tz, expected):
    assert mapping.convert(value, kind, crm, tz) == expected


@pytest.mark.parametrize("crm,field,text,expected_len,expected_end", [
    (SF, "Custom__c", "x" * 300, 255, TRUNCATION_MARKER),
    (SF, "Custom__c", "x" * 255, 255, "x"),
    (SF, "Description", "x" * 40_000, DESCRIPTION_LIMIT, TRUNCATION_MARKER),
    (SF, "subject", "x" * 300, 255, TRUNCATION_MARKER),
    (HS, "hs_meeting_title", "x" * 300, 255, TRUNCATION_MARKER),
    (HS, "lead_notes", "x" * 70_000, 65_536, TRUNCATION_MARKER),
    (HS, "lead_notes", "<b>", 3, "<b>"),  # not an HTML property: kept as typed
])
def test_fit_truncates_to_the_field_length(crm, field, text, expected_len, expected_end):
    fitted = mapping.fit(text, crm, field)
    assert len(fitted) == expected_len and fitted.endswith(expected_end)


def test_fit_escapes_hubspot_html_bodies():
    assert mapping.fit("<script>a & b</script>\nline 2", HS, "hs_note_body") == "&lt;script&gt;a &amp; b&lt;/script&gt;<br>line 2"
    long = mapping.fit("&" * 70_000, HS, "hs_meeting_body")
    assert len(long) <= NOTE_BODY_LIMIT and long.endswith(TRUNCATION_MARKER)
    assert "&amp" not in long.removesuffix(TRUNCATION_MARKER).rsplit(";", 1)[-1]  # no half entity


def test_mapped_fields():
    mappings = (
        FieldMapping(SF, MB, "Phone__c", "booker.phone"),
        FieldMapping(SF, MB, "Start__c", "start_at"),
        FieldMapping(SF, MB, "Day__c", "start_at:date"),
        FieldMapping(SF, MB, "Url__c", "meeting_url"),  # None: left out
        FieldMapping(SF, MB, "Class__c", "__class__"),  # stored before paths were checked: ignored
        FieldMapping(SF, MB, "Subject", "booker.name"),  # core without allow_core: ignored
        FieldMapping(SF, MB, "Description", "booker.company_name", allow_core=True),
        FieldMapping(SF, EventType.RESEARCH_COMPLETED, "Research__c", "result"),
        FieldMapping(HS, MB, "phone", "booker.phone"),
    )
    assert mapping.mapped_fields(booking(), SF, mappings, "Asia/Tokyo") == {
        "Phone__c": "+81-90", "Start__c": "2026-12-01T00:30:00.000+09:00", "Day__c": "2026-12-01",
        "Description": "Lead Co",
    }
    assert mapping.mapped_fields(booking(), HS, mappings, "Asia/Tokyo") == {"phone": "+81-90"}


def test_mapped_fields_through_an_absent_record():
    survey = SurveyAnswered("e", T, "acme", "mt", "PRE_EXIT", Person("a@b.co", "A"))
    mappings = (
        FieldMapping(HS, EventType.PRE_EXIT_SURVEY_ANSWERED, "host_email", "host.email"),
        FieldMapping(HS, EventType.PRE_EXIT_SURVEY_ANSWERED, "kind", "survey_kind"),
        FieldMapping(HS, EventType.PRE_MEETING_SURVEY_ANSWERED, "other", "survey_kind"),
    )
    assert mapping.mapped_fields(survey, HS, mappings, "UTC") == {"kind": "PRE_EXIT"}


# ---- apply copies mappings --------------------------------------------------------------------

def test_apply_copies_the_selected_events_mappings_of_the_crm():
    src_maps = (
        FieldMapping(SF, MB, "Phone__c", "booker.phone"),
        FieldMapping(SF, EventType.RESEARCH_COMPLETED, "R__c", "result"),
        FieldMapping(HS, MB, "phone", "booker.phone"),
    )
    source = MeetingTypeSettings("acme", "src", field_mappings=src_maps)
    old = (FieldMapping(SF, MB, "Old__c", "host.name"), FieldMapping(SF, EventType.RESEARCH_COMPLETED, "Keep__c", "result"))
    target = MeetingTypeSettings("acme", "dst", field_mappings=old)
    [updated] = rules.apply_to_other_meeting_types(source, [target], SF, [MB], 1, "admin")
    assert updated.field_mappings == (old[1], src_maps[0])
