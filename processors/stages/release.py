"""The release stage: wires the `DelayReleaser`s (delay topic, retry topic) into the worker. Due
decisions come from the settings table (parked actions are re-decided every tick, so a resume
needs no signal); due actions go to their CRM's due topic; a disconnected company's are dropped
and counted; a record that cannot be released is dead-lettered with the reason.
"""

from __future__ import annotations

import logging

from processors.domain import errors
from processors.domain.deadletter import Source, dead_letter
from processors.domain.model import Crm
from processors.domain.release import Held, Release
from processors.domain.rules import DueDecision, decide_when_due
from processors.kafka import clients
from processors.kafka.producer import Ack
from processors.kafka.releaser import DelayReleaser
from processors.stages.common import StageContext, now_ms
from processors.state.ledger import due_key

log = logging.getLogger("crm_sync.release")

RETRY_LOOKAHEAD_SECONDS = 900.0
RELEASES = {DueDecision.DELIVER: Release.DELIVER, DueDecision.HOLD: Release.PARK, DueDecision.DROP: Release.DROP}


def make_releasers(ctx: StageContext) -> list[DelayReleaser]:
    cfg = ctx.config
    metrics = ctx.metrics

    def decide(company_id: str, crm: str) -> str:
        return RELEASES[decide_when_due(Crm(crm), ctx.settings.company(company_id))]

    async def emit(held: Held) -> Ack:
        metrics.released.labels(held.crm).inc()
        metrics.lateness.labels(held.crm).observe(max(0.0, (now_ms() - held.due_at) / 1000))
        return await ctx.send(cfg.topics.due(Crm(held.crm)), due_key(held.company_id), held.value, held.headers)

    async def repark(held: Held) -> Ack:
        metrics.reparked.labels(held.crm).inc()
        log.info("parked action moved to the retry topic", extra={"crm": held.crm, "action_id": held.action_id, "event_id": held.header("event_id")})
        return await ctx.send(cfg.topics.retry, held.company_id.encode(), held.value, held.headers)

    async def drop(held: Held) -> Ack:
        event_type = held.header("event_type") or "unknown"
        metrics.skipped.labels(held.crm, event_type, "integration_disabled").inc()
        log.info(
            "dropped at due time",
            extra={"reason": "integration_disabled", "crm": held.crm, "action_id": held.action_id, "event_id": held.header("event_id")},
        )
        return await ctx.history(
            company_id=held.company_id, crm=held.crm, event_type=event_type, outcome="skipped",
            reason="integration_disabled", event_id=held.header("event_id"), action_id=held.action_id,
        )

    def make(topic: str, group: str, lookahead_seconds: float) -> DelayReleaser:
        async def reject(partition: int, held: Held, reason: str) -> Ack:
            source = Source(topic, partition, held.offset, held.company_id.encode() or None, held.value)
            letter = dead_letter(
                stage="release", error_class=errors.INVALID_RECORD, message=f"cannot release: {reason}",
                source=source, now_ms=now_ms(), company_id=held.company_id or None, crm=held.crm or None,
            )
            return await ctx.dead_letter(letter)

        return DelayReleaser(
            topic=topic,
            consumer_config=clients.group_consumer(cfg, f"{cfg.app_id}-{group}"),
            decide=decide,
            emit=emit,
            drop=drop,
            reject=reject,
            lookahead_seconds=lookahead_seconds,
            repark=repark,
            repark_after_seconds=cfg.paused_repark_seconds,
        )

    # Planned actions wait on the delay topic; actions a sink deferred after transient CRM failures
    # wait on the retry topic (backoffs up to 15 min, so it reads further ahead).
    return [
        make(cfg.topics.delay, "delay", cfg.delay_lookahead_seconds),
        make(cfg.topics.retry, "retry", RETRY_LOOKAHEAD_SECONDS),
    ]
