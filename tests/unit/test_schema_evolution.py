"""Schema evolution stays compatible (SPEC §2): checked with fastavro's own schema resolution, both ways.

The checker writes sample records with one schema and reads them with the other. Samples cycle through
every union branch and enum symbol, so a removed symbol or a changed branch shows up, not only fields.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from itertools import combinations
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema

from processors.codec import schema_fingerprint
from schemas import NAMESPACE, SchemaCatalog, SchemaFile, load_catalog, load_schema

CATALOG: SchemaCatalog = load_catalog()

PERSON = ("email", "name", "company_name", "phone")
COMMON = ("event_id", "occurred_at", "company_id", "meeting_type_id")
SPEC_FIELDS: dict[str, tuple[str, ...]] = {
    "Person": PERSON,
    "QA": ("question", "answer"),
    "MeetingBooked": (*COMMON, "meeting_id", "meeting_type_name", "host", "booker", "start_at", "end_at",
                      "timezone", "meeting_url", "form_answers"),
    "ResearchCompleted": (*COMMON, "research_kind", "target", "form_answers", "result"),
    "SurveyAnswered": (*COMMON, "survey_kind", "respondent", "host", "meeting_start_at", "timezone", "answers"),
}
SPEC_TIMESTAMPS = {("MeetingBooked", f) for f in ("occurred_at", "start_at", "end_at")} | {
    ("ResearchCompleted", "occurred_at"), ("SurveyAnswered", "occurred_at"), ("SurveyAnswered", "meeting_start_at"),
}
SPEC_OPTIONAL = {("Person", "company_name"), ("Person", "phone"), ("MeetingBooked", "meeting_url"),
                 ("SurveyAnswered", "host"), ("SurveyAnswered", "meeting_start_at"), ("SurveyAnswered", "timezone")}
SPEC_ENUMS = {("ResearchCompleted", "research_kind"): ["COMPANY", "CUSTOMER"],
              ("SurveyAnswered", "survey_kind"): ["PRE_MEETING", "PRE_EXIT"]}


def variant_count(schema: Any) -> int:
    """How many samples it takes to visit every union branch and enum symbol at least once."""
    if isinstance(schema, list):
        return max([len(schema), *(variant_count(branch) for branch in schema)])
    if isinstance(schema, str):
        return 1
    kind = schema["type"]
    if kind == "enum":
        return len(schema["symbols"])
    if kind in ("record", "error"):
        return max([1, *(variant_count(field["type"]) for field in schema["fields"])])
    if kind == "array":
        return variant_count(schema["items"])
    if kind == "map":
        return variant_count(schema["values"])
    return 1


def sample(schema: Any, variant: int) -> Any:
    """A datum of an expanded schema; ``variant`` picks union branches and enum symbols."""
    if isinstance(schema, list):
        return sample(schema[variant % len(schema)], variant)
    kind = schema if isinstance(schema, str) else schema["type"]
    primitives: dict[str, Any] = {
        "null": None, "boolean": variant % 2 == 0, "int": variant, "long": 1_700_000_000_000 + variant,
        "float": float(variant), "double": float(variant), "string": f"s{variant}", "bytes": bytes([variant % 256]),
    }
    if kind in primitives:
        return primitives[kind]
    if kind == "enum":
        return schema["symbols"][variant % len(schema["symbols"])]
    if kind == "fixed":
        return bytes(schema["size"])
    if kind == "array":
        return [sample(schema["items"], variant), sample(schema["items"], variant + 1)]
    if kind == "map":
        return {"k": sample(schema["values"], variant)}
    return {field["name"]: sample(field["type"], variant) for field in schema["fields"]}


def resolution_problems(writer: Mapping[str, Any], reader: Mapping[str, Any]) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty when it always can."""
    expanded = expand_schema(copy.deepcopy(dict(writer)))
    writer_parsed = parse_schema(copy.deepcopy(dict(writer)))
    reader_parsed = parse_schema(copy.deepcopy(dict(reader)))
    problems = []
    for variant in range(variant_count(expanded)):
        out = io.BytesIO()
        schemaless_writer(out, writer_parsed, sample(expanded, variant))
        out.seek(0)
        try:
            schemaless_reader(out, writer_parsed, reader_parsed)
        except Exception as exc:
            problems.append(f"variant {variant}: {type(exc).__name__}: {exc}")
    return problems


