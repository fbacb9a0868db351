"""The codec: both wire formats for every schema, readable errors, and old writers read by new readers."""

from __future__ import annotations

import copy
import io
import json
import random
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer

from processors.codec import (
    CONFLUENT,
    SINGLE_OBJECT,
    Codec,
    DecodeError,
    EncodeError,
    RegistryUnavailableError,
    default_codec,
    schema_fingerprint,
)
from schemas import HISTORY_DIR, full_name, load_schema

T0 = 1_714_525_323_456
HOST = {"email": "host@example.com", "name": "Hana Host", "company_name": "Booking Inc", "phone": "+81-3-0000-0000"}
BOOKER = {"email": "lead@example.org", "name": "Lee Lead", "company_name": "Lead Co", "phone": "+81-90-0000-0000"}
QAS = [{"question": "Team size?", "answer": "12"}, {"question": "Budget?", "answer": "未定"}]
TOGGLES = {
    "meeting_booked": True,
    "research_completed": False,
    "pre_meeting_survey_answered": True,
    "pre_exit_survey_answered": False,
}
COMMON = {"event_id": "evt-1", "occurred_at": T0, "company_id": "acme", "meeting_type_id": "mt-1"}
ACTION = {
    "action_id": "act-1",
    "event_id": "evt-1",
    "event_type": "meeting_booked",
    "company_id": "acme",
    "meeting_type_id": "mt-1",
    "crm": "SALESFORCE",
    "object_type": "TASK",
    "origin": "meeting_type",
    "occurred_at": T0,
    "due_at": T0 + 600_000,
    "planned_at": T0 + 5,
    "contact_email": "lead@example.org",
    "owner_email": "host@example.com",
    "properties": {"Subject": "面談予約のお知らせ", "Description": "..."},
    "attempt": 2,
    "first_due_at": T0 + 600_000,
}

# Every record schema with every field set (so equality after a round trip is exact).
RECORDS: dict[str, dict[str, Any]] = {
    "Person": HOST,
    "QA": QAS[0],
    "EventToggles": TOGGLES,
    "FieldMapping": {"crm": "HUBSPOT", "event_type": "meeting_booked", "crm_field": "phone", "source": "booker.phone", "allow_core": False},
    "MeetingBooked": {
        **COMMON,
        "meeting_id": "mtg-1",
        "meeting_type_name": "Product demo",
        "host": HOST,
        "booker": BOOKER,
        "start_at": T0 + 86_400_000,
        "end_at": T0 + 86_400_000 + 1_800_000,
        "timezone": "Asia/Tokyo",
        "meeting_url": "https://meet.example.com/abc",
        "form_answers": QAS,
    },
    "ResearchCompleted": {
        **COMMON,
        "research_kind": "CUSTOMER",
        "target": BOOKER,
        "form_answers": QAS,
        "result": "Lead Co sells widgets.",
    },
    "SurveyAnswered": {
        **COMMON,
        "survey_kind": "PRE_MEETING",
        "respondent": BOOKER,
        "host": HOST,
        "meeting_start_at": T0 + 86_400_000,
        "timezone": "Europe/Berlin",
        "answers": QAS,
    },
    "CompanySettings": {
        "company_id": "acme",
        "salesforce_connected": True,
        "hubspot_connected": False,
        "salesforce_company_todo": TOGGLES,
        "paused": True,
        "timezone": "America/New_York",
        "contact_recheck_seconds": [1200, 3600],
        "updated_at": T0,
        "updated_by": "admin@example.com",
        "version": 3,
        "audit_id": "audit-1",
    },
    "MeetingTypeSettings": {
        "company_id": "acme",
        "meeting_type_id": "mt-1",
        "meeting_type_name": "Product demo",
        "salesforce_todo": TOGGLES,
        "hubspot_sync": {**TOGGLES, "research_completed": True},
        "salesforce_subject": "Demo booked",
        "salesforce_comment": "Please prepare.",
        "hubspot_meeting_title": "Demo",
        "hubspot_meeting_body": "Body",
        "field_mappings": [
            {"crm": "SALESFORCE", "event_type": "meeting_booked", "crm_field": "Phone__c", "source": "booker.phone", "allow_core": True}
        ],
        "updated_at": T0,
        "updated_by": None,
        "version": 1,
        "audit_id": "audit-2",
    },
    "Action": ACTION,
    "DeadLetter": {
        "dead_letter_id": "dl-1",
        "stage": "deliver",
        "error_class": "permanent",
        "error_code": "STRING_TOO_LONG",
        "message": "a text value was too long for Subject",
        "source_topic": "crm-sync.due.v1",
        "source_partition": 3,
        "source_offset": 2**40,
        "original_key": b"acme",
        "original_value": b"\xc3\x01\x00\xff",
        "original_length": 4,
        "original_sha256": "9e8d2fb27b12ab66c12f4698113452f0786a58fc9d6330d73a75df0677912d48",
        "original_headers": [{"key": "traceparent", "value": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {"key": "empty", "value": None}],
        "action": ACTION,
        "company_id": "acme",
        "crm": "salesforce",
        "attempts": 5,
        "first_attempt_at": T0,
        "last_attempt_at": T0 + 1,
        "created_at": T0 + 2,
    },
    "DeadLetterStatus": {"dead_letter_id": "dl-1", "status": "resolved", "at": T0 + 3, "by": "admin@acme", "note": "fixed the field"},
}

MEETING_SUBJECT = "scheduling.meetings.v1-value"


def mock_registry() -> SchemaRegistryClient:
    """confluent-kafka's in-memory registry; ``new_client`` is what maps ``mock://`` to it."""
    return SchemaRegistryClient.new_client({"url": "mock://test"})


def history_schema(file_name: str) -> dict[str, Any]:
    return json.loads((HISTORY_DIR / file_name).read_text(encoding="utf-8"))


def avro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(copy.deepcopy(schema)), record)
    return out.getvalue()


