"""Ingest's CPU work in processes of its own (`CRM_SYNC_INGEST_PROCESSES`), because one Python
process tops out at one core: decode → validate → plan → render → encode is about 120 µs a record
(issue 16), so a worker ingested a fifteenth of what the broker fed it.

Only `processors.stages.ingest.prepare` runs here. The ingest stage in the worker process still
consumes the batch, sends what was prepared, awaits every ack and only then commits, so the commit
rule and the rebalance handling are the same code whatever the number of processes. Each process
keeps its own settings table (the same `SettingsStore` over the settings topic) and plans nothing
before it has read that topic to its end.

A process that dies (OOM-killed, say) breaks the pool: the batch under way fails uncommitted, the
pool is made anew within a second, batch or not (the broken pool's other processes are
terminated), and the stage's supervisor re-reads the batch from its commit. The worker is not
ready (`/health/ready`) until every process of its current pool has read its settings table. The
processes ignore SIGINT (the worker stops them after its stages drained) and leave on their own
when the worker is gone (kill -9), so none outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.sharedctypes import Synchronized
from typing import Sequence

from processors.codec import Codec
from processors.config import Config
from processors.domain.deadletter import Source
from processors.stages.ingest import Chunk, Prepared, prepare, until_prepared
from processors.state.settings import SettingsStore
from processors.worker.logs import logging_config
from processors.worker.runtime import make_codec, make_settings

log = logging.getLogger("crm_sync.ingest")

ORPHAN_CHECK_SECONDS = 1.0
# Small enough that the stage starts sending early, large enough that pickling stays cheap.
CHUNK_RECORDS = 100
SETTINGS_WAIT_LOG_SECONDS = 30.0
CLOSE_SECONDS = 10.0

_codec: Codec | None = None
_settings: SettingsStore | None = None
_delay_ms = 0


class IngestPool:
    """`processes` ingest processes behind the stage's `Preparer`."""

    def __init__(self, config: Config, processes: int) -> None:
        self._config = config
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._ready_count: Synchronized[int] | None = None
        self._probe: Future[int] | None = None

    @property
    def ready(self) -> bool:
        """Every process of the current pool has read its settings table to the end."""
        return self._ready_count is not None and self._ready_count.value >= self.processes

    def start(self) -> None:
        self._executor = self._spawn()
        log.info("ingest runs in processes of its own", extra={"processes": self.processes})

    def _spawn(self) -> ProcessPoolExecutor:
        """All the processes now (each loads its settings table), not one by one as batches come."""
        # spawn, not fork: the worker has librdkafka and settings threads a fork would copy half-way.
        context = multiprocessing.get_context("spawn")
        self._ready_count = context.Value("i", 0)
        self._probe = None
        executor = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=context,
            initializer=_init,
            initargs=(self._config, os.getpid(), self._ready_count),
        )
        for _ in range(self.processes):
            executor.submit(_ready)
        return executor

    def __call__(self, sources: Sequence[Source]) -> list[Chunk]:
        """Chunks of `CHUNK_RECORDS`, all submitted at once: the processes work on the later ones
        while the stage sends the earlier ones."""
        chunks = [sources[i:i + CHUNK_RECORDS] for i in range(0, len(sources), CHUNK_RECORDS)]
        return [(chunk, asyncio.ensure_future(until_prepared(self._run, chunk))) for chunk in chunks]

    async def _run(self, sources: Sequence[Source]) -> tuple[list[Prepared], str | None]:
        executor = self._executor
        assert executor is not None, "IngestPool.start() was not called"
        try:
            return await asyncio.wrap_future(executor.submit(_prepare, list(sources)))
        except BrokenProcessPool:
            self._replace(executor)
            raise

    def heal(self) -> None:
        """Called every second: a pool that lost a process is replaced now, not when the next batch
        meets it, so a worker without input does not stay unready on a broken pool.

        The probe is a no-op task, one at a time: a broken pool fails the one it holds and refuses
        a new one."""
        executor, probe = self._executor, self._probe
        if executor is None or (probe is not None and not probe.done()):
            return  # still queued: the processes are busy, or still reading their settings tables
        if probe is None or not isinstance(probe.exception(), BrokenProcessPool):
            try:
                self._probe = executor.submit(_ready)
                return
            except BrokenProcessPool:
                pass
        self._replace(executor)

    def _replace(self, executor: ProcessPoolExecutor) -> None:
        """Once per broken pool, whoever meets it first (a batch or `heal`)."""
        if self._executor is not executor:
            return
        log.error("an ingest process died: a new pool takes over; a batch under way is read again", extra={"processes": self.processes})
        self._executor = self._spawn()
        executor.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """After the stages drained: the processes finish what they hold and leave; one that does not
        (still waiting for its settings table, say) is killed, so a stopping worker never hangs."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + CLOSE_SECONDS
        while multiprocessing.active_children() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for child in multiprocessing.active_children():
            log.warning("an ingest process did not stop in time; killing it", extra={"pid": child.pid})
            child.kill()


def _init(config: Config, parent_pid: int, ready: Synchronized[int]) -> None:
    """In each ingest process: logs as the worker's, its own codec and settings table, read to the end."""
    global _codec, _settings, _delay_ms
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker stops us
    logging.config.dictConfig(logging_config(config.log_level))
    threading.Thread(target=_leave_when_orphaned, args=(parent_pid,), name="orphan-watch", daemon=True).start()
    _codec = make_codec(config)
    _settings = make_settings(config, _codec)
    _delay_ms = int(config.delay_seconds * 1000)
    _settings.start()
    while not _settings.wait_ready(SETTINGS_WAIT_LOG_SECONDS):
        log.warning("ingest process still waiting for the settings table: nothing is planned")
    log.info("ingest process ready", extra={"pid": os.getpid()})
    with ready.get_lock():
        ready.value += 1


def _leave_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)


def _ready() -> int:
    return os.getpid()


def _prepare(sources: list[Source]) -> tuple[list[Prepared], str | None]:
    assert _codec is not None and _settings is not None
    return prepare(_codec, _settings, sources, _delay_ms)

