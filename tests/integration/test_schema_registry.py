"""The Confluent wire format against a real Schema Registry (Apicurio, `registry.sh`, with basic auth):
the publisher registers and writes it, the worker reads it beside single-object records, BACKWARD
compatibility refuses a breaking change, and the registry's absence is one line at start but a
brief outage later costs nothing (schemas are cached by id)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connectors.sandbox.server import CrmSandbox
from processors.codec import CONFLUENT, SINGLE_OBJECT, Codec, registry_client
from processors.ops.publisher import EventPublisher
from tests.conftest import SchemaRegistryServer
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, free_port, read_all, wait_for
from tests.integration.test_end_to_end import booking, configure, seed_people

pytestmark = pytest.mark.integration

HOST = "hana.host@seller.example"
START = datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)


class CuttableProxy:
    """A TCP forwarder in front of the registry: `cut()` refuses and drops every connection, like an outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port is ours again
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone would not
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy(schema_registry: SchemaRegistryServer) -> Iterator[CuttableProxy]:
    port = int(schema_registry.base_url.rsplit(":", 1)[1])
    p = CuttableProxy(port)
    p.restore()
    yield p
    p.cut()


def confluent_publisher(deployment: Deployment, registry: SchemaRegistryServer) -> EventPublisher:
    return EventPublisher(
        {"bootstrap.servers": deployment.bootstrap},
        deployment.topics,
        schema_registry_url=registry.url,
        schema_registry_basic_auth_user_info=registry.user_info,
        auto_register_schemas=True,
    )


def plain_publisher(deployment: Deployment) -> EventPublisher:
    return EventPublisher({"bootstrap.servers": deployment.bootstrap}, deployment.topics)


def tasks_for(sandbox: CrmSandbox, count: int) -> list[dict]:
    tasks = sandbox.salesforce.list_tasks()
    return tasks if len(tasks) >= count else []


def test_publisher_registers_and_the_worker_reads_both_encodings(
    deployment: Deployment, sandbox: CrmSandbox, schema_registry: SchemaRegistryServer,
    workers: list[WorkerProcess], tmp_path: Path,
) -> None:
    people = {kind: seed_people(sandbox, booker=f"{kind}@buyer.example", host=HOST) for kind in ("wire", "single")}
    configure(deployment)
    deployment.extra_env.update(schema_registry.env())
    start_worker(deployment, workers, tmp_path)

    wire = confluent_publisher(deployment, schema_registry)
    assert wire.encoding == CONFLUENT
    wire.publish_meeting_booked(booking(booker="wire@buyer.example", host=HOST, start=START))
    wire.flush()
    single = plain_publisher(deployment)
    assert single.encoding == SINGLE_OBJECT
    single.publish_meeting_booked(booking(booker="single@buyer.example", host=HOST, start=START))
    single.flush()

    client = registry_client(schema_registry.url, basic_auth_user_info=schema_registry.user_info)
    subject = f"{deployment.topics.meetings}-value"
    assert subject in client.get_subjects()
    registered = client.get_latest_version(subject)
    assert json.loads(registered.schema.schema_str)["name"] == "MeetingBooked"

    raw = [m.value() for m in read_all(deployment.bootstrap, deployment.topics.meetings)]
    assert sorted(v[:1] for v in raw) == [b"\x00", b"\xc3"]
    [confluent_value] = [v for v in raw if v[:1] == b"\x00"]
    assert int.from_bytes(confluent_value[1:5], "big") == registered.schema_id

    tasks = wait_for(lambda: tasks_for(sandbox, 2), 40, what="a Salesforce Task for each encoding")
    assert sorted(t["WhoId"] for t in tasks) == sorted(p["contact"] for p in people.values())


def test_backward_compatibility_refuses_a_breaking_change(schema_registry: SchemaRegistryServer) -> None:
    client = registry_client(schema_registry.url, basic_auth_user_info=schema_registry.user_info)
    subject = f"compat-{os.getpid()}-{time.monotonic_ns()}-value"
    codec = Codec(client)
    record = booking(booker="compat@buyer.example", host=HOST, start=START)
    first = codec.encode_confluent("MeetingBooked", record, subject)
    assert client.set_compatibility(subject, "BACKWARD") == {"compatibility": "BACKWARD"}
    assert client.get_compatibility(subject) == "BACKWARD"

    declared = json.loads(client.get_latest_version(subject).schema.schema_str)
    breaking = dict(declared, fields=[*declared["fields"], {"name": "required_new", "type": "string"}])
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert refused.value.http_status_code == 409

    compatible = dict(declared, fields=[*declared["fields"], {"name": "optional_new", "type": ["null", "string"], "default": None}])
    assert client.register_schema(subject, Schema(json.dumps(compatible), "AVRO")) != int.from_bytes(first[1:5], "big")
    assert codec.decode(first).value["company_id"] == record["company_id"]


def run_worker_briefly(deployment: Deployment, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = dict(deployment.env(), CRM_SYNC_METRICS_PORT=str(free_port()), **env)
    return subprocess.run([sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def test_an_unreachable_or_refusing_registry_stops_the_worker_with_one_line(
    deployment: Deployment, schema_registry: SchemaRegistryServer,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    down = run_worker_briefly(deployment, {"SCHEMA_REGISTRY_URL": nobody})
    assert down.returncode != 0
    [line] = [line for line in down.stderr.splitlines() if "SCHEMA_REGISTRY_URL" in line]
    assert f"no schema registry answers at {nobody}" in line
    assert "Traceback" not in down.stderr

    wrong_password = "crm-sync:not-the-password"
    refused = run_worker_briefly(deployment, dict(schema_registry.env(), SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=wrong_password))
    assert refused.returncode != 0
    assert "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO: the schema registry at" in refused.stderr
    assert "HTTP 401" in refused.stderr
    assert "not-the-password" not in refused.stderr + refused.stdout


def test_a_registry_outage_is_survived(
    deployment: Deployment, sandbox: CrmSandbox, schema_registry: SchemaRegistryServer, proxy: CuttableProxy,
    workers: list[WorkerProcess], tmp_path: Path,
) -> None:
    bookers = [f"outage{i}@buyer.example" for i in range(4)]
    for booker in bookers:
        seed_people(sandbox, booker=booker, host=HOST)
    configure(deployment)
    deployment.extra_env.update(schema_registry.env(), SCHEMA_REGISTRY_URL=f"{proxy.base_url}/apis/ccompat/v7")
    worker = start_worker(deployment, workers, tmp_path)
    wire, single = confluent_publisher(deployment, schema_registry), plain_publisher(deployment)

    wire.publish_meeting_booked(booking(booker=bookers[0], host=HOST, start=START))
    wire.flush()
    wait_for(lambda: tasks_for(sandbox, 1), 40, what="the first Task, before the outage")

    proxy.cut()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    wire.publish_meeting_booked(booking(booker=bookers[1], host=HOST, start=START))
    single.publish_meeting_booked(booking(booker=bookers[2], host=HOST, start=START))
    wire.flush()
    single.flush()
    wait_for(lambda: tasks_for(sandbox, 3), 40, what="Tasks for records published during the outage")

    proxy.restore()
    wire.publish_meeting_booked(booking(booker=bookers[3], host=HOST, start=START))
    wire.flush()
    tasks = wait_for(lambda: tasks_for(sandbox, 4), 40, what="the Task for a record published after the outage")
    assert len(tasks) == 4
    assert worker.proc is not None and worker.proc.poll() is None
    assert read_all(deployment.bootstrap, deployment.topics.dead_letter) == []
