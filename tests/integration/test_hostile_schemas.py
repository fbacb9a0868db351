"""Hostile writer schemas and records against the real registry (Apicurio): a publisher may register
any `crmsync.v1.MeetingBooked` under its topic's subject, so the codec must refuse recursive and
unbounded shapes, foreign subjects and counts the bytes cannot hold, and the worker must stay up.

The two reproductions run the ingest stage's `prepare` in a subprocess: before the fix one killed
the interpreter (SIGSEGV) and the other spun forever, and neither may take the test process along.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from connectors.sandbox.server import CrmSandbox
from processors.codec import Codec, registry_client
from processors.domain.deadletter import Source
from processors.stages.ingest import prepare
from schemas import load_schema
from tests.conftest import SchemaRegistryServer
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, http_ok, read_all, wait_for
from tests.integration.test_end_to_end import booking, configure, seed_people
from tests.integration.test_schema_registry import confluent_publisher, tasks_for

pytestmark = pytest.mark.integration

HOST = "hana.host@seller.example"
START = datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)
NESTING = 20_000
CLAIMED_ITEMS = 4 * 10**18
# A hang is seen as this timeout expiring; a bounded decode answers in well under a second.
HANG_TIMEOUT_S = 45


def zigzag_varint(n: int) -> bytes:
    """Avro's long encoding, written out so the hostile bytes need no (crashing) writer."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def with_extra_field(field: dict[str, Any]) -> dict[str, Any]:
    schema = load_schema("MeetingBooked")
    schema["fields"].append(field)
    return schema


RECURSIVE_FIELD = {
    "name": "loop",
    "type": ["null", {"type": "record", "name": "Loop", "fields": [{"name": "next", "type": ["null", "Loop"]}]}],
    "default": None,
}
NULL_ARRAY_FIELD = {"name": "blanks", "type": {"type": "array", "items": "null"}, "default": []}


def meeting_body(record: dict[str, Any]) -> bytes:
    """Today's MeetingBooked body (the single-object frame without its 10-byte header)."""
    return Codec().encode("MeetingBooked", record)[10:]


def recursive_tail() -> bytes:
    """`loop` as 20,000 nested `Loop` records (union branch 1 each), closed by null (branch 0)."""
    return b"\x02" * NESTING + b"\x00"


def null_array_tail(pad_to: int, head: int) -> bytes:
    """`blanks` claiming 4e18 nulls in one block, then padding up to a 250-byte record."""
    tail = zigzag_varint(CLAIMED_ITEMS)
    return tail + b"\x00" * max(0, pad_to - head - len(tail))


def frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def register(client: SchemaRegistryClient, subject: str, schema: dict[str, Any]) -> int:
    return client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))


class _NoSettings:
    """Decoding comes before any settings are looked at."""

    def company(self, company_id: str) -> None:
        return None

    def meeting_type(self, company_id: str, meeting_type_id: str) -> None:
        return None


NO_SETTINGS: Any = _NoSettings()


PREPARE_IN_A_SUBPROCESS = """
import json, sys
from processors.codec import Codec, registry_client
from processors.domain.deadletter import Source
from processors.stages.ingest import prepare
from tests.integration.test_hostile_schemas import NO_SETTINGS

url, user_info, topic, path = sys.argv[1:5]
data = open(path, "rb").read()
codec = Codec(registry_client(url, basic_auth_user_info=user_info))
prepared, unavailable = prepare(codec, NO_SETTINGS, [Source(topic, 0, 7, b"k", data)], 600_000)
[done] = prepared
print(json.dumps({"unavailable": unavailable, "message": done.letter and done.letter["message"],
                  "error_code": done.letter and done.letter["error_code"], "reason": done.invalid_reason}))
"""


