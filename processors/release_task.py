"""Wires the `DelayReleaser`s into the worker: due decisions from the settings table (parked actions
are re-decided every tick, so a resume needs no signal), emits to the due topics. The app runs them."""

from __future__ import annotations

import logging
from typing import Any

import faust

from processors.channels import Channels
from processors.delay import DelayReleaser, Held, Release
from processors.model import Crm
from processors.rules import DueDecision, decide_when_due
from processors.runtime import group_options, now_ms

log = logging.getLogger("crm_sync.delay")

RETRY_LOOKAHEAD_SECONDS = 900.0
RELEASES = {DueDecision.DELIVER: Release.DELIVER, DueDecision.HOLD: Release.PARK, DueDecision.DROP: Release.DROP}


def register_releaser(app: faust.App, ch: Channels) -> list[DelayReleaser]:
    rt = ch.runtime
    cfg = rt.config
    metrics = rt.metrics

    def decide(company_id: str, crm: str) -> str:
        return RELEASES[decide_when_due(Crm(crm), rt.settings.company(company_id))]

    async def emit(held: Held) -> Any:
        metrics.released.labels(held.crm).inc()
        metrics.lateness.labels(held.crm).observe(max(0.0, (now_ms() - held.due_at) / 1000))
        return await ch.send(cfg.topics.due(Crm(held.crm)), held.action_id.encode(), held.value, held.headers)

    async def repark(held: Held) -> Any:
        metrics.reparked.labels(held.crm).inc()
        log.info("parked action moved to the retry topic", extra={"crm": held.crm, "action_id": held.action_id, "event_id": held.header("event_id")})
        return await ch.send(cfg.topics.retry, held.company_id.encode(), held.value, held.headers)

    def dropped(held: Held) -> None:
        metrics.skipped.labels(held.crm, held.header("event_type") or "unknown", "integration_disabled").inc()
        rt.history.record(
            company_id=held.company_id, crm=held.crm, event_type=held.header("event_type") or "unknown", outcome="skipped",
            reason="integration_disabled", at_ms=now_ms(), event_id=held.header("event_id"), action_id=held.action_id,
        )
        log.info(
            "dropped at due time",
            extra={"reason": "integration_disabled", "crm": held.crm, "action_id": held.action_id, "event_id": held.header("event_id")},
        )

    def make(topic: str, group: str, lookahead_seconds: float) -> DelayReleaser:
        return DelayReleaser(
            bootstrap_servers=cfg.bootstrap_servers,
            topic=topic,
            group_id=f"{cfg.app_id}-{group}",
            decide=decide,
            emit=emit,
            on_dropped=dropped,
            lookahead_seconds=lookahead_seconds,
            repark=repark,
            repark_after_seconds=cfg.paused_repark_seconds,
            consumer_options=group_options(cfg),
        )

    # Planned actions wait on the delay topic; actions a sink deferred after transient CRM failures
    # wait on the retry topic (backoffs up to 15 min, so it reads further ahead).
    releasers = [
        make(cfg.topics.delay, "delay", cfg.delay_lookahead_seconds),
        make(cfg.topics.retry, "retry", RETRY_LOOKAHEAD_SECONDS),
    ]

    def on_settings_change(company_id: str) -> None:
        metrics.paused_tenants.set(sum(1 for c in rt.settings.companies() if c.paused))

    rt.settings.add_listener(on_settings_change)

    @app.timer(interval=1.0)
    async def held_gauge() -> None:
        metrics.held.set(sum(r.held for r in releasers))

    return releasers