def confluent_frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference algorithm, written out independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.fixture(scope="module")
def codec() -> Codec:
    return default_codec()


def test_fixtures_cover_every_record_schema(codec: Codec) -> None:
    assert set(RECORDS) == set(codec.schema_names)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_single_object_round_trip(codec: Codec, name: str) -> None:
    data = codec.encode(name, RECORDS[name])
    decoded = codec.decode(data)
    assert decoded.schema_name == name
    assert decoded.encoding == SINGLE_OBJECT
    assert decoded.value == RECORDS[name]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_confluent_round_trip(name: str) -> None:
    registry = mock_registry()
    codec = Codec(registry)
    data = codec.encode_confluent(name, RECORDS[name], subject=f"{name}-value")
    registered = registry.get_latest_version(f"{name}-value")
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == registered.schema_id
    decoded = Codec(registry).decode(data)
    assert (decoded.schema_name, decoded.encoding, decoded.value) == (name, CONFLUENT, RECORDS[name])


def test_registered_schema_keeps_logical_types() -> None:
    registry = mock_registry()
    Codec(registry).encode_confluent("MeetingBooked", RECORDS["MeetingBooked"], MEETING_SUBJECT)
    schema = json.loads(registry.get_latest_version(MEETING_SUBJECT).schema.schema_str)
    occurred_at = next(field for field in schema["fields"] if field["name"] == "occurred_at")
    assert occurred_at["type"] == {"type": "long", "logicalType": "timestamp-millis"}


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [
        ('"null"', 7195948357588979594),
        ('"int"', 8247732601305521295),
        ('"long"', -3434872931120570953),
        ('{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
    ],
)
def test_fingerprint_matches_avro_reference_vectors(canonical: str, expected: int) -> None:
    assert int.from_bytes(schema_fingerprint(json.loads(canonical)), "little", signed=True) == expected


def test_single_object_header_is_magic_plus_little_endian_rabin_of_canonical_form(codec: Codec) -> None:
    data = codec.encode("QA", RECORDS["QA"])
    canonical = b'{"name":"crmsync.v1.QA","type":"record","fields":[{"name":"question","type":"string"},' \
                b'{"name":"answer","type":"string"}]}'
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == crc64_avro(canonical).to_bytes(8, "little")
    assert data[10:] == avro_body(load_schema("QA"), RECORDS["QA"])


