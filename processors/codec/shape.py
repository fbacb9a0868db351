"""What a writer schema from the registry must look like before fastavro may read with it.

fastavro decodes in C: a recursive writer schema lets a record nest until the C stack overflows
(an uncatchable segfault), and an array of items that take no bytes (``array<null>``) lets a few
bytes claim 4×10¹⁸ items and spin. Both are properties of the schema, so they are checked once
per schema id, and the records themselves are read at fastavro's speed:

- no named type may refer to itself, directly or through others, so the nesting of a value is the
  schema's, and at most ``MAX_DEPTH``;
- every array item and map entry takes at least one byte, so a block can claim no more items than
  the bytes left (fastavro stops at the end of the bytes); and one item's own nodes (those outside
  the arrays and maps inside it) are at most ``MAX_NODES_PER_ITEM_BYTE`` per byte it takes at least;
- a schema (its named types counted each time they are used) has at most ``MAX_NODES`` nodes.

Each item's own bytes are its alone, so a body of n bytes costs at most
``MAX_NODES + MAX_NODES_PER_ITEM_BYTE * n`` steps of fastavro's, whatever it claims. ``resolution_problem`` checks, also once per id, that the writer
resolves to our reader, the way Confluent's compatibility check does (every union branch must).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32
MAX_NODES = 5_000
MAX_NODES_PER_ITEM_BYTE = 8
MAX_JSON_DEPTH = 4 * MAX_DEPTH  # the raw document, checked before any parser recurses into it

_PRIMITIVE_MIN_BYTES = {
    "null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8, "bytes": 1, "string": 1,
}
_PROMOTIONS = {
    ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
    ("float", "double"), ("string", "bytes"), ("bytes", "string"),
}
_NAMED = ("record", "error", "enum", "fixed")


class _Refused(Exception):
    """Internal: the reason a schema is refused (names types and fields, never values)."""


@dataclass(frozen=True)
class _Shape:
    min_bytes: int  # the fewest bytes a value of this type can be written in
    nodes: int  # schema nodes, named types counted each time they are used
    own: int  # nodes decoded for one value outside its arrays' and maps' items
    height: int  # nesting levels of a value


def json_depth_problem(document: Any) -> str | None:
    """A schema document nested deeper than any sane schema, found without recursion."""
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"schema document nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(node, Mapping):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return None


def shape_problem(schema: Any, named: Mapping[str, Any]) -> str | None:
    """Why fastavro may not read with this parsed writer schema, or None when its shape is bounded."""
    try:
        shape = _Walk(named).visit(schema)
    except _Refused as exc:
        return str(exc)
    if shape.height > MAX_DEPTH:
        return f"values nest {shape.height} levels deep, more than {MAX_DEPTH}"
    if shape.nodes > MAX_NODES:
        return f"{shape.nodes} schema nodes, more than {MAX_NODES}"
    return None


class _Walk:
    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._done: dict[str, _Shape] = {}
        self._open: list[str] = []  # the named types being walked: meeting one again is recursion

    def visit(self, schema: Any) -> _Shape:
        if isinstance(schema, list):
            branches = [self.visit(branch) for branch in schema]
            if not branches:
                raise _Refused("a union without branches")
            return _Shape(1 + min(b.min_bytes for b in branches), 1 + sum(b.nodes for b in branches),
                          1 + sum(b.own for b in branches), 1 + max(b.height for b in branches))
        if isinstance(schema, str):
            if schema in _PRIMITIVE_MIN_BYTES:
                return _Shape(_PRIMITIVE_MIN_BYTES[schema], 1, 1, 1)
            return self._named_type(schema, None)
        if not isinstance(schema, Mapping):
            raise _Refused(f"not a schema: {type(schema).__name__}")
        kind = schema.get("type")
        if kind in _NAMED:
            return self._named_type(str(schema.get("name")), schema)
        if kind == "array":
            items = self.visit(schema.get("items"))
            self._check_items("array", schema.get("items"), items.min_bytes, items.own)
            return _Shape(1, 1 + items.nodes, 1, 1 + items.height)
        if kind == "map":
            values = self.visit(schema.get("values"))
            self._check_items("map", schema.get("values"), 1 + values.min_bytes, 1 + values.own)
            return _Shape(1, 1 + values.nodes, 1, 1 + values.height)
        return self.visit(kind)  # {"type": "long"} and the like

    def _named_type(self, name: str, definition: Mapping[str, Any] | None) -> _Shape:
        if name in self._open:
            cycle = " → ".join([*self._open[self._open.index(name):], name])
            raise _Refused(f"{name} refers to itself ({cycle}); recursive types are refused")
        done = self._done.get(name)
        if done is not None:
            return done
        schema = definition if definition is not None else self._named.get(name)
        if not isinstance(schema, Mapping):
            raise _Refused(f"unknown type {name}")
        self._open.append(name)
        try:
            shape = self._named_shape(schema)
        finally:
            self._open.pop()
        self._done[name] = shape
        return shape

    def _named_shape(self, schema: Mapping[str, Any]) -> _Shape:
        kind = schema["type"]
        if kind == "enum":
            return _Shape(1, 1, 1, 1)
        if kind == "fixed":
            size = schema.get("size")
            if type(size) is not int or size < 0:
                raise _Refused(f"fixed {schema.get('name')} with size {size!r}")
            return _Shape(size, 1, 1, 1)
        fields = [self.visit(field.get("type")) for field in schema.get("fields", [])]
        return _Shape(sum(f.min_bytes for f in fields), 1 + sum(f.nodes for f in fields),
                      1 + sum(f.own for f in fields), 1 + max((f.height for f in fields), default=0))

    @staticmethod
    def _check_items(kind: str, items: Any, min_bytes: int, own: int) -> None:
        if min_bytes == 0:
            raise _Refused(f"{kind} of {_label(items)}: its items take no bytes, so a few bytes could claim "
                           "any number of them")
        if own > MAX_NODES_PER_ITEM_BYTE * min_bytes:
            raise _Refused(f"{kind} of {_label(items)}: {own} schema nodes per item for {min_bytes} byte(s), "
                           f"more than {MAX_NODES_PER_ITEM_BYTE} per byte")


def _label(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union of " + ", ".join(_label(branch) for branch in schema)
    if isinstance(schema, Mapping):
        return str(schema.get("name") or schema.get("type"))
    return type(schema).__name__


def resolution_problem(writer: Any, reader: Any, writer_named: Mapping[str, Any],
                       reader_named: Mapping[str, Any]) -> str | None:
    """Why data written with `writer` cannot be read as `reader` (both parsed, `writer` bounded), or None."""
    try:
        _Resolve(writer_named, reader_named).check(writer, reader, "")
    except _Refused as exc:
        return str(exc)
    return None


class _Resolve:
    def __init__(self, writer_named: Mapping[str, Any], reader_named: Mapping[str, Any]) -> None:
        self._writer_named = writer_named
        self._reader_named = reader_named
        self._checked: set[tuple[int, int]] = set()

    def check(self, writer: Any, reader: Any, path: str) -> None:
        writer = _deref(writer, self._writer_named)
        reader = _deref(reader, self._reader_named)
        key = (id(writer), id(reader))
        if key in self._checked:
            return
        if isinstance(writer, list):
            for branch in writer:
                self.check(branch, reader, path)
        elif isinstance(reader, list):
            for branch in reader:
                if self.matches(writer, branch, path):
                    break
            else:
                raise _Refused(f"{path or 'record'}: {_label(writer)} is none of {_label(reader)}")
        else:
            self._check_same_kind(writer, reader, path)
        self._checked.add(key)

    def matches(self, writer: Any, reader: Any, path: str) -> bool:
        try:
            self.check(writer, reader, path)
        except _Refused:
            return False
        return True

    def _check_same_kind(self, writer: Any, reader: Any, path: str) -> None:
        w_kind, r_kind = _kind(writer), _kind(reader)
        where = path or "record"
        if w_kind != r_kind:
            if (w_kind, r_kind) in _PROMOTIONS:
                return
            raise _Refused(f"{where}: written as {_label(writer)}, read as {_label(reader)}")
        if w_kind in _NAMED and not _same_name(writer, reader):
            raise _Refused(f"{where}: written as {writer['name']}, read as {reader['name']}")
        if w_kind == "array":
            self.check(writer["items"], reader["items"], f"{path}[]")
        elif w_kind == "map":
            self.check(writer["values"], reader["values"], f"{path}[]")
        elif w_kind == "fixed" and writer.get("size") != reader.get("size"):
            raise _Refused(f"{where}: fixed of {writer.get('size')} bytes, read as {reader.get('size')}")
        elif w_kind == "enum":
            unknown = set(writer.get("symbols", [])) - set(reader.get("symbols", []))
            if unknown and "default" not in reader:
                raise _Refused(f"{where}: symbols {', '.join(sorted(unknown))} unknown to {reader['name']}")
        elif w_kind in ("record", "error"):
            written = {field["name"]: field for field in writer.get("fields", [])}
            for field in reader.get("fields", []):
                names = [field["name"], *field.get("aliases", [])]
                source = next((written[name] for name in names if name in written), None)
                if source is not None:
                    self.check(source["type"], field["type"], f"{path}.{field['name']}" if path else field["name"])
                elif "default" not in field:
                    raise _Refused(f"{path + '.' if path else ''}{field['name']}: required by our reader, "
                                   "missing from the writer and without a default")


def _deref(schema: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(schema, str) and schema not in _PRIMITIVE_MIN_BYTES:
        return named.get(schema, schema)
    if isinstance(schema, Mapping) and schema.get("type") in _PRIMITIVE_MIN_BYTES:
        return schema["type"]
    return schema


def _kind(schema: Any) -> str:
    return schema if isinstance(schema, str) else str(schema.get("type"))


def _same_name(writer: Mapping[str, Any], reader: Mapping[str, Any]) -> bool:
    """fastavro's rule: the unqualified names match, or the reader lists the writer's as an alias."""
    w_name, r_name = str(writer["name"]), str(reader["name"])
    aliases = reader.get("aliases", [])
    unqualified = w_name.rsplit(".", 1)[-1]
    return unqualified == r_name.rsplit(".", 1)[-1] or w_name in aliases or unqualified in aliases
