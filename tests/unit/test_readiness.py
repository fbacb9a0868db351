"""`/health/ready`'s rule: every part the worker plans with must have read its settings."""

from __future__ import annotations

import itertools

from processors.worker.views import readiness


def test_ready_only_when_every_part_is() -> None:
    for settings, stages, pool in itertools.product([True, False], repeat=3):
        state = readiness(settings_ready=settings, stages_running=stages, ingest_processes_ready=pool)
        assert state == {
            "ready": settings and stages and pool,
            "settings_ready": settings,
            "stages_running": stages,
            "ingest_processes_ready": pool,
        }


def test_a_worker_without_ingest_processes_does_not_wait_for_them() -> None:
    assert readiness(settings_ready=True, stages_running=True)["ready"] is True


def test_a_stage_whose_assignment_is_not_settled_makes_the_worker_not_ready() -> None:
    """A sink whose ledger read failed holds its partitions paused: the worker is not ready."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from processors.kafka.consumer import Settling
    from processors.worker.views import app_readiness

    class Paused:
        def pause(self, *tps: TopicPartition) -> None: ...

        def resume(self, *tps: TopicPartition) -> None: ...

    broker_in_trouble = True

    async def read_ledger(partitions: object) -> None:
        if broker_in_trouble:
            raise TimeoutError("ledger not read to its end")

    settling = Settling("sink-salesforce", lookback_seconds=None, hook=read_ledger)

    class Stage:
        running = property(lambda self: settling.settled)

    rt = SimpleNamespace(settings=SimpleNamespace(ready=True), stages=[Stage()], ingest_pool=None)
    asyncio.run(settling.assigned(Paused(), [TopicPartition("due", 0)]))  # type: ignore[arg-type]
    assert app_readiness(rt)["ready"] is False  # type: ignore[arg-type]
    broker_in_trouble = False
    asyncio.run(settling.again(Paused()))  # type: ignore[arg-type]
    assert app_readiness(rt)["ready"] is True  # type: ignore[arg-type]