def test_timestamps_decode_as_int_milliseconds_and_aware_datetimes_encode(codec: Codec) -> None:
    tokyo = timezone(timedelta(hours=9))
    record = {**RECORDS["ResearchCompleted"], "occurred_at": datetime(2024, 5, 1, 9, 2, 3, 456_999, tzinfo=tokyo)}
    value = codec.decode(codec.encode("ResearchCompleted", record)).value
    assert value["occurred_at"] == int(datetime(2024, 5, 1, 0, 2, 3, 456_000, tzinfo=timezone.utc).timestamp() * 1000)
    assert isinstance(value["occurred_at"], int)


def test_optional_fields_and_arrays_get_their_defaults(codec: Codec) -> None:
    minimal = {k: v for k, v in RECORDS["MeetingBooked"].items() if k not in ("meeting_url", "form_answers")}
    value = codec.decode(codec.encode("MeetingBooked", minimal)).value
    assert value["meeting_url"] is None
    assert value["form_answers"] == []


@pytest.mark.parametrize(
    ("name", "change", "reason"),
    [
        ("MeetingBooked", {"booker": {"email": "lead@example.org"}}, "booker.name: required field missing"),
        ("MeetingBooked", {"timezone": None}, "timezone: null not allowed"),
        ("MeetingBooked", {"start_at": "tomorrow"}, "start_at: expected timestamp-millis"),
        ("MeetingBooked", {"start_at": datetime(2024, 5, 1)}, "start_at: naive datetime"),
        ("MeetingBooked", {"meeting_url": 42}, "meeting_url: expected string, got int"),
        ("MeetingBooked", {"form_answers": [QAS[0], {"question": "q"}]}, "form_answers[1].answer: required field"),
        ("MeetingBooked", {"meetingurl": "https://x"}, "unknown field(s) meetingurl"),
        ("ResearchCompleted", {"research_kind": "PERSON"}, "research_kind: expected one of COMPANY, CUSTOMER"),
        ("SurveyAnswered", {"host": {"email": "h@example.com"}}, "host.name: required field missing"),
        ("Action", {"properties": {"Subject": 1}}, "properties['Subject']: expected string"),
        ("Action", {"attempt": True}, "attempt: expected int, got bool"),
        ("DeadLetter", {"source_partition": 2**31}, "source_partition: expected int"),
        ("QA", {"answer": "\ud800"}, "answer: not encodable as UTF-8"),
    ],
)
def test_encode_refuses_invalid_records_with_a_readable_reason(
    codec: Codec, name: str, change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(EncodeError) as raised:
        codec.encode(name, {**RECORDS[name], **change})
    assert reason in raised.value.reason
    assert raised.value.code == "invalid_record"
    assert raised.value.schema_name == name


def test_encode_reasons_never_carry_field_values(codec: Codec) -> None:
    with pytest.raises(EncodeError) as raised:
        codec.encode("Person", {"email": 12345, "name": "Secret Name"})
    assert "12345" not in str(raised.value) and "Secret" not in str(raised.value)


def test_encode_unknown_schema_and_non_mapping(codec: Codec) -> None:
    with pytest.raises(EncodeError, match="no record schema named 'Nope'"):
        codec.encode("Nope", {})
    with pytest.raises(EncodeError, match="no record schema"):
        codec.encode("Crm", {})
    with pytest.raises(EncodeError, match="expected record QA, got list"):
        codec.encode("QA", [])  # type: ignore[arg-type]


def test_invalid_record_registers_nothing() -> None:
    registry = mock_registry()
    with pytest.raises(EncodeError):
        Codec(registry).encode_confluent("QA", {"question": "q"}, "qa-value")
    assert registry.get_subjects() == []


def test_encode_confluent_without_registry_is_refused(codec: Codec) -> None:
    with pytest.raises(EncodeError, match="no schema registry configured"):
        codec.encode_confluent("QA", RECORDS["QA"], "qa-value")


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (b"", "empty", "empty record"),
        (None, "empty", "empty record"),
        (b"\x7bnot avro at all", "unknown_magic", "unknown magic byte 0x7b"),
        (b"\xc3\x02" + bytes(12), "unknown_magic", "unknown magic byte 0xc3"),
        (b"\xc3\x01\x01\x02", "truncated", "truncated single-object header"),
        (b"\xc3\x01" + bytes(8) + b"\x02", "unknown_fingerprint", "unknown schema fingerprint 0000000000000000"),
        (b"\x00\x00\x00\x00\x01\x02", "no_registry", "confluent wire format but no schema registry configured"),
    ],
)
def test_undecodable_input_is_a_decode_error_with_a_reason(
    codec: Codec, data: bytes | None, code: str, reason: str
) -> None:
    with pytest.raises(DecodeError) as raised:
        codec.decode(data)
    assert reason in raised.value.reason
    assert raised.value.code == code


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_truncation_is_a_decode_error(codec: Codec, name: str) -> None:
    data = codec.encode(name, RECORDS[name])
    for cut in range(1, len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:cut])


