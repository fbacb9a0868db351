"""The one Avro codec: dicts ⇄ bytes, in single-object encoding or the Confluent wire format.

Pure apart from the optional schema-registry client it is given; domain classes are not its business.

Value representation (both directions): plain Avro values as dicts, lists, str, int, bool, bytes, with
enum symbols as str and **timestamps as int milliseconds since the Unix epoch (UTC)**. ``encode`` also
accepts timezone-aware ``datetime`` for timestamp fields; naive datetimes are refused because fastavro
would silently read them as the machine's local time.

Schema evolution: every ``.avsc`` under ``schemas/`` (current and ``schemas/history/``) contributes a
fingerprint; a record is always resolved from its writer schema to the *current* schema of the same full
name, so older and newer writers decode to today's shape (added fields get their defaults).

Writer schemas from a registry are anyone's who may register one, so each is checked once per id
before any record is read with it (``processors.codec.shape``): bounded shape, no recursion, and it
resolves to our reader. Given the topic, a writer is also accepted only if it is registered under the
subject the topic's subject name strategy names (``<topic>-value`` by default).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import expand_schema, fingerprint, to_parsing_canonical_form

from processors.codec.conform import Invalid, compile_conform, without_logical_types
from processors.codec.shape import json_depth_problem, resolution_problem, shape_problem
from processors.domain.errors import Undecodable
from schemas import SCHEMA_DIR, SchemaCatalog, full_name, load_catalog, short_name

SINGLE_OBJECT = "single-object"
CONFLUENT = "confluent"

_SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_SINGLE_OBJECT_HEADER = 10
_CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER = 5

_T = TypeVar("_T")

MAX_REFERENCES = 64  # schema references one writer schema may pull in, all told
SUBJECT_RECHECK_SECONDS = 60.0  # a schema refused under a subject is asked about again after this

# Confluent's subject name strategies: (topic, writer's full record name) → the subject it must be under.
SUBJECT_NAME_STRATEGIES: dict[str, Callable[[str, str], str]] = {
    "TopicNameStrategy": lambda topic, record: f"{topic}-value",
    "RecordNameStrategy": lambda topic, record: record,
    "TopicRecordNameStrategy": lambda topic, record: f"{topic}-{record}",
}


class CodecError(Exception):
    """A record could not be encoded or decoded; ``code`` is stable, ``reason`` is for humans.

    Reasons name fields and types, never field values, so they are safe for logs and dead letters.
    """

    def __init__(
        self, reason: str, *, code: str, schema_name: str | None = None, encoding: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.schema_name = schema_name
        self.encoding = encoding


class EncodeError(CodecError):
    """The record does not fit its schema (or the registry refused the schema): nothing was written."""


class DecodeError(CodecError, Undecodable):
    """The bytes are not a record we can read: permanent, dead-letter with ``reason`` and ``code``."""


class RegistryUnavailableError(CodecError):
    """The schema registry could not answer: transient, retry later instead of dead-lettering."""


class RegistryRefusedError(RegistryUnavailableError):
    """The registry answered 401 or 403: not allowed. Waited out like an outage (credentials or
    rights can be mended without losing a record), but said as what it is."""


@dataclass(frozen=True)
class Decoded:
    """A decoded record: short schema name (e.g. ``MeetingBooked``), value, and the wire encoding."""

    schema_name: str
    value: dict[str, Any]
    encoding: str


@dataclass(frozen=True)
class _Writer:
    full_name: str
    schema: Any
    current: bool = False  # the writer is today's schema: read without resolution (a fifth cheaper)
    registered: Schema | None = None  # as the registry gave it, to ask under which subject it is


def schema_fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO (Rabin) of the parsing canonical form, as the 8 little-endian header bytes."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class Codec:
    """Encodes and decodes every schema in ``schemas/``; give it a registry to use the Confluent format."""

    def __init__(
        self, registry: SchemaRegistryClient | None = None, *, schema_dir: Path = SCHEMA_DIR,
        subject_name_strategy: str = "TopicNameStrategy", auto_register: bool = True, use_latest_version: bool = False,
    ) -> None:
        """`auto_register` and `use_latest_version` are confluent-kafka's serializer settings of the
        same names: register our schema on first use, or look up its id (off: a registry run by a
        platform team, where CI registers), or write with the subject's latest registered version."""
        catalog = load_catalog(schema_dir)
        self._registry = registry
        self._auto_register = auto_register
        self._use_latest = use_latest_version
        self._strategy = SUBJECT_NAME_STRATEGIES[subject_name_strategy]
        self._declared = {name: dict(f.schema) for name, f in catalog.current.items()}
        self._conformers = {name: compile_conform(expand_schema(schema)) for name, schema in self._declared.items()}
        self._readers = {name: _parse_raw(schema) for name, schema in self._declared.items()}
        self._fingerprints = _fingerprints(catalog)
        self._current_fingerprints = {name: schema_fingerprint(schema) for name, schema in self._declared.items()}
        self._writers_by_id: dict[int, _Writer] = {}
        self._refused_ids: dict[int, DecodeError] = {}  # schema id → why it was refused: checked once
        # (id, subject) → None once accepted, or a refusal and when to ask again (it may be registered later)
        self._subjects: dict[tuple[int, str], tuple[DecodeError, float] | None] = {}
        self._registered_ids: dict[tuple[str, str], int] = {}
        self._latest_by_subject: dict[str, tuple[int, Any]] = {}

    @property
    def registry(self) -> SchemaRegistryClient | None:
        """The schema registry client, or None when only single-object encoding is available."""
        return self._registry

    @property
    def schema_names(self) -> tuple[str, ...]:
        """Short names of the record schemas this codec can encode."""
        return tuple(short_name(name) for name, schema in self._declared.items() if schema["type"] == "record")

    def declared(self, schema_name: str) -> Schema:
        """Today's schema of `schema_name`, as the registry takes it."""
        return Schema(json.dumps(self._declared[self._record_name(schema_name)]), "AVRO")

    def subject_for(self, topic: str, schema_name: str) -> str:
        """The subject a record of `schema_name` on `topic` is registered under (the one place that says so)."""
        return self._strategy(topic, full_name(schema_name))

    def fingerprint(self, schema_name: str) -> bytes:
        """The 8-byte single-object fingerprint of a current schema."""
        return self._current_fingerprints[self._record_name(schema_name)]

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """Validate, then write single-object encoding: ``C3 01`` + fingerprint + Avro body."""
        name = self._record_name(schema_name)
        return _SINGLE_OBJECT_MAGIC + self._current_fingerprints[name] + self._body(name, record)

    def encode_confluent(self, schema_name: str, record: Mapping[str, Any], subject: str) -> bytes:
        """Validate, find the schema id under ``subject`` (cached), write ``00`` + schema id + body."""
        name = self._record_name(schema_name)
        body = self._body(name, record)
        if self._use_latest:
            schema_id, writer = self._latest(name, subject)
            out = io.BytesIO()
            try:
                schemaless_writer(out, writer, dict(record))
            except Exception as exc:
                raise EncodeError(f"invalid {short_name(name)}: does not fit the latest schema under {subject} "
                                  f"({type(exc).__name__})", code="invalid_record", schema_name=short_name(name)) from exc
            body = out.getvalue()
        else:
            schema_id = self._register(name, subject)
        return bytes([_CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big") + body

    def _latest(self, name: str, subject: str) -> tuple[int, Any]:
        """The subject's latest version (looked up once per subject): its id and its parsed schema."""
        short = short_name(name)
        if self._registry is None:
            raise EncodeError("confluent wire format but no schema registry configured", code="no_registry",
                              schema_name=short, encoding=CONFLUENT)
        cached = self._latest_by_subject.get(subject)
        if cached is None:
            try:
                found = self._registry.get_latest_version(subject)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise EncodeError(f"no schema is registered under subject {subject} (use.latest.version)",
                                      code="not_registered", schema_name=short, encoding=CONFLUENT) from exc
                raise _registry_failure(exc, f"the latest version of {subject}") from exc
            except Exception as exc:
                raise _registry_failure(exc, f"the latest version of {subject}") from exc
            cached = (found.schema_id, self._writer_for_id(found.schema_id).schema)
            self._latest_by_subject[subject] = cached
        return cached

    def decode(self, data: bytes | bytearray | memoryview | None, *, topic: str | None = None) -> Decoded:
        """Detect the encoding from the first bytes and read the record into the current schema.

        With ``topic`` (the input topics do), a Confluent record's writer schema must be registered
        under the subject that topic's strategy names: a schema registered elsewhere is refused.
        """
        if not data:
            raise DecodeError("empty record", code="empty")
        raw = bytes(data)
        if raw[:2] == _SINGLE_OBJECT_MAGIC:
            return self._decode_single_object(raw)
        if raw[0] == _CONFLUENT_MAGIC:
            return self._decode_confluent(raw, topic)
        raise DecodeError(f"unknown magic byte 0x{raw[0]:02x}", code="unknown_magic")

    def _record_name(self, schema_name: str) -> str:
        name = full_name(schema_name)
        if self._declared.get(name, {}).get("type") != "record":
            raise EncodeError(f"no record schema named {schema_name!r}", code="unknown_schema")
        return name

    def _body(self, name: str, record: Mapping[str, Any]) -> bytes:
        short = short_name(name)
        try:
            conformed = self._conformers[name](record)
        except Invalid as exc:
            raise EncodeError(f"invalid {short}: {exc}", code="invalid_record", schema_name=short) from None
        out = io.BytesIO()
        try:
            schemaless_writer(out, self._readers[name], conformed)
        except Exception as exc:
            raise EncodeError(
                f"invalid {short}: cannot serialise ({type(exc).__name__})", code="invalid_record", schema_name=short
            ) from exc
        return out.getvalue()

    def _register(self, name: str, subject: str) -> int:
        short = short_name(name)
        if self._registry is None:
            raise EncodeError("confluent wire format but no schema registry configured", code="no_registry",
                              schema_name=short, encoding=CONFLUENT)
        cached = self._registered_ids.get((subject, name))
        if cached is not None:
            return cached
        schema = Schema(json.dumps(self._declared[name]), "AVRO")
        what = f"{'registering' if self._auto_register else 'looking up'} {short} under {subject}"
        try:
            if self._auto_register:
                schema_id = self._registry.register_schema(subject, schema)
            else:
                schema_id = self._registry.lookup_schema(subject, schema).schema_id
        except SchemaRegistryError as exc:
            if exc.http_status_code in (409, 422):
                raise EncodeError(
                    f"schema registry rejected {short} under subject {subject}: {exc.error_message}",
                    code="registry_rejected", schema_name=short, encoding=CONFLUENT,
                ) from exc
            if exc.http_status_code == 404 and not self._auto_register:
                raise EncodeError(
                    f"{short} is not registered under subject {subject} and auto-registration is off: register it "
                    "first (`crm-sync schemas check` tells whether it is compatible)",
                    code="not_registered", schema_name=short, encoding=CONFLUENT,
                ) from exc
            raise _registry_failure(exc, what) from exc
        except Exception as exc:
            raise _registry_failure(exc, what) from exc
        self._registered_ids[(subject, name)] = schema_id
        self._writers_by_id[schema_id] = _Writer(name, self._readers[name], registered=schema)
        self._subjects[(schema_id, subject)] = None
        return schema_id

    def _decode_single_object(self, raw: bytes) -> Decoded:
        if len(raw) < _SINGLE_OBJECT_HEADER:
            raise DecodeError(f"truncated single-object header ({len(raw)} bytes)", code="truncated",
                              encoding=SINGLE_OBJECT)
        key = raw[2:_SINGLE_OBJECT_HEADER]
        writer = self._fingerprints.get(key)
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {key.hex()}", code="unknown_fingerprint",
                              encoding=SINGLE_OBJECT)
        return self._read(raw[_SINGLE_OBJECT_HEADER:], writer, SINGLE_OBJECT)

    def _decode_confluent(self, raw: bytes, topic: str | None) -> Decoded:
        if self._registry is None:
            raise DecodeError("confluent wire format but no schema registry configured", code="no_registry",
                              encoding=CONFLUENT)
        if len(raw) < _CONFLUENT_HEADER:
            raise DecodeError(f"truncated confluent header ({len(raw)} bytes)", code="truncated", encoding=CONFLUENT)
        schema_id = int.from_bytes(raw[1:_CONFLUENT_HEADER], "big")
        writer = self._writer_for_id(schema_id)
        if topic is not None:
            self._check_subject(schema_id, writer, self.subject_for(topic, writer.full_name), topic)
        return self._read(raw[_CONFLUENT_HEADER:], writer, CONFLUENT)

    def _writer_for_id(self, schema_id: int) -> _Writer:
        """The checked writer schema of an id; a refusal is remembered, so the registry is asked once."""
        cached = self._writers_by_id.get(schema_id)
        if cached is not None:
            return cached
        refused = self._refused_ids.get(schema_id)
        if refused is not None:
            raise _again(refused)
        try:
            writer = self._load_writer(schema_id)
        except DecodeError as exc:
            if exc.code != "unknown_schema_id":  # an id that exists is refused for good; one not yet may come
                self._refused_ids[schema_id] = exc
            raise
        self._writers_by_id[schema_id] = writer
        return writer

    def _load_writer(self, schema_id: int) -> _Writer:
        registry = self._registry
        assert registry is not None
        what = f"schema id {schema_id}"
        schema = _ask_registry(lambda: registry.get_schema(schema_id), what)
        if (schema.schema_type or "AVRO") != "AVRO":
            raise DecodeError(f"{what} is {schema.schema_type}, not AVRO", code="not_avro", encoding=CONFLUENT)
        named: dict[str, Any] = {}
        try:
            self._parse_references(schema, named, set())
        except DecodeError as exc:
            if exc.code != "unsafe_schema":
                raise
            raise DecodeError(f"{what} refused: {exc.reason}", code=exc.code, encoding=CONFLUENT) from None
        parsed = _parse_registered(schema, named, what)
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise DecodeError(f"{what} is not an Avro record schema", code="not_record", encoding=CONFLUENT)
        name = str(parsed["name"])
        short = short_name(name)
        problem = shape_problem(parsed, named)
        if problem is not None:
            raise DecodeError(f"{what} ({name}) refused: {problem}", code="unsafe_schema", schema_name=short,
                              encoding=CONFLUENT)
        reader = self._readers.get(name)
        if reader is not None:
            problem = resolution_problem(parsed, reader, named, reader.get("__named_schemas", {}))
            if problem is not None:
                raise DecodeError(f"{what}: writer schema of {short} does not resolve to ours: {problem}",
                                  code="incompatible_schema", schema_name=short, encoding=CONFLUENT)
        return _Writer(name, parsed, registered=schema)

    def _check_subject(self, schema_id: int, writer: _Writer, subject: str, topic: str) -> None:
        """Asked once per (id, subject): is this schema registered under the subject the topic names?"""
        key = (schema_id, subject)
        known = self._subjects.get(key, ())
        if known is None:
            return
        if not known or known[1] <= monotonic():
            registry = self._registry
            assert registry is not None and writer.registered is not None
            registered = writer.registered
            try:
                _ask_registry(lambda: registry.lookup_schema(subject, registered), f"schema id {schema_id}")
            except DecodeError:  # a 404: not under this subject
                refusal = DecodeError(
                    f"schema id {schema_id} ({writer.full_name}) is not registered under subject {subject}, "
                    f"the one topic {topic} reads from", code="wrong_subject",
                    schema_name=short_name(writer.full_name), encoding=CONFLUENT,
                )
                self._subjects[key] = known = (refusal, monotonic() + SUBJECT_RECHECK_SECONDS)
            else:
                self._subjects[key] = None
                return
        raise _again(known[0])

    def _parse_references(self, schema: Schema, named: dict[str, Any], seen: set[tuple[str, int]]) -> None:
        """Writers may reference types registered under other subjects: parse those first."""
        registry = self._registry
        assert registry is not None
        for reference in schema.references or []:
            key = (str(reference.subject), int(reference.version or 0))
            if key in seen:
                continue
            if len(seen) >= MAX_REFERENCES:  # each one is a registry request, and chains recurse
                raise DecodeError(f"more than {MAX_REFERENCES} schema references", code="unsafe_schema",
                                  encoding=CONFLUENT)
            seen.add(key)
            what = f"reference {reference.name} ({reference.subject} v{reference.version})"
            registered = _ask_registry(
                functools.partial(registry.get_version, *key), what
            )
            self._parse_references(registered.schema, named, seen)
            _parse_registered(registered.schema, named, what)

    def _read(self, body: bytes, writer: _Writer, encoding: str) -> Decoded:
        short = short_name(writer.full_name)
        reader = self._readers.get(writer.full_name)
        if reader is None:
            raise DecodeError(f"no reader schema for {writer.full_name}", code="no_reader_schema",
                              schema_name=short, encoding=encoding)
        stream = io.BytesIO(body)
        try:
            # A record schema reads into a dict.
            value = cast(dict[str, Any], schemaless_reader(stream, writer.schema, None if writer.current else reader))
        except SchemaResolutionError as exc:
            raise DecodeError(f"writer schema of {short} does not resolve to ours: {exc}", code="incompatible_schema",
                              schema_name=short, encoding=encoding) from None
        except Exception as exc:
            raise DecodeError(f"corrupt {short} body ({_summary(exc)})", code="corrupt_body",
                              schema_name=short, encoding=encoding) from None
        trailing = len(body) - stream.tell()
        if trailing:
            raise DecodeError(f"corrupt {short} body ({trailing} bytes after the record)", code="trailing_bytes",
                              schema_name=short, encoding=encoding)
        return Decoded(schema_name=short, value=value, encoding=encoding)


REGISTRY_TIMEOUT_SECONDS = 10.0


def registry_client(
    url: str, *, basic_auth_user_info: str | None = None, ssl_ca_location: str | None = None
) -> SchemaRegistryClient:
    """The one way the project builds a registry client, so the publisher and the worker authenticate alike."""
    conf: dict[str, Any] = {"url": url, "timeout": REGISTRY_TIMEOUT_SECONDS}
    if basic_auth_user_info:
        conf["basic.auth.user.info"] = basic_auth_user_info
    if ssl_ca_location:
        conf["ssl.ca.location"] = ssl_ca_location
    return SchemaRegistryClient.new_client(conf)


def registry_problems(registry: SchemaRegistryClient, url: str) -> list[str]:
    """Why the registry at `url` cannot serve us now, as `VAR: …` lines (empty when it answers)."""
    where = _without_userinfo(url)
    try:
        registry.get_subjects()
    except SchemaRegistryError as exc:
        if exc.http_status_code in (401, 403):
            return [f"SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO: the schema registry at {where} refused the credentials "
                    f"(HTTP {exc.http_status_code})"]
        return [f"SCHEMA_REGISTRY_URL: the schema registry at {where} answered HTTP {exc.http_status_code} "
                f"({exc.error_message})"]
    except Exception as exc:
        return [f"SCHEMA_REGISTRY_URL: no schema registry answers at {where} ({type(exc).__name__})"]
    return []


def _without_userinfo(url: str) -> str:
    """Credentials may sit in the URL itself; they never reach a message."""
    parts = urlsplit(url.split(",")[0].strip())
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


@functools.cache
def default_codec() -> Codec:
    """The shared registry-less codec over ``schemas/`` (schemas are read once per process)."""
    return Codec()


def _parse_raw(schema: Any, named: dict[str, Any] | None = None) -> Any:
    return parse_schema(without_logical_types(schema), {} if named is None else named)


def _fingerprints(catalog: SchemaCatalog) -> dict[bytes, _Writer]:
    """Fingerprint → writer schema, for current and historical versions of every record type."""
    current = {schema_fingerprint(dict(f.schema)) for f in catalog.current.values()}
    sources = [*catalog.current.values(), *catalog.history]
    return {
        key: _Writer(f.full_name, _parse_raw(dict(f.schema)), key in current)
        for f in sources
        if f.schema.get("type") == "record"
        for key in [schema_fingerprint(dict(f.schema))]
    }


def _ask_registry(call: Callable[[], _T], what: str) -> _T:
    """404 is permanent (the id does not exist); anything else may heal, so it is transient."""
    try:
        return call()
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise DecodeError(f"{what} not found in the schema registry", code="unknown_schema_id",
                              encoding=CONFLUENT) from exc
        raise _registry_failure(exc, what) from exc
    except Exception as exc:
        raise _registry_failure(exc, what) from exc


def _registry_failure(exc: Exception, what: str) -> RegistryUnavailableError:
    """401 and 403 are "not allowed" (credentials or rights), anything else "unavailable"."""
    if isinstance(exc, SchemaRegistryError) and exc.http_status_code in (401, 403):
        return RegistryRefusedError(
            f"schema registry refused {what}: not allowed (HTTP {exc.http_status_code}: {exc.error_message}); "
            "check SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO and the principal's rights on the registry",
            code="registry_refused", encoding=CONFLUENT,
        )
    detail = (
        f"HTTP {exc.http_status_code}: {exc.error_message}" if isinstance(exc, SchemaRegistryError)
        else type(exc).__name__
    )
    return RegistryUnavailableError(f"schema registry unavailable for {what} ({detail})", code="registry_unavailable",
                                    encoding=CONFLUENT)


def _parse_registered(schema: Schema, named: dict[str, Any], what: str) -> Any:
    try:
        document = json.loads(schema.schema_str or "")
    except Exception as exc:  # RecursionError too: the document is nested beyond reason
        raise DecodeError(f"{what} is not a valid Avro schema ({type(exc).__name__})", code="invalid_schema",
                          encoding=CONFLUENT) from None
    problem = json_depth_problem(document)
    if problem is not None:
        raise DecodeError(f"{what} refused: {problem}", code="unsafe_schema", encoding=CONFLUENT)
    try:
        return _parse_raw(document, named)
    except Exception as exc:
        raise DecodeError(f"{what} is not a valid Avro schema ({type(exc).__name__}: {exc})", code="invalid_schema",
                          encoding=CONFLUENT) from None


def _again(refused: DecodeError) -> DecodeError:
    """A remembered refusal, raised afresh (one exception object raised again would grow its traceback)."""
    return DecodeError(refused.reason, code=refused.code, schema_name=refused.schema_name, encoding=refused.encoding)


def _summary(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
