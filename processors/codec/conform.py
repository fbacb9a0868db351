"""Checking a record against its Avro schema before it is written, with the field path in the
error (`record.booker.email: expected string, got int`), and normalising it for fastavro
(aware datetimes → epoch integers). Structure is walked here; leaf types use fastavro's checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from fastavro.validation import validate

from schemas import short_name

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TIME_UNITS = {"timestamp-millis": timedelta(milliseconds=1), "timestamp-micros": timedelta(microseconds=1)}
# The primitive checks of fastavro.validation, inlined: they run for every field of every record written.
_PRIMITIVE_OK: dict[str, Callable[[Any], bool]] = {
    "null": lambda d: d is None,
    "boolean": lambda d: isinstance(d, bool),
    "string": lambda d: isinstance(d, str),
    "bytes": lambda d: isinstance(d, (bytes, bytearray)),
    "int": lambda d: isinstance(d, int) and not isinstance(d, bool) and -(2**31) <= d < 2**31,
    "long": lambda d: isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63,
    "float": lambda d: isinstance(d, (int, float)) and not isinstance(d, bool),
    "double": lambda d: isinstance(d, (int, float)) and not isinstance(d, bool),
}


class Invalid(Exception):
    """Internal: a record does not conform; the message carries the field path."""


def without_logical_types(schema: Any) -> Any:
    """Drop ``logicalType`` so fastavro reads timestamps as plain ints; defaults are data, left alone."""
    if isinstance(schema, list):
        return [without_logical_types(item) for item in schema]
    if isinstance(schema, dict):
        return {
            key: value if key == "default" else without_logical_types(value)
            for key, value in schema.items()
            if key != "logicalType"
        }
    return schema


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_describe(branch) for branch in schema)
    if isinstance(schema, str):
        return schema
    if "logicalType" in schema:
        return f"{schema['logicalType']} (int or aware datetime)"
    kind = schema["type"]
    if kind == "array":
        return f"array of {_describe(schema['items'])}"
    if kind == "map":
        return f"map of {_describe(schema['values'])}"
    if kind == "enum":
        return f"one of {', '.join(schema['symbols'])}"
    if kind in ("record", "fixed"):
        return f"{kind} {short_name(schema['name'])}"
    return str(kind)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def conform(schema: Any, datum: Any, path: str) -> Any:
    """Check a value against an expanded schema and normalise it (timestamps → int) for writing.

    Structure (records, unknown and missing fields, unions, arrays, maps) is walked here to report the
    field path; leaf types are checked by ``fastavro.validation``.
    """
    if isinstance(schema, list):
        return _conform_union(schema, datum, path)
    kind = schema if isinstance(schema, str) else schema["type"]
    where = path or "record"
    if kind in ("record", "error"):
        return _conform_record(schema, datum, path)
    if kind == "array":
        if isinstance(datum, (str, bytes, bytearray, Mapping)) or not isinstance(datum, Sequence):
            raise Invalid(f"{where}: expected {_describe(schema)}, got {type(datum).__name__}")
        return [conform(schema["items"], item, f"{path}[{index}]") for index, item in enumerate(datum)]
    if kind == "map":
        if not isinstance(datum, Mapping) or not all(isinstance(key, str) for key in datum):
            raise Invalid(f"{where}: expected {_describe(schema)} with string keys, got {type(datum).__name__}")
        return {key: conform(schema["values"], value, f"{path}[{key!r}]") for key, value in datum.items()}
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical in _TIME_UNITS and isinstance(datum, datetime):
        if datum.utcoffset() is None:
            raise Invalid(f"{where}: naive datetime; give an aware datetime or int milliseconds since the epoch")
        datum = (datum - _EPOCH) // _TIME_UNITS[logical]
    if datum is None and kind != "null":
        raise Invalid(f"{where}: null not allowed, expected {_describe(schema)}")
    primitive_ok = _PRIMITIVE_OK.get(kind)
    if not (primitive_ok(datum) if primitive_ok is not None else validate(datum, without_logical_types(schema), raise_errors=False)):
        got = "an unknown symbol" if kind == "enum" and isinstance(datum, str) else type(datum).__name__
        raise Invalid(f"{where}: expected {_describe(schema)}, got {got}")
    if kind == "string" and not datum.isascii():
        try:
            datum.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid(f"{where}: not encodable as UTF-8 (lone surrogate)") from None
    return datum


def _conform_record(schema: Mapping[str, Any], datum: Any, path: str) -> dict[str, Any]:
    if not isinstance(datum, Mapping):
        raise Invalid(f"{path or 'record'}: expected {_describe(schema)}, got {type(datum).__name__}")
    fields = schema["fields"]
    unknown = sorted(set(datum) - {field["name"] for field in fields}, key=str)
    if unknown:
        raise Invalid(f"{path or 'record'}: unknown field(s) {', '.join(map(str, unknown))}")
    conformed: dict[str, Any] = {}
    for field in fields:
        name = field["name"]
        if name in datum:
            conformed[name] = conform(field["type"], datum[name], _join(path, name))
        elif "default" in field:
            conformed[name] = json.loads(json.dumps(field["default"]))
        else:
            raise Invalid(f"{_join(path, name)}: required field missing")
    return conformed


def _conform_union(branches: list[Any], datum: Any, path: str) -> Any:
    if datum is None:
        if "null" in branches:
            return None
        raise Invalid(f"{path or 'record'}: null not allowed, expected {_describe(branches)}")
    candidates = [branch for branch in branches if branch != "null"]
    failures: list[Invalid] = []
    for branch in candidates:
        try:
            return conform(branch, datum, path)
        except Invalid as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    raise Invalid(f"{path or 'record'}: expected {_describe(branches)}, got {type(datum).__name__}")


class _Slow(Exception):
    """Internal: the compiled check cannot vouch for a value; `conform` decides (and names the field)."""


Check = Callable[[Any], Any]


def compile_conform(schema: Any) -> Callable[[Any], Any]:
    """`conform` for one schema, built once: returns what `conform(schema, datum, "")` returns,
    with union values tagged for the writer (`untagged` strips them).

    The generic walk costs a path string, a set and a dispatch per field of every record written;
    this checks the same rules with closures made once per schema. Anything it cannot accept as is
    (a datetime, any mismatch) goes to `conform`, so results and error messages stay the same.
    """
    check = _compile(schema)

    def conformed(datum: Any) -> Any:
        try:
            return check(datum)
        except _Slow:
            return conform(schema, datum, "")

    return conformed


def _compile(schema: Any) -> Check:
    if isinstance(schema, list):
        return _compile_union(schema)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind in ("record", "error"):
        return _compile_record(schema)
    if kind == "array":
        items = _compile(schema["items"])
        return lambda datum: [items(item) for item in datum] if type(datum) in (list, tuple) else _slow()
    if kind == "map":
        values = _compile(schema["values"])
        if values is _check_string:
            return _check_string_map

        def check_map(datum: Any) -> Any:
            if type(datum) is not dict or not all(type(key) is str for key in datum):
                raise _Slow
            return {key: values(value) for key, value in datum.items()}

        return check_map
    ok = _PRIMITIVE_OK.get(kind)
    if kind == "enum":  # fastavro's enum check, without its call per value
        symbols = frozenset(schema["symbols"])
        ok = lambda datum: type(datum) is str and datum in symbols  # noqa: E731
    elif ok is None:
        plain = without_logical_types(schema)
        ok = lambda datum: validate(datum, plain, raise_errors=False)  # noqa: E731
    if kind == "string":
        return _check_string
    if kind == "null":
        return lambda datum: None if datum is None else _slow()

    def check_leaf(datum: Any) -> Any:
        if datum is None or isinstance(datum, datetime) or not ok(datum):
            raise _Slow
        return datum

    return check_leaf


def _compile_record(schema: Mapping[str, Any]) -> Check:
    names = frozenset(field["name"] for field in schema["fields"])
    fields = [
        (field["name"], _compile(field["type"]), json.dumps(field["default"]) if "default" in field else None)
        for field in schema["fields"]
    ]

    def check_record(datum: Any) -> dict[str, Any]:
        if type(datum) is not dict or not names.issuperset(datum):
            raise _Slow
        conformed: dict[str, Any] = {}
        for name, check, default in fields:
            if name in datum:
                conformed[name] = check(datum[name])
            elif default is not None:
                conformed[name] = json.loads(default)
            else:
                raise _Slow
        return conformed

    return check_record


_NAMED = ("record", "error", "enum", "fixed")


def _compile_union(branches: list[Any]) -> Check:
    """A union's value comes back tagged with its branch, `(type or full name, value)`: fastavro's
    tuple notation, so the writer does not test every branch again (half its time for an Action)."""
    nullable = "null" in branches
    candidates = [(_branch(branch), _compile(branch)) for branch in branches if branch != "null"]

    def check_union(datum: Any) -> Any:
        if datum is None:
            if nullable:
                return ("null", None)
            raise _Slow
        for label, candidate in candidates:
            try:
                value = candidate(datum)
            except _Slow:
                continue
            return (label, value)
        raise _Slow

    return check_union


def _branch(schema: Any) -> str:
    """The name fastavro matches a tagged value against: the type, or a named type's full name."""
    if isinstance(schema, str):
        return schema
    return str(schema["name"]) if schema["type"] in _NAMED else str(schema["type"])


def _check_string(datum: Any) -> str:
    if type(datum) is not str:
        raise _Slow
    if not datum.isascii():
        try:
            datum.encode("utf-8")
        except UnicodeEncodeError:
            raise _Slow from None
    return datum


def _check_string_map(datum: Any) -> dict[str, str]:
    """A map of strings (an Action's rendered properties): its texts checked in one go, in C."""
    if type(datum) is not dict:
        raise _Slow
    for key, value in datum.items():
        if type(key) is not str or type(value) is not str:
            raise _Slow
    text = "".join(datum.values())
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Slow from None
    return dict(datum)


def _slow() -> Any:
    raise _Slow