def test_trailing_bytes_are_a_decode_error(codec: Codec) -> None:
    with pytest.raises(DecodeError) as raised:
        codec.decode(codec.encode("QA", RECORDS["QA"]) + b"\x00")
    assert raised.value.code == "trailing_bytes"


def test_corrupt_string_is_a_decode_error(codec: Codec) -> None:
    data = bytearray(codec.encode("QA", {"question": "ab", "answer": "c"}))
    data[11] = 0xFF
    with pytest.raises(DecodeError, match="corrupt QA body"):
        codec.decode(bytes(data))


def test_random_bodies_decode_or_fail_only_with_decode_error(codec: Codec) -> None:
    rng = random.Random(20240501)
    for name in RECORDS:
        header = b"\xc3\x01" + codec.fingerprint(name)
        for _ in range(200):
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
            try:
                codec.decode(header + body)
            except DecodeError:
                pass


def test_older_writer_version_decodes_into_the_current_shape(codec: Codec) -> None:
    old = history_schema("MeetingBooked.v1.avsc")
    record = {k: v for k, v in RECORDS["MeetingBooked"].items() if k != "meeting_url"}
    data = b"\xc3\x01" + schema_fingerprint(old) + avro_body(old, record)
    assert data[2:10] != codec.fingerprint("MeetingBooked")
    decoded = codec.decode(data)
    assert decoded.schema_name == "MeetingBooked"
    assert decoded.value == {**record, "meeting_url": None}


UNVERSIONED = {"version": 0, "audit_id": None}  # what settings written before versions decode to


@pytest.mark.parametrize("name, file", [("CompanySettings", "CompanySettings.v3.avsc"), ("MeetingTypeSettings", "MeetingTypeSettings.v2.avsc")])
def test_settings_written_before_versions_decode_as_version_0_without_an_audit_id(codec: Codec, name: str, file: str) -> None:
    old = history_schema(file)
    record = {k: v for k, v in RECORDS[name].items() if k not in UNVERSIONED}
    decoded = codec.decode(b"\xc3\x01" + schema_fingerprint(old) + avro_body(old, record))
    assert decoded.value == {**record, **UNVERSIONED}


def test_dead_letters_written_before_original_headers_decode_without_them(codec: Codec) -> None:
    old = history_schema("DeadLetter.v2.avsc")
    record = {k: v for k, v in RECORDS["DeadLetter"].items() if k != "original_headers"}
    decoded = codec.decode(b"\xc3\x01" + schema_fingerprint(old) + avro_body(old, record))
    assert decoded.value == {**record, "original_headers": None}


def test_older_company_settings_get_the_default_timezone(codec: Codec) -> None:
    old = history_schema("CompanySettings.v1.avsc")
    record = {k: v for k, v in RECORDS["CompanySettings"].items() if k not in ("timezone", "contact_recheck_seconds", *UNVERSIONED)}
    decoded = codec.decode(b"\xc3\x01" + schema_fingerprint(old) + avro_body(old, record))
    assert decoded.value == {**record, "timezone": "Asia/Tokyo", "contact_recheck_seconds": [], **UNVERSIONED}


