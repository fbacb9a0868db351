"""The Avro contract of crm-sync: one named type per ``.avsc`` file, namespace ``crmsync.v1``.

Current schemas live directly in this folder and reference shared named types (Person, QA, Crm…) by
full name, so each type is defined once. ``history/`` holds the exact, self-contained writer schemas
of older versions, so that records written by them still decode (see ``processors.codec``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema

SCHEMA_DIR: Path = Path(__file__).resolve().parent
HISTORY_DIR: Path = SCHEMA_DIR / "history"
NAMESPACE: str = "crmsync.v1"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})


class SchemaLoadError(ValueError):
    """A schema file is unreadable, invalid, or breaks the one-type-per-file layout."""


@dataclass(frozen=True)
class SchemaFile:
    """One named type: its full name, where it came from, and a self-contained JSON schema."""

    full_name: str
    path: Path
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class SchemaCatalog:
    """The current schemas by full name, and the older versions kept for decoding old records."""

    current: Mapping[str, SchemaFile]
    history: tuple[SchemaFile, ...]


def full_name(name: str) -> str:
    """``MeetingBooked`` → ``crmsync.v1.MeetingBooked``; full names pass through."""
    return name if "." in name else f"{NAMESPACE}.{name}"


def short_name(name: str) -> str:
    """``crmsync.v1.MeetingBooked`` → ``MeetingBooked``."""
    return name.rsplit(".", 1)[-1]


def load_catalog(directory: Path = SCHEMA_DIR, history_dir: Path | None = None) -> SchemaCatalog:
    """Read every current schema and every historical version; fail fast on any broken file."""
    definitions = _read_definitions(directory)
    current = {
        name: SchemaFile(name, path, _standalone(name, definitions))
        for name, (path, _) in sorted(definitions.items())
    }
    for schema_file in current.values():
        _check_parses(schema_file)
    history_root = directory / "history" if history_dir is None else history_dir
    history = tuple(_read_history(history_root, current))
    return SchemaCatalog(current=current, history=history)


def load_schema(name: str, directory: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The self-contained JSON schema of one current type (short or full name), a fresh copy."""
    catalog = load_catalog(directory)
    wanted = full_name(name)
    if wanted not in catalog.current:
        raise SchemaLoadError(f"no schema named {wanted} in {directory}")
    return copy.deepcopy(dict(catalog.current[wanted].schema))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaLoadError(f"{path}: cannot read schema: {exc}") from exc
    if not isinstance(loaded, dict) or loaded.get("type") not in _NAMED_KINDS:
        raise SchemaLoadError(f"{path}: a schema file must hold one named type (record, enum, fixed)")
    return loaded


def _defined_name(schema: Mapping[str, Any], enclosing_namespace: str) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    namespace = schema.get("namespace", enclosing_namespace)
    return f"{namespace}.{name}" if namespace else name


def _read_definitions(directory: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Full name → (file, raw JSON); the file stem must be the type's short name."""
    definitions: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = _read_json(path)
        name = _defined_name(schema, "")
        if short_name(name) != path.stem:
            raise SchemaLoadError(f"{path}: defines {name}; the file must be named {short_name(name)}.avsc")
        definitions[name] = (path, schema)
    return definitions


def _standalone(name: str, definitions: Mapping[str, tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Inline referenced named types at their first use (as Avro requires), by name afterwards."""
    seen: set[str] = set()

    def resolve(reference: str, namespace: str) -> Any:
        if reference in _PRIMITIVES:
            return reference
        candidates = [reference] if "." in reference else [f"{namespace}.{reference}", reference]
        for candidate in candidates:
            if candidate in seen:
                return candidate
            if candidate in definitions:
                seen.add(candidate)
                definition = definitions[candidate][1]
                return expand(definition, candidate.rpartition(".")[0])
        raise SchemaLoadError(f"{definitions[name][0]}: unknown type {reference!r}")

    def expand(schema: Any, namespace: str) -> Any:
        if isinstance(schema, str):
            return resolve(schema, namespace)
        if isinstance(schema, list):
            return [expand(branch, namespace) for branch in schema]
        kind = schema.get("type")
        if kind in _NAMED_KINDS:
            defined = _defined_name(schema, namespace)
            seen.add(defined)
            inner_namespace = defined.rpartition(".")[0]
            expanded = dict(schema)
            if kind in ("record", "error"):
                expanded["fields"] = [
                    {**field, "type": expand(field["type"], inner_namespace)} for field in schema["fields"]
                ]
            return expanded
        if kind == "array":
            return {**schema, "items": expand(schema["items"], namespace)}
        if kind == "map":
            return {**schema, "values": expand(schema["values"], namespace)}
        if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _PRIMITIVES):
            return expand(kind, namespace)
        return dict(schema)

    seen.add(name)
    return expand(definitions[name][1], name.rpartition(".")[0])


def _check_parses(schema_file: SchemaFile) -> None:
    try:
        parse_schema(copy.deepcopy(dict(schema_file.schema)), _write_hint=False)
    except Exception as exc:
        raise SchemaLoadError(f"{schema_file.path}: not a valid Avro schema: {exc}") from exc


def _read_history(directory: Path, current: Mapping[str, SchemaFile]) -> list[SchemaFile]:
    """Old versions must be self-contained: their fingerprint must not move when shared types evolve."""
    if not directory.is_dir():
        return []
    history: list[SchemaFile] = []
    for path in sorted(directory.glob("*.avsc")):
        schema = _read_json(path)
        name = _defined_name(schema, "")
        if not path.name.startswith(f"{short_name(name)}."):
            raise SchemaLoadError(f"{path}: defines {name}; name it {short_name(name)}.<version>.avsc")
        if name not in current:
            raise SchemaLoadError(f"{path}: {name} has no current schema to resolve to")
        schema_file = SchemaFile(name, path, schema)
        try:
            _check_parses(schema_file)
        except SchemaLoadError as exc:
            raise SchemaLoadError(f"{exc} (history schemas must be self-contained)") from exc
        history.append(schema_file)
    return history
