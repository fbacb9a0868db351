"""The release stage: wires the `DelayReleaser`s (the delay topic and the retry tiers) into the
worker. It is the single pause gate (SPEC §3): every action reaches a due topic through one of
these releasers (ingest sends an action already due at planning to the first retry tier, never
straight to a due topic; `dlq retry` sends actions to the retry topic too), so nothing is created
for a paused company by any path.

Due decisions come from the settings table (parked actions are re-decided every tick, so a resume
needs no signal); due actions go to their CRM's due topic; a disconnected company's are dropped
and counted; a record that cannot be released is dead-lettered with the reason. An action that
was parked goes on (released, or copied on by a repark) with its give-up clock moved past the
parked time, so the pause does not count against its retries.
"""

from __future__ import annotations

import logging

from processors.domain import errors
from processors.domain.deadletter import Source, dead_letter
from processors.domain.model import Crm
from processors.domain.records import action_from_record, action_to_record
from processors.domain.release import Held, Release, resume
from processors.domain.rules import DueDecision, decide_when_due
from processors.kafka import clients
from processors.kafka.producer import Ack
from processors.kafka.releaser import DelayReleaser
from processors.stages.common import StageContext, now_ms
from processors.state.ledger import due_key

log = logging.getLogger("crm_sync.release")

REPARK_SCAN_MAX_SECONDS = 60.0  # the releaser looks for long-parked actions at least this often
RELEASES = {DueDecision.DELIVER: Release.DELIVER, DueDecision.HOLD: Release.PARK, DueDecision.DROP: Release.DROP}


def make_releasers(ctx: StageContext) -> list[DelayReleaser]:
    cfg = ctx.config
    metrics = ctx.metrics

    def decide(company_id: str, crm: str) -> str:
        return RELEASES[decide_when_due(Crm(crm), ctx.settings.company(company_id))]

    def resumed_value(held: Held) -> bytes:
        """The value with the give-up clock moved past the parked time (as read if never parked;
        a value that does not decode goes on as it is: the sink dead-letters it)."""
        if not held.parked_at:
            return held.value
        try:
            action = action_from_record(ctx.codec.decode(held.value).value)
        except Exception:
            return held.value
        return ctx.codec.encode("Action", action_to_record(resume(action, held.parked_at, now_ms())))

    async def emit(held: Held) -> Ack:
        metrics.released.labels(held.crm).inc()
        metrics.lateness.labels(held.crm).observe(max(0.0, (now_ms() - held.late_from) / 1000))
        return await ctx.send(cfg.topics.due(Crm(held.crm)), due_key(held.company_id), resumed_value(held), held.headers)

    async def repark(held: Held) -> Ack:
        metrics.reparked.labels(held.crm).inc()
        log.info("parked action moved to the retry topic", extra={"crm": held.crm, "action_id": held.action_id, "event_id": held.header("event_id")})
        return await ctx.send(cfg.retry_topic(0), held.company_id.encode(), resumed_value(held), held.headers)

    async def forward(held: Held) -> Ack:
        """A wait beyond this tier's horizon moves on to the tier for it (the copy is due as before)."""
        topic = cfg.retry_topic(held.due_at - now_ms())
        log.debug("action moved to a longer retry tier", extra={"crm": held.crm, "action_id": held.action_id, "topic": topic})
        return await ctx.send(topic, held.company_id.encode(), held.value, held.headers)

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

    def make(topic: str, group: str, lookahead_seconds: float, lookback_seconds: float, horizon_seconds: float | None = None) -> DelayReleaser:
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
            earlier_group_id=clients.earlier_group(cfg, f"{cfg.app_id}-{group}"),
            decide=decide,
            emit=emit,
            drop=drop,
            reject=reject,
            lookahead_seconds=lookahead_seconds,
            repark=repark,
            repark_after_seconds=cfg.paused_repark_seconds,
            forward=forward if horizon_seconds is not None else None,
            horizon_seconds=horizon_seconds,
            new_group_lookback_seconds=lookback_seconds,
        )

    # Planned actions wait on the delay topic (in due order: a short lookahead is enough). Deferred
    # actions, re-checks, DLQ retries, reparks and actions overdue at planning wait on the retry
    # tier for their wait; each tier reads its whole horizon ahead and forwards longer waits.
    # A brand-new group (without CRM_SYNC_PREVIOUS_APP_ID) reads back what an earlier group may
    # not have released yet: the lookback, plus the longest an action waits on the topic before it
    # is released or, while paused, copied on (docs/consumer-state.md).
    parked = cfg.paused_repark_seconds + REPARK_SCAN_MAX_SECONDS
    tiers = cfg.retry_tiers()
    releasers = [make(cfg.topics.delay, "delay", cfg.delay_lookahead_seconds, cfg.new_group_lookback_seconds + cfg.delay_seconds + parked)]
    for n, tier in enumerate(tiers):
        last = n == len(tiers) - 1
        horizon = tier.max_wait_ms / 1000
        releasers.append(make(tier.topic, tier.group, horizon, cfg.new_group_lookback_seconds + horizon + parked, None if last else horizon))
    return releasers
