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
