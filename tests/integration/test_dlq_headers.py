"""A dead letter keeps the original record's headers (a `traceparent`), in the letter and as Kafka
headers beside Kafka Connect's `__connect.errors.*` ones, and `dlq retry` re-sends the original
record with them — through the real broker, worker and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Message, Producer

from connectors.sandbox.server import CrmSandbox
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, read_all, wait_for
from tests.integration.test_sinks import configure, dead_letters, seed
from tests.integration.test_trust import cli, count_of

pytestmark = pytest.mark.integration

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
JUNK = b"\xc3\x01" + b"\x00" * 8 + b"junk"


def headers_of(msg: Message) -> dict[str, bytes | None]:
    return dict(msg.headers() or [])


def test_an_undecodable_record_s_headers_are_kept_exported_connect_style_and_re_sent_by_retry(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    seed(sandbox, ["after@buyer.example"])
    configure(deployment, "acme")
    start_worker(deployment, workers, tmp_path)
    producer = Producer({"bootstrap.servers": deployment.bootstrap})
    producer.produce(deployment.topics.meetings, key=b"acme", value=JUNK, headers=[("traceparent", TRACEPARENT)])
    assert producer.flush(30) == 0

    [letter] = wait_for(lambda: dead_letters(deployment), 60, what="the undecodable record's dead letter")
    assert letter["stage"] == "decode"
    assert letter["original_headers"] == [{"key": "traceparent", "value": TRACEPARENT}]

    [record] = [m for m in read_all(deployment.bootstrap, deployment.topics.dead_letter) if "__connect.errors.stage" in headers_of(m)]
    headers = headers_of(record)
    assert headers["traceparent"] == TRACEPARENT
    assert headers["__connect.errors.topic"] == deployment.topics.meetings.encode()
    assert headers["__connect.errors.partition"] == str(letter["source_partition"]).encode()
    assert headers["__connect.errors.offset"] == str(letter["source_offset"]).encode()
    assert headers["__connect.errors.stage"] == b"decode"
    assert headers["__connect.errors.exception.class.name"] == letter["error_class"].encode()
    assert headers["__connect.errors.exception.message"] == letter["message"].encode()

    retried = cli(deployment, "dlq", "retry", letter["dead_letter_id"])
    assert retried.returncode == 0 and retried.stdout.startswith("1 failure(s)"), retried.stderr
    inputs = wait_for(lambda: count_of([m for m in read_all(deployment.bootstrap, deployment.topics.meetings) if m.value() == JUNK], 2),
                      60, what="the re-sent original on its input topic")
    assert [headers_of(m) for m in inputs] == [{"traceparent": TRACEPARENT}] * 2
    # Ingested again (still undecodable), its new dead letter keeps the header too.
    letters = wait_for(lambda: count_of(dead_letters(deployment), 2), 60, what="the re-ingested record's dead letter")
    assert [d["original_headers"] for d in letters] == [[{"key": "traceparent", "value": TRACEPARENT}]] * 2
