"""Wires the `DelayReleaser` into the worker: due decisions from the settings table, emits to the
due topics, resumes parked actions when a company resumes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from processors.channels import Channels
from processors.delay import DelayReleaser, Held, Release
from processors.model import Crm
from processors.rules import DueDecision, decide_when_due
from processors.runtime import aiokafka_options, now_ms

log = logging.getLogger("crm_sync.delay")

RELEASES = {DueDecision.DELIVER: Release.DELIVER, DueDecision.HOLD: Release.PARK, DueDecision.DROP: Release.DROP}


def register_releaser(app: faust.App, ch: Channels) -> DelayReleaser:
    rt = ch.runtime
    cfg = rt.config
    metrics = rt.metrics

    def decide(company_id: str, crm: str) -> str:
        return RELEASES[decide_when_due(Crm(crm), rt.settings.company(company_id))]

    async def emit(held: Held) -> Any:
        metrics.released.labels(held.crm).inc()
        metrics.lateness.labels(held.crm).observe(max(0.0, (now_ms() - held.due_at) / 1000))
        headers = [(name, value.encode()) for name, value in held.headers.items()]
        return await ch.due[Crm(held.crm)].send(key=held.action_id.encode(), value=held.value, headers=headers, force=True)

    def dropped(held: Held) -> None:
        metrics.skipped.labels(held.crm, held.headers.get("event_type", "unknown"), "integration_disabled").inc()
        log.info(
            "dropped at due time",
            extra={"reason": "integration_disabled", "crm": held.crm, "action_id": held.action_id, "event_id": held.headers.get("event_id")},
        )

    releaser = DelayReleaser(
        bootstrap_servers=cfg.bootstrap_servers,
        topic=cfg.topics.delay,
        group_id=f"{cfg.app_id}-delay",
        decide=decide,
        emit=emit,
        on_dropped=dropped,
        lookahead_seconds=cfg.delay_lookahead_seconds,
        consumer_options=aiokafka_options(cfg),
    )

    def on_settings_change(company_id: str) -> None:
        company = rt.settings.company(company_id)
        if company is not None and not company.paused:
            releaser.company_resumed(company_id)
        metrics.paused_tenants.set(sum(1 for c in rt.settings.companies() if c.paused))

    rt.settings.add_listener(on_settings_change)

    @app.task
    async def run_releaser() -> None:
        await asyncio.get_running_loop().run_in_executor(None, rt.settings.wait_ready, 120.0)
        await releaser.run()

    @app.timer(interval=1.0)
    async def held_gauge() -> None:
        metrics.held.set(releaser.held)

    return releaser