def test_older_settings_get_no_recheck_and_no_core_overwrite(codec: Codec) -> None:
    old = history_schema("CompanySettings.v2.avsc")
    record = {k: v for k, v in RECORDS["CompanySettings"].items() if k not in ("contact_recheck_seconds", *UNVERSIONED)}
    decoded = codec.decode(b"\xc3\x01" + schema_fingerprint(old) + avro_body(old, record))
    assert decoded.value == {**record, "contact_recheck_seconds": [], **UNVERSIONED}
    old = history_schema("MeetingTypeSettings.v1.avsc")
    record = {k: v for k, v in RECORDS["MeetingTypeSettings"].items() if k not in UNVERSIONED}
    record["field_mappings"] = [{k: v for k, v in m.items() if k != "allow_core"} for m in record["field_mappings"]]
    decoded = codec.decode(b"\xc3\x01" + schema_fingerprint(old) + avro_body(old, record))
    assert decoded.value["field_mappings"] == [{**record["field_mappings"][0], "allow_core": False}]


def test_confluent_older_and_newer_writers_resolve_to_our_reader() -> None:
    registry = mock_registry()
    old = history_schema("MeetingBooked.v1.avsc")
    newer = load_schema("MeetingBooked")
    newer["fields"].append({"name": "location", "type": ["null", "string"], "default": None})
    record = {k: v for k, v in RECORDS["MeetingBooked"].items() if k != "meeting_url"}
    old_id = registry.register_schema(MEETING_SUBJECT, Schema(json.dumps(old), "AVRO"))
    new_id = registry.register_schema(MEETING_SUBJECT, Schema(json.dumps(newer), "AVRO"))
    codec = Codec(registry)

    from_old = codec.decode(confluent_frame(old_id, avro_body(old, record)))
    newer_record = {**RECORDS["MeetingBooked"], "location": "Tokyo"}
    from_new = codec.decode(confluent_frame(new_id, avro_body(newer, newer_record)))

    assert from_old.value == {**record, "meeting_url": None}
    assert from_new.value == RECORDS["MeetingBooked"]


def test_confluent_writer_with_schema_references() -> None:
    registry = mock_registry()
    for name in ("Person", "QA"):
        registry.register_schema(f"crmsync.v1.{name}", Schema(json.dumps(load_schema(name)), "AVRO"))
    with_refs = json.loads((HISTORY_DIR.parent / "MeetingBooked.avsc").read_text(encoding="utf-8"))
    references = [SchemaReference(f"crmsync.v1.{name}", f"crmsync.v1.{name}", 1) for name in ("Person", "QA")]
    schema_id = registry.register_schema(MEETING_SUBJECT, Schema(json.dumps(with_refs), "AVRO", references))

    decoded = Codec(registry).decode(confluent_frame(schema_id, avro_body(load_schema("MeetingBooked"),
                                                                          RECORDS["MeetingBooked"])))
    assert decoded.value == RECORDS["MeetingBooked"]


def test_writer_schema_is_fetched_once_per_id() -> None:
    registry = mock_registry()
    schema_id = registry.register_schema("qa-value", Schema(json.dumps(load_schema("QA")), "AVRO"))
    calls: list[int] = []
    fetch = registry.get_schema

    def counting_get_schema(requested: int, *args: Any, **kwargs: Any) -> Schema:
        calls.append(requested)
        return fetch(requested, *args, **kwargs)

    registry.get_schema = counting_get_schema  # type: ignore[method-assign]
    codec = Codec(registry)
    data = confluent_frame(schema_id, avro_body(load_schema("QA"), RECORDS["QA"]))
    for _ in range(3):
        assert codec.decode(data).value == RECORDS["QA"]
    assert calls == [schema_id]