def prepare_in_a_subprocess(registry: SchemaRegistryServer, topic: str, data: bytes, tmp_path: Path) -> dict[str, Any]:
    """The worker's own decode path, in a process of its own: a crash or a hang shows up here as such."""
    path = tmp_path / "record.bin"
    path.write_bytes(data)
    try:
        done = subprocess.run(
            [sys.executable, "-c", PREPARE_IN_A_SUBPROCESS, registry.url, registry.user_info, topic, str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"decoding the record hung (no answer within {HANG_TIMEOUT_S} s)")
    assert done.returncode == 0, f"decoding the record killed the process: exit {done.returncode}\n{done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def unique_topic(name: str) -> str:
    return f"hostile.{name}.{os.getpid()}.{time.monotonic_ns()}"


@pytest.fixture
def client(schema_registry: SchemaRegistryServer) -> SchemaRegistryClient:
    return registry_client(schema_registry.url, basic_auth_user_info=schema_registry.user_info)


def record() -> dict[str, Any]:
    return booking(booker="hostile@buyer.example", host=HOST, start=START)


def small_record() -> dict[str, Any]:
    """A booking short enough that, with the claimed count, the whole record is 250 bytes."""
    return dict(record(), event_id="e-1", meeting_id="m-1", meeting_type_name="Intro", form_answers=[], meeting_url=None)


def test_a_recursive_writer_nested_20000_deep_is_dead_lettered_not_a_segfault(
    schema_registry: SchemaRegistryServer, client: SchemaRegistryClient, tmp_path: Path,
) -> None:
    topic = unique_topic("recursive")
    schema_id = register(client, f"{topic}-value", with_extra_field(RECURSIVE_FIELD))
    data = frame(schema_id, meeting_body(record()) + recursive_tail())
    assert 20_000 < len(data) < 21_000

    done = prepare_in_a_subprocess(schema_registry, topic, data, tmp_path)

    assert done["unavailable"] is None
    assert done["error_code"] == done["reason"] == "unsafe_schema"
    assert f"schema id {schema_id}" in done["message"]
    assert "crmsync.v1.Loop refers to itself" in done["message"]


def test_an_array_of_null_claiming_4e18_items_is_dead_lettered_not_a_hang(
    schema_registry: SchemaRegistryServer, client: SchemaRegistryClient, tmp_path: Path,
) -> None:
    topic = unique_topic("null-array")
    schema_id = register(client, f"{topic}-value", with_extra_field(NULL_ARRAY_FIELD))
    body = meeting_body(small_record())
    data = frame(schema_id, body + null_array_tail(250, 5 + len(body)))
    assert len(data) == 250

    done = prepare_in_a_subprocess(schema_registry, topic, data, tmp_path)

    assert done["unavailable"] is None
    assert done["error_code"] == done["reason"] == "unsafe_schema"
    assert f"schema id {schema_id}" in done["message"]
    assert "array of null" in done["message"]


def test_a_schema_registered_under_another_subject_is_refused(
    schema_registry: SchemaRegistryServer, client: SchemaRegistryClient,
) -> None:
    """Our very own schema, but registered under a subject the topic's strategy does not name."""
    topic, elsewhere = unique_topic("ours"), unique_topic("elsewhere")
    schema_id = register(client, f"{elsewhere}-value", load_schema("MeetingBooked"))
    data = frame(schema_id, meeting_body(record()))
    codec = Codec(client)

    [done], unavailable = prepare(codec, NO_SETTINGS, [Source(topic, 0, 1, None, data)], 600_000)
    assert unavailable is None and done.letter is not None
    assert done.letter["error_code"] == "wrong_subject"
    assert f"schema id {schema_id}" in done.letter["message"]
    assert f"{topic}-value" in done.letter["message"]

    [accepted], _ = prepare(codec, NO_SETTINGS, [Source(elsewhere, 0, 1, None, data)], 600_000)
    assert accepted.letter is None and accepted.event_type == "meeting_booked"


def test_a_writer_that_does_not_resolve_to_our_reader_is_refused_by_its_schema(
    client: SchemaRegistryClient,
) -> None:
    """Checked once, on the schema (a required field of ours is missing), not left to a record."""
    topic = unique_topic("unresolvable")
    schema = load_schema("MeetingBooked")
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "company_id"]
    schema_id = register(client, f"{topic}-value", schema)
    [done], _ = prepare(Codec(client), NO_SETTINGS, [Source(topic, 0, 1, None, frame(schema_id, b""))], 600_000)
    assert done.letter is not None and done.letter["error_code"] == "incompatible_schema"
    assert f"schema id {schema_id}" in done.letter["message"]
    assert "company_id" in done.letter["message"]


@pytest.mark.parametrize("ingest_processes", [0, 1], ids=["in the worker", "in an ingest process"])
def test_the_worker_dead_letters_hostile_records_and_delivers_the_next_good_one(
    deployment: Deployment, sandbox: CrmSandbox, schema_registry: SchemaRegistryServer,
    client: SchemaRegistryClient, workers: list[WorkerProcess], tmp_path: Path, ingest_processes: int,
) -> None:
    people = seed_people(sandbox, booker="after@buyer.example", host=HOST)
    configure(deployment)
    deployment.extra_env.update(schema_registry.env(), CRM_SYNC_INGEST_PROCESSES=str(ingest_processes))
    worker = start_worker(deployment, workers, tmp_path)
    assert worker.proc is not None
    pid = worker.proc.pid

    topic = deployment.topics.meetings
    recursive_id = register(client, f"{topic}-value", with_extra_field(RECURSIVE_FIELD))
    null_array_id = register(client, f"{topic}-value", with_extra_field(NULL_ARRAY_FIELD))
    body, small = meeting_body(record()), meeting_body(small_record())
    producer = Producer({"bootstrap.servers": deployment.bootstrap})
    key = record()["company_id"].encode()
    producer.produce(topic, frame(recursive_id, body + recursive_tail()), key)
    producer.produce(topic, frame(null_array_id, small + null_array_tail(250, 5 + len(small))), key)
    producer.flush(30)

    good = confluent_publisher(deployment, schema_registry)
    good.publish_meeting_booked(booking(booker="after@buyer.example", host=HOST, start=START))
    good.flush()

    def delivered() -> list[dict[str, Any]]:
        assert worker.proc is not None and worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}"
        return tasks_for(sandbox, 1)

    [task] = wait_for(delivered, 60, what="the Task of the good record after the hostile ones")
    assert task["WhoId"] == people["contact"]
    letters = wait_for(lambda: read_all(deployment.bootstrap, deployment.topics.dead_letter, Codec()) or None, 30,
                       what="the dead letters of the hostile records")
    by_code = sorted((letter["error_code"], letter["message"]) for letter in letters)
    assert [code for code, _ in by_code] == ["unsafe_schema", "unsafe_schema"]
    assert any(f"schema id {recursive_id}" in message and "refers to itself" in message for _, message in by_code)
    assert any(f"schema id {null_array_id}" in message and "array of null" in message for _, message in by_code)
    assert worker.proc.poll() is None and worker.proc.pid == pid
    assert http_ok(f"http://127.0.0.1:{worker.port}/health/live")