def mutually_compatible(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Backward (new reads old) and forward (old reads new) compatibility, as one list of problems."""
    return [f"a→b {p}" for p in resolution_problems(a, b)] + [f"b→a {p}" for p in resolution_problems(b, a)]


def versions(full_name: str) -> list[SchemaFile]:
    return [*(f for f in CATALOG.history if f.full_name == full_name), CATALOG.current[full_name]]


def fields_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {field["name"]: field for field in schema["fields"]}


def records() -> list[str]:
    return sorted(name for name, f in CATALOG.current.items() if f.schema["type"] == "record")


def test_history_holds_the_versions_the_evolution_checks_rely_on() -> None:
    assert {f.path.name for f in CATALOG.history} >= {"MeetingBooked.v1.avsc", "CompanySettings.v1.avsc"}


@pytest.mark.parametrize("full_name", records())
def test_all_versions_are_mutually_backward_and_forward_compatible(full_name: str) -> None:
    for a, b in combinations(versions(full_name), 2):
        assert mutually_compatible(a.schema, b.schema) == [], f"{a.path.name} vs {b.path.name}"


@pytest.mark.parametrize("full_name", records())
def test_no_field_name_of_an_older_version_was_removed(full_name: str) -> None:
    current = set(fields_of(CATALOG.current[full_name].schema))
    for old in versions(full_name)[:-1]:
        assert set(fields_of(old.schema)) <= current, old.path.name


def test_every_version_has_its_own_fingerprint() -> None:
    prints = [schema_fingerprint(dict(f.schema)) for f in [*CATALOG.current.values(), *CATALOG.history]]
    assert len(prints) == len(set(prints))


def _mutated(change: str) -> dict[str, Any]:
    schema = load_schema("MeetingBooked")
    if change == "remove a required field":
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "timezone"]
    elif change == "rename a required field":
        schema["fields"] = [{**f, "name": "lead"} if f["name"] == "booker" else f for f in schema["fields"]]
    elif change == "add a required field without default":
        schema["fields"].append({"name": "room", "type": "string"})
    elif change == "change a field's type":
        schema["fields"] = [{**f, "type": "int"} if f["name"] == "meeting_id" else f for f in schema["fields"]]
    elif change == "make an optional field required":
        schema["fields"] = [
            {"name": "meeting_url", "type": "string"} if f["name"] == "meeting_url" else f for f in schema["fields"]
        ]
    return schema


@pytest.mark.parametrize(
    "change",
    [
        "remove a required field",
        "rename a required field",
        "add a required field without default",
        "change a field's type",
        "make an optional field required",
    ],
)
def test_the_checker_rejects_breaking_changes(change: str) -> None:
    assert mutually_compatible(load_schema("MeetingBooked"), _mutated(change)) != []


def test_the_checker_rejects_removing_an_enum_symbol() -> None:
    current = load_schema("ResearchCompleted")
    narrowed = copy.deepcopy(current)
    kind = next(f for f in narrowed["fields"] if f["name"] == "research_kind")
    kind["type"]["symbols"] = ["COMPANY"]
    assert mutually_compatible(current, narrowed) != []


def test_the_checker_accepts_adding_an_optional_field() -> None:
    current = load_schema("MeetingBooked")
    extended = copy.deepcopy(current)
    extended["fields"].append({"name": "location", "type": ["null", "string"], "default": None})
    assert mutually_compatible(current, extended) == []


@pytest.mark.parametrize("short", sorted(SPEC_FIELDS))
def test_every_spec_field_exists(short: str) -> None:
    fields = fields_of(load_schema(short))
    missing = [name for name in SPEC_FIELDS[short] if name not in fields]
    assert missing == []


def test_spec_field_types() -> None:
    def field(short: str, name: str) -> Any:
        return fields_of(expand_schema(load_schema(short)))[name]

    for short, name in SPEC_TIMESTAMPS:
        type_ = field(short, name)["type"]
        type_ = type_[1] if isinstance(type_, list) else type_
        assert type_ == {"type": "long", "logicalType": "timestamp-millis"}, (short, name)
    for short, name in SPEC_OPTIONAL:
        assert field(short, name)["type"][0] == "null" and field(short, name)["default"] is None, (short, name)
    for (short, name), symbols in SPEC_ENUMS.items():
        assert field(short, name)["type"]["symbols"] == symbols
    for short in ("MeetingBooked", "ResearchCompleted", "SurveyAnswered"):
        for name in COMMON[:1] + COMMON[2:]:
            assert field(short, name)["type"] == "string", (short, name)
    for short, name in [("MeetingBooked", "host"), ("MeetingBooked", "booker"), ("ResearchCompleted", "target"),
                        ("SurveyAnswered", "respondent")]:
        assert field(short, name)["type"]["name"] == f"{NAMESPACE}.Person", (short, name)


def _field_types(schema: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Every (record name, field) pair in a schema, nested records included."""
    if isinstance(schema, list):
        return [pair for branch in schema for pair in _field_types(branch)]
    if not isinstance(schema, dict):
        return []
    if schema.get("type") == "record":
        return [(schema["name"], f) for f in schema["fields"]] + [
            pair for f in schema["fields"] for pair in _field_types(f["type"])
        ]
    return _field_types(schema.get("items")) + _field_types(schema.get("values"))


@pytest.mark.parametrize("full_name", sorted(CATALOG.current))
def test_house_conventions(full_name: str) -> None:
    schema = CATALOG.current[full_name].schema
    assert full_name.startswith(f"{NAMESPACE}.")
    for record, field in _field_types(schema):
        type_ = field["type"]
        if isinstance(type_, list):
            assert type_[0] == "null" and len(type_) == 2 and field.get("default", "absent") is None, (record, field)
        if isinstance(type_, dict) and type_.get("type") == "array":
            assert field.get("default") == [], (record, field["name"])