@pytest.mark.parametrize(
    ("schema", "schema_type", "code"),
    [
        (None, "AVRO", "unknown_schema_id"),
        ({"type": "object"}, "JSON", "not_avro"),
        ({"type": "record", "name": "crmsync.v1.Unknown", "fields": []}, "AVRO", "no_reader_schema"),
        ({"type": "record", "name": "crmsync.v1.QA", "fields": [{"name": "question", "type": "string"}]},
         "AVRO", "incompatible_schema"),
        ("string", "AVRO", "not_record"),
    ],
)
def test_confluent_decode_errors(schema: Any, schema_type: str, code: str) -> None:
    registry = mock_registry()
    schema_id = 4242 if schema is None else registry.register_schema("s", Schema(json.dumps(schema), schema_type))
    with pytest.raises(DecodeError) as raised:
        Codec(registry).decode(confluent_frame(schema_id, b"\x02a"))
    assert raised.value.code == code
    assert raised.value.encoding == CONFLUENT


def test_truncated_confluent_header() -> None:
    with pytest.raises(DecodeError, match="truncated confluent header"):
        Codec(mock_registry()).decode(b"\x00\x00\x01")


def test_unreachable_registry_is_transient_not_a_decode_error() -> None:
    registry = mock_registry()

    def unreachable(*args: Any, **kwargs: Any) -> Schema:
        raise ConnectionError("connection refused")

    registry.get_schema = unreachable  # type: ignore[method-assign]
    with pytest.raises(RegistryUnavailableError) as raised:
        Codec(registry).decode(confluent_frame(7, b""))
    assert not isinstance(raised.value, DecodeError)
    assert raised.value.code == "registry_unavailable"


def untagged(value: Any) -> Any:
    """A compiled check's result without its union tags (fastavro's tuple notation): what `conform` returns."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return untagged(value[1])
    if isinstance(value, dict):
        return {key: untagged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [untagged(item) for item in value]
    return value


def test_default_codec_is_shared() -> None:
    assert default_codec() is default_codec()


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_the_compiled_check_returns_what_the_generic_walk_returns(name: str) -> None:
    """The per-schema check (the encoder's fast path) and `conform` agree, defaults and copies included."""
    from fastavro.schema import expand_schema

    from processors.codec.conform import compile_conform, conform

    schema = expand_schema(load_schema(name))
    complete = RECORDS[name]
    sparse = {k: v for k, v in complete.items() if not isinstance(v, (list, dict)) or k == "properties"}
    for record in (complete, sparse):
        try:
            expected: Any = conform(schema, copy.deepcopy(record), "")
        except Exception as exc:  # a sparse record may miss required fields: the same error, then
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                compile_conform(schema)(copy.deepcopy(record))
            continue
        assert untagged(compile_conform(schema)(copy.deepcopy(record))) == expected


def test_the_compiled_check_leaves_datetimes_and_other_sequences_to_the_generic_walk() -> None:
    from fastavro.schema import expand_schema

    from processors.codec.conform import compile_conform

    check = compile_conform(expand_schema(load_schema("MeetingBooked")))
    aware = datetime.fromtimestamp(T0 / 1000, tz=timezone.utc)
    record = {**RECORDS["MeetingBooked"], "start_at": aware, "form_answers": tuple(QAS)}
    conformed = check(record)
    assert conformed["start_at"] == T0 and conformed["form_answers"] == QAS


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_tagged_unions_write_the_same_bytes_as_untagged_values(name: str) -> None:
    """The compiled check tags union values for the writer; the bytes are those of the plain values."""
    from fastavro.schema import expand_schema

    from processors.codec.conform import compile_conform, conform

    schema = expand_schema(load_schema(name))
    parsed = Codec()._readers[full_name(name)]  # the writer schema the codec writes with

    def written(value: Any) -> bytes:
        out = io.BytesIO()
        schemaless_writer(out, parsed, value)
        return out.getvalue()

    record = copy.deepcopy(RECORDS[name])
    tagged = compile_conform(schema)(copy.deepcopy(record))
    assert written(tagged) == written(conform(schema, record, ""))
    if any(isinstance(v, tuple) for v in tagged.values()):
        assert untagged(tagged) != tagged
