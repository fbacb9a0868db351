"""The failure-history tools read only the range asked for, find one failure by id through the
index, and make bulk changes only when confirmed — against a real broker, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from processors.codec import Codec
from processors.config import TOPIC_ENV, Config, Topics
from processors.domain.deadletter import Source, dead_letter
from processors.domain.deadletter_index import entry_of
from processors.kafka import topics as kafka_topics
from processors.kafka.read import TopicReader
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration

HOUR_MS = 3600 * 1000


class Dlq:
    """A dead-letter topic with its index, fed the way the worker feeds them, and the CLI on it."""

    def __init__(self, bootstrap: str, partitions: int = 3) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.topics = Topics(**{name: f"dlqtools.{name}.{suffix}" for name in TOPIC_ENV})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_SYNC_")}
        self.env.update({TOPIC_ENV[name]: getattr(self.topics, name) for name in TOPIC_ENV})
        self.env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, CRM_SYNC_TOPIC_PARTITIONS=str(partitions))
        self.config = Config(bootstrap_servers=bootstrap, topics=self.topics, topic_partitions=partitions)
        kafka_topics.create_missing(self.config)
        self.codec = Codec()
        self.producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20})
        self._offset = 0

    def write(self, company: str | None, at_ms: int, *, stage: str = "decode", error_class: str = "DecodeError", index: bool = True) -> str:
        """One dead letter stamped `at_ms` (record timestamp and created_at), as the worker writes it."""
        self._offset += 1
        letter = dead_letter(
            stage=stage, error_class=error_class, message="not Avro", company_id=company, now_ms=at_ms,
            source=Source(self.topics.meetings, 0, self._offset, company.encode() if company else None, b"\x00garbage"),
        )
        self.producer.produce(self.topics.dead_letter, key=(company or "").encode(), value=self.codec.encode("DeadLetter", letter), timestamp=at_ms)
        if index:
            entry = entry_of(letter)
            self.producer.produce(self.topics.dead_letter_index, key=entry.key, value=entry.to_json(), timestamp=at_ms)
        return str(letter["dead_letter_id"])

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "processors.ops.cli", "dlq", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60, input=stdin,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"{args}: exit {done.returncode}: {done.stderr}"
        return done.stdout

    def listed(self, *args: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ok("list", "--json", *args).splitlines()]


@pytest.fixture
def dlq(kafka_bootstrap: str) -> Dlq:
    return Dlq(kafka_bootstrap)


def test_a_read_from_a_time_starts_at_the_broker_s_time_index_and_feeds_nothing_older(dlq: Dlq) -> None:
    now = int(time.time() * 1000)
    for i in range(50):
        dlq.write("acme", now - 48 * HOUR_MS + i)
    recent = [dlq.write("acme", now - 60_000 + i) for i in range(3)]
    dlq.flush()
    fed: list[int] = []
    with TopicReader({"bootstrap.servers": dlq.config.bootstrap_servers}, dlq.topics.dead_letter) as reader:
        reader.assign(reader.partitions(), since_ms=now - HOUR_MS)
        assert reader.read_to_end(lambda m: fed.append(m.timestamp()[1])) == 3
    assert all(ts >= now - HOUR_MS for ts in fed)
    # A time after the last record reads nothing, and ends at once instead of waiting for the timeout.
    with TopicReader({"bootstrap.servers": dlq.config.bootstrap_servers}, dlq.topics.dead_letter) as reader:
        reader.assign(reader.partitions(), since_ms=now + HOUR_MS)
        started = time.monotonic()
        assert reader.read_to_end(lambda m: None, timeout=20) == 0
        assert time.monotonic() - started < 10
    assert [r["dead_letter_id"] for r in dlq.listed("--company", "acme", "--since", "1h")] == recent


def test_list_shows_one_company_in_the_window_asked_for(dlq: Dlq) -> None:
    now = int(time.time() * 1000)
    old = dlq.write("acme", now - 3 * 24 * HOUR_MS)
    mine = dlq.write("acme", now - 10 * 60_000)
    other = dlq.write("globex", now - 10 * 60_000)
    dlq.flush()
    assert [r["dead_letter_id"] for r in dlq.listed("--company", "acme", "--since", "1h")] == [mine]
    assert [r["dead_letter_id"] for r in dlq.listed("--company", "acme")] == [old, mine]  # the default: 7 days
    assert {r["dead_letter_id"] for r in dlq.listed("--since", "1h")} == {mine, other}
    assert dlq.listed("--company", "acme", "--since", "2099-01-01T00:00:00Z") == []


def test_show_retry_and_resolve_find_one_failure_by_id_through_the_index(dlq: Dlq) -> None:
    now = int(time.time() * 1000)
    for i in range(20):
        dlq.write(f"noise-{i}", now - 20 * 24 * HOUR_MS + i)
    wanted = dlq.write("acme", now - 20 * 24 * HOUR_MS + 100)
    dlq.flush()
    shown = json.loads(dlq.ok("show", wanted))
    assert shown["dead_letter_id"] == wanted and shown["company_id"] == "acme" and shown["statuses"] == []
    resolved = json.loads(dlq.ok("resolve", wanted, "--note", "fixed upstream", "--json"))
    assert resolved == {"dry_run": False, "resolved": [wanted], "count": 1, "skipped": []}
    statuses = json.loads(dlq.ok("show", wanted))["statuses"]
    assert [(s["status"], s["note"]) for s in statuses] == [("resolved", "fixed upstream")]


def test_a_failure_from_before_the_index_is_found_after_reindex(dlq: Dlq) -> None:
    now = int(time.time() * 1000)
    legacy = dlq.write("acme", now - HOUR_MS, index=False)
    dlq.flush()
    missing = dlq.run("show", legacy)
    assert missing.returncode == 2 and "crm-sync dlq reindex" in missing.stderr
    assert json.loads(dlq.ok("reindex", "--json")) == {"indexed": 1}
    assert json.loads(dlq.ok("show", legacy))["dead_letter_id"] == legacy


def test_bulk_changes_have_a_dry_run_and_ask_first_past_100(dlq: Dlq) -> None:
    now = int(time.time() * 1000)
    ids = [dlq.write("acme", now - 60_000 + i) for i in range(101)]
    dlq.flush()
    dry = json.loads(dlq.ok("resolve", "--company", "acme", "--dry-run", "--json"))
    assert dry["dry_run"] is True and sorted(dry["resolved"]) == sorted(ids)
    assert len(dlq.listed("--company", "acme")) == 101  # nothing changed
    plain = dlq.ok("retry", "--company", "acme", "--dry-run")
    assert plain.splitlines()[-1] == "101 failure(s) would be sent for retry"
    refused = dlq.run("resolve", "--company", "acme")  # no terminal to ask on: refused, not done
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert len(dlq.listed("--company", "acme")) == 101
    done = json.loads(dlq.ok("resolve", "--company", "acme", "--yes", "--json"))
    assert done["count"] == 101
    assert dlq.listed("--company", "acme") == []
