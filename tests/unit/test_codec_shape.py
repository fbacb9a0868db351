"""Writer schemas from a registry are checked before fastavro reads with them: shapes as a table
(recursive, too deep, items that take no bytes, too much work per byte), resolution to our reader as
a table, and through the codec: hostile counts and lengths end quickly, the subject must be the
topic's, and a refusal is decided once per schema id."""

from __future__ import annotations

import copy
import io
import json
from time import monotonic
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer

import processors.codec as codec_module
from processors.codec import MAX_REFERENCES, Codec, DecodeError
from processors.codec.shape import MAX_DEPTH, MAX_NODES, json_depth_problem, resolution_problem, shape_problem
from processors.domain.deadletter import Source
from processors.stages.ingest import prepare
from schemas import load_catalog, load_schema

TOPIC = "scheduling.meetings.v1"
SUBJECT = f"{TOPIC}-value"


def parsed(schema: Any) -> tuple[Any, dict[str, Any]]:
    named: dict[str, Any] = {}
    return parse_schema(copy.deepcopy(schema), named), named


def record(name: str, *fields: tuple[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def nested(depth: int) -> dict[str, Any]:
    schema: Any = "int"
    for level in range(depth):
        schema = record(f"L{level}", ("inner", schema))
    return schema


NULLS = record("Nulls", *((f"n{i}", "null") for i in range(3)))
WIDE_ITEM = record("Wide", ("x", "int"), *((f"n{i}", "null") for i in range(40)))

REFUSED = [
    ("direct recursion", record("Loop", ("next", ["null", "Loop"])), "Loop refers to itself (Loop → Loop)"),
    ("indirect recursion", record("A", ("b", ["null", record("B", ("a", ["null", "A"]))])), "A refers to itself (A → B → A)"),
    ("recursion through an array", record("T", ("children", {"type": "array", "items": "T"})), "T refers to itself"),
    ("recursion through a map", record("M", ("more", {"type": "map", "values": "M"})), "M refers to itself"),
    ("too deep", nested(MAX_DEPTH), f"more than {MAX_DEPTH}"),
    ("array of null", record("R", ("blanks", {"type": "array", "items": "null"})), "array of null: its items take no bytes"),
    ("array of a record of nulls", record("R", ("blanks", {"type": "array", "items": NULLS})), "array of Nulls: its items take no bytes"),
    ("array of empty fixed", record("R", ("f", {"type": "array", "items": {"type": "fixed", "name": "F", "size": 0}})), "take no bytes"),
    ("array of arrays of null", record("R", ("a", {"type": "array", "items": {"type": "array", "items": "null"}})), "array of null"),
    ("much work per byte", record("R", ("wide", {"type": "array", "items": WIDE_ITEM})), "42 schema nodes per item for 1 byte(s)"),
    ("a negative fixed size", record("R", ("f", {"type": "fixed", "name": "F", "size": -1})), "fixed F with size -1"),
    ("too many nodes", record("R", *((f"f{i}", "int") for i in range(MAX_NODES + 1))), f"more than {MAX_NODES}"),
]


@pytest.mark.parametrize(("case", "schema", "reason"), REFUSED, ids=[case for case, _, _ in REFUSED])
def test_unbounded_shapes_are_refused(case: str, schema: Any, reason: str) -> None:
    problem = shape_problem(*parsed(schema))
    assert problem is not None and reason in problem


ACCEPTED = [
    ("array of int", record("R", ("a", {"type": "array", "items": "int"}))),
    ("map of null (each entry has a key)", record("R", ("m", {"type": "map", "values": "null"}))),
    ("a named type used twice", record("R", ("p", record("P", ("x", "int"))), ("q", "P"))),
    ("nullable string", record("R", ("s", ["null", "string"]))),
    ("items holding wide items (each counted against its own bytes)",
     record("R", ("a", {"type": "array", "items": record("I", ("n", "int"), ("inner", {"type": "array", "items": record(
         "J", *((f"f{i}", "int") for i in range(30)))}))}))),
    ("just under the depth", nested(MAX_DEPTH - 2)),
]


@pytest.mark.parametrize(("case", "schema"), ACCEPTED, ids=[case for case, _ in ACCEPTED])
def test_bounded_shapes_are_accepted(case: str, schema: Any) -> None:
    assert shape_problem(*parsed(schema)) is None


def test_every_schema_of_ours_current_and_historical_is_accepted_and_resolves_to_today() -> None:
    catalog = load_catalog()
    current = {f.full_name: parsed(dict(f.schema)) for f in catalog.current.values() if f.schema["type"] == "record"}
    for file in [*catalog.current.values(), *catalog.history]:
        if file.schema["type"] != "record":
            continue
        writer, named = parsed(dict(file.schema))
        assert shape_problem(writer, named) is None, file.full_name
        reader, reader_named = current[file.full_name]
        assert resolution_problem(writer, reader, named, reader_named) is None, file.full_name


def test_a_document_nested_beyond_reason_is_refused_before_parsing() -> None:
    document: Any = "int"
    for _ in range(200):
        document = {"type": "array", "items": document}
    assert json_depth_problem(document) == "schema document nested deeper than 128 levels"
    assert json_depth_problem(load_schema("MeetingBooked")) is None


READER = record("crmsync.v1.R", ("a", "long"), ("s", "string"),
                ("e", {"type": "enum", "name": "E", "symbols": ["X", "Y"]}))
RESOLUTION = [
    ("same", READER, None),
    ("an added field", dict(READER, fields=[*READER["fields"], {"name": "z", "type": "int"}]), None),
    ("int promoted to long", record("crmsync.v1.R", ("a", "int"), ("s", "string"), ("e", READER["fields"][2]["type"])), None),
    ("a required field missing", record("crmsync.v1.R", ("a", "long"), ("e", READER["fields"][2]["type"])),
     "s: required by our reader, missing from the writer and without a default"),
    ("a string written as int", record("crmsync.v1.R", ("a", "long"), ("s", "int"), ("e", READER["fields"][2]["type"])),
     "s: written as int, read as string"),
    ("a union branch we cannot read", record("crmsync.v1.R", ("a", "long"), ("s", ["null", "string"]), ("e", READER["fields"][2]["type"])),
     "s: written as null, read as string"),
    ("an enum symbol we do not know", record("crmsync.v1.R", ("a", "long"), ("s", "string"),
                                             ("e", {"type": "enum", "name": "E", "symbols": ["X", "Z"]})),
     "e: symbols Z unknown to crmsync.v1.E"),
    ("another record name", record("crmsync.v1.R", ("a", "long"), ("s", "string"),
                                   ("e", {"type": "enum", "name": "Other", "symbols": ["X"]})),
     "e: written as crmsync.v1.Other, read as crmsync.v1.E"),
]


@pytest.mark.parametrize(("case", "writer", "problem"), RESOLUTION, ids=[case for case, _, _ in RESOLUTION])
def test_resolution_to_our_reader(case: str, writer: Any, problem: str | None) -> None:
    (w, w_named), (r, r_named) = parsed(writer), parsed(READER)
    assert resolution_problem(w, r, w_named, r_named) == problem


# Through the codec, with confluent-kafka's in-memory registry.

def mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://shape"})


def meeting_with(field: dict[str, Any]) -> dict[str, Any]:
    schema = load_schema("MeetingBooked")
    schema["fields"].append(field)
    return schema


MEETING = {
    "event_id": "e-1", "occurred_at": 1, "company_id": "acme", "meeting_type_id": "mt", "meeting_id": "m-1",
    "meeting_type_name": "Intro", "host": {"email": "h@x.example", "name": "H"}, "booker": {"email": "b@x.example", "name": "B"},
    "start_at": 2, "end_at": 3, "timezone": "UTC", "meeting_url": None, "form_answers": [],
}


def body_of(record_value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(load_schema("MeetingBooked")), record_value)
    return out.getvalue()


def varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([byte]))
        out.append(byte | 0x80)


def frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


CLAIMS = 4 * 10**18
HOSTILE_RECORDS = [
    ("array of int claiming 4e18 items", {"type": "array", "items": "int"}, varint(CLAIMS) + b"\x02" * 200, "corrupt_body"),
    ("a negative block claiming 4e18 items", {"type": "array", "items": "int"}, varint(-CLAIMS) + varint(CLAIMS) + b"\x02" * 200, "corrupt_body"),
    ("map of null claiming 4e18 entries", {"type": "map", "values": "null"}, varint(CLAIMS) + b"\x02a" * 100, "corrupt_body"),
    ("a negative string length in an array", {"type": "array", "items": "string"}, varint(CLAIMS) + varint(-1) + b"a" * 200, "corrupt_body"),
]


@pytest.mark.parametrize(("case", "extra", "tail", "code"), HOSTILE_RECORDS, ids=[case for case, *_ in HOSTILE_RECORDS])
def test_counts_and_lengths_beyond_the_bytes_left_end_the_decode(case: str, extra: Any, tail: bytes, code: str) -> None:
    """Bounded shapes, hostile bytes: every item takes a byte, so the end of the bytes ends the claim."""
    registry = mock_registry()
    schema_id = registry.register_schema(SUBJECT, Schema(json.dumps(meeting_with({"name": "extra", "type": extra})), "AVRO"))
    with pytest.raises(DecodeError) as raised:
        Codec(registry).decode(frame(schema_id, body_of(MEETING) + tail), topic=TOPIC)
    assert raised.value.code == code


def test_the_subject_must_be_the_one_the_topic_names(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = mock_registry()
    schema = Schema(json.dumps(load_schema("MeetingBooked")), "AVRO")
    schema_id = registry.register_schema("someone.elses.topic-value", schema)
    data = frame(schema_id, body_of(MEETING))
    codec = Codec(registry)

    with pytest.raises(DecodeError) as raised:
        codec.decode(data, topic=TOPIC)
    assert raised.value.code == "wrong_subject"
    assert str(raised.value) == (f"schema id {schema_id} (crmsync.v1.MeetingBooked) is not registered under subject "
                                 f"{SUBJECT}, the one topic {TOPIC} reads from")
    assert codec.decode(data, topic="someone.elses.topic").value["event_id"] == "e-1"
    assert codec.decode(data).value["event_id"] == "e-1"  # no topic (the console, the dlq tool): no subject to check

    by_record_name = Codec(registry, subject_name_strategy="RecordNameStrategy")
    with pytest.raises(DecodeError, match="not registered under subject crmsync.v1.MeetingBooked"):
        by_record_name.decode(data, topic=TOPIC)
    registry.register_schema("crmsync.v1.MeetingBooked", schema)
    with pytest.raises(DecodeError, match="not registered"):  # the refusal is remembered for a while ...
        by_record_name.decode(data, topic=TOPIC)
    later = monotonic() + codec_module.SUBJECT_RECHECK_SECONDS
    monkeypatch.setattr(codec_module, "monotonic", lambda: later)
    assert by_record_name.decode(data, topic=TOPIC).value["event_id"] == "e-1"  # ... then asked again


def test_a_schema_we_registered_ourselves_needs_no_lookup() -> None:
    registry = mock_registry()
    codec = Codec(registry)
    data = codec.encode_confluent("MeetingBooked", MEETING, SUBJECT)
    with pytest.raises(DecodeError) as raised:
        codec.decode(data, topic="another.topic")
    assert raised.value.code == "wrong_subject"
    registry.lookup_schema = None  # type: ignore[assignment,method-assign]
    assert codec.decode(data, topic=TOPIC).value["event_id"] == "e-1"


def test_a_refused_schema_is_fetched_once_and_refused_every_time() -> None:
    registry = mock_registry()
    schema_id = registry.register_schema(SUBJECT, Schema(json.dumps(meeting_with(
        {"name": "loop", "type": ["null", record("Loop", ("next", ["null", "Loop"]))], "default": None})), "AVRO"))
    fetched: list[int] = []
    get_schema = registry.get_schema

    def counting(requested: int, *args: Any, **kwargs: Any) -> Schema:
        fetched.append(requested)
        return get_schema(requested, *args, **kwargs)

    registry.get_schema = counting  # type: ignore[method-assign]
    codec = Codec(registry)
    for _ in range(3):
        with pytest.raises(DecodeError) as raised:
            codec.decode(frame(schema_id, body_of(MEETING) + b"\x02" * 50 + b"\x00"), topic=TOPIC)
        assert raised.value.code == "unsafe_schema"
        assert raised.value.schema_name == "MeetingBooked"
    assert fetched == [schema_id]


def test_the_dead_letter_names_the_schema_id_and_the_reason() -> None:
    registry = mock_registry()
    schema_id = registry.register_schema(SUBJECT, Schema(json.dumps(meeting_with(
        {"name": "blanks", "type": {"type": "array", "items": "null"}, "default": []})), "AVRO"))

    class NoSettings:
        def company(self, company_id: str) -> None:
            return None

        def meeting_type(self, company_id: str, meeting_type_id: str) -> None:
            return None

    data = frame(schema_id, body_of(MEETING) + varint(CLAIMS))
    [done], unavailable = prepare(Codec(registry), NoSettings(), [Source(TOPIC, 0, 3, b"acme", data)], 600_000)  # type: ignore[arg-type]
    assert unavailable is None and done.letter is not None
    assert (done.letter["stage"], done.letter["error_code"], done.invalid_reason) == ("decode", "unsafe_schema", "unsafe_schema")
    assert done.letter["message"].startswith(f"schema id {schema_id} (crmsync.v1.MeetingBooked) refused: array of null")
    assert done.letter["original_value"] == data



@pytest.mark.parametrize(("strategy", "subject"), [
    ("TopicNameStrategy", f"{TOPIC}-value"),
    ("RecordNameStrategy", "crmsync.v1.MeetingBooked"),
    ("TopicRecordNameStrategy", f"{TOPIC}-crmsync.v1.MeetingBooked"),
])
def test_subject_name_strategies(strategy: str, subject: str) -> None:
    """The publisher registers under, and the worker checks, the same subject."""
    assert Codec(subject_name_strategy=strategy).subject_for(TOPIC, "MeetingBooked") == subject


def test_a_chain_of_references_is_cut_short() -> None:
    """Each reference is a registry request and a level of recursion: a long chain is refused, once."""
    registry = mock_registry()
    previous: list[SchemaReference] = []
    for i in range(MAX_REFERENCES + 1):
        subject = f"link-{i}"
        registry.register_schema(subject, Schema(json.dumps({"type": "fixed", "name": f"crmsync.v1.F{i}", "size": 1}),
                                                 "AVRO", previous))
        previous = [SchemaReference(f"crmsync.v1.F{i}", subject, 1)]
    schema_id = registry.register_schema(SUBJECT, Schema(json.dumps(load_schema("MeetingBooked")), "AVRO", previous))
    with pytest.raises(DecodeError) as raised:
        Codec(registry).decode(frame(schema_id, body_of(MEETING)), topic=TOPIC)
    assert raised.value.code == "unsafe_schema"
    assert str(raised.value) == f"schema id {schema_id} refused: more than {MAX_REFERENCES} schema references"
