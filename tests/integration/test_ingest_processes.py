"""Ingest in processes of its own (`CRM_SYNC_INGEST_PROCESSES`, issue 16), through the real broker,
worker and CRM sandbox: the same objects as in-process ingest, settings changed after the start,
bad input dead-lettered from a process, a killed ingest process replaced without a loss or a
duplicate, and no process left behind by a worker killed with kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from connectors.sandbox.server import CrmSandbox
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, http_ok, wait_for
from tests.integration.test_sinks import booking, configure, dead_letters, publish, seed
from tests.integration.test_trust import metric

pytestmark = pytest.mark.integration

PROCESSES = 2


def ingest_processes(worker: WorkerProcess) -> list[int]:
    """The worker's ingest processes (multiprocessing's resource tracker is its child too; not one of them)."""
    assert worker.proc is not None
    out = subprocess.run(["pgrep", "-P", str(worker.proc.pid), "-f", "multiprocessing.spawn"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split() if "resource_tracker" not in _cmdline(int(pid))]


def pooled(deployment: Deployment, sandbox: CrmSandbox, prefix: str, count: int) -> list[str]:
    """A deployment whose workers ingest in `PROCESSES` processes, "acme" set up, `count` bookers seeded."""
    deployment.extra_env["CRM_SYNC_INGEST_PROCESSES"] = str(PROCESSES)
    bookers = [f"{prefix}{i}@buyer.example" for i in range(count)]
    seed(sandbox, bookers)
    configure(deployment, "acme")
    return bookers


def new_pool(worker: WorkerProcess, old: list[int]) -> list[int] | None:
    """The worker's ingest processes once they are a full pool with none of `old` in it."""
    now = ingest_processes(worker)
    return now if len(now) == PROCESSES and not set(now) & set(old) else None


def full_pool(worker: WorkerProcess) -> list[int]:
    return wait_for(lambda: new_pool(worker, []), 30, what="the ingest processes")


def processes_ready(worker: WorkerProcess) -> int:
    """How many ingest processes said they read their settings table (their log lines)."""
    lines = [json.loads(line) for line in worker.log_text().splitlines() if line.startswith("{")]
    return sum(1 for line in lines if line["msg"] == "ingest process ready")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "(Z)" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:4]


def test_ingest_processes_plan_what_the_worker_would(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    bookers = pooled(deployment, sandbox, "proc", 12)
    publish(deployment, [booking("acme", b) for b in bookers[:10]])
    raw = Producer({"bootstrap.servers": deployment.bootstrap})
    raw.produce(deployment.topics.meetings, key=b"acme", value=b"\xde\xad not avro")
    raw.flush(10)
    worker = start_worker(deployment, workers, tmp_path)
    # Ready (start_worker waited for it) only once every process has read its settings table.
    assert processes_ready(worker) == PROCESSES, worker.log_tail()
    full_pool(worker)

    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 10 and len(sandbox.hubspot.list_meetings()) == 10, 60,
             what="10 Tasks and 10 meetings planned in the ingest processes")
    [letter] = wait_for(lambda: dead_letters(deployment), 30, what="the garbage record's dead letter")
    assert (letter["stage"], letter["error_class"], letter["original_value"]) == ("decode", "DecodeError", b"\xde\xad not avro")

    # A meeting type set up after the processes read their settings tables: they follow the topic.
    configure(deployment, "acme", "late-type")
    publish(deployment, [booking("acme", bookers[10], meeting_type="late-type")])
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 11 and len(sandbox.hubspot.list_meetings()) == 11, 60,
             what="the booking of a meeting type configured after the start")
    assert metric(worker, "crm_sync_records_ingested_total") == 12
    assert metric(worker, "crm_sync_actions_planned_total") == 22
    assert metric(worker, "crm_sync_records_invalid_total", reason="unknown_magic") == 1
    assert "@buyer.example" not in worker.log_text()

    # SIGTERM: the stages drain, then the pool; not the harness's kill after 30 s.
    processes = ingest_processes(worker)
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 25, worker.log_tail()
    assert worker.proc is not None and worker.proc.returncode != -signal.SIGKILL
    assert not any(alive(pid) for pid in processes)


def test_a_killed_ingest_process_is_replaced_and_a_killed_worker_leaves_none_behind(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    bookers = pooled(deployment, sandbox, "kill", 8)
    worker = start_worker(deployment, workers, tmp_path)
    first = full_pool(worker)
    publish(deployment, [booking("acme", b) for b in bookers[:4]])
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 4, 60, what="the first four Tasks")

    # No input meets the broken pool: it is replaced all the same, and the worker is ready again.
    os.kill(first[0], signal.SIGKILL)
    replaced = wait_for(lambda: new_pool(worker, first), 30, what="a new pool without a batch to find the broken one")
    wait_for(lambda: processes_ready(worker) == 2 * PROCESSES and http_ok(f"http://127.0.0.1:{worker.port}/health/ready"), 30,
             what="ready again once the new pool read its settings")
    assert not alive(first[1]), "the broken pool's other process outlived it"
    publish(deployment, [booking("acme", b) for b in bookers[4:]])
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 8 and len(sandbox.hubspot.list_meetings()) == 8, 90,
             what="the bookings published after an ingest process was killed")
    assert set(ingest_processes(worker)) == set(replaced)
    assert sorted(t["WhoId"] for t in sandbox.salesforce.list_tasks()) == sorted(set(t["WhoId"] for t in sandbox.salesforce.list_tasks()))
    assert dead_letters(deployment) == []

    worker.kill()
    wait_for(lambda: not any(alive(pid) for pid in replaced), 15, what="the ingest processes gone with their worker")
