"""The ingest stage on the input topics (decode, validate, plan, hand over to the delay) and the
guard on the settings topic. Both are `BatchConsumer`s: a batch's offsets are committed only once
everything it produced (actions, dead letters, history) is acknowledged by the broker.

Per action, "planned" and "skipped" are DEBUG lines: at INFO they were 7% of ingest's CPU (issue 16),
and the metrics (`crm_sync_actions_planned_total`, `..._skipped_total`) count them at every level.

Nothing is planned before the settings table has read its topic to the end (`wait_for_settings`):
an event is never skipped as `no_settings` only because the table was not loaded yet.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiokafka.structs import ConsumerRecord

from processors.domain import errors
from processors.domain.deadletter import Source, dead_letter
from processors.domain.ingest import ingest
from processors.domain.records import action_headers, action_to_record
from processors.kafka import clients
from processors.kafka.consumer import BatchConsumer
from processors.kafka.producer import Acks, all_acked
from processors.stages.common import StageContext, now_ms, source_of, until_registry_answers
from processors.state.settings import parse_settings_record

log = logging.getLogger("crm_sync.ingest")


async def wait_for_settings(ctx: StageContext) -> None:
    while not ctx.settings.ready:
        await asyncio.sleep(0.2)


def make_ingest(ctx: StageContext) -> list[BatchConsumer]:
    cfg = ctx.config
    metrics = ctx.metrics
    delay_ms = int(cfg.delay_seconds * 1000)

    async def ingest_one(source: Source, acks: Acks) -> None:
        now = now_ms()
        result = ingest(ctx.codec.decode, source, ctx.settings, now, delay_ms)
        if result.dead_letter is not None:
            metrics.invalid.labels(source.topic, result.invalid_reason or "invalid").inc()
            acks.append(await ctx.dead_letter(result.dead_letter))
            return
        assert result.event is not None and result.plan is not None
        event = result.event
        event_type = event.event_type.value
        for skip in result.plan.skips:
            crm = skip.crm.value if skip.crm else "any"
            metrics.skipped.labels(crm, event_type, skip.reason).inc()
            acks.append(
                await ctx.history(
                    company_id=event.company_id, crm=crm, event_type=event_type, outcome="skipped",
                    reason=skip.reason, at_ms=now, event_id=event.event_id,
                )
            )
            log.debug("skipped", extra={"event_id": event.event_id, "reason": skip.reason})
        for action in result.plan.actions:
            metrics.planned.labels(action.crm.value, event_type).inc()
            value = ctx.codec.encode("Action", action_to_record(action))
            headers = action_headers(action)
            if action.due_at <= now:
                acks.append(await ctx.send(cfg.topics.due(action.crm), action.action_id.encode(), value, headers))
            else:
                acks.append(await ctx.send(cfg.topics.delay, action.company_id.encode(), value, headers))
            log.debug(
                "planned",
                extra={"event_id": action.event_id, "action_id": action.action_id, "crm": action.crm.value, "due_at": action.due_at},
            )

    async def ingest_batch(records: list[ConsumerRecord]) -> None:
        await wait_for_settings(ctx)
        acks: Acks = []
        for rec in records:
            source = source_of(rec)
            metrics.ingested.labels(source.topic).inc()
            try:
                await until_registry_answers(lambda: ingest_one(source, acks))
            except Exception as exc:
                log.exception("ingest failed", extra={"source_topic": source.topic, "source_offset": source.offset})
                letter = dead_letter(stage="plan", error_class=errors.error_class(exc), message=str(exc), source=source, now_ms=now_ms())
                acks.append(await ctx.dead_letter(letter))
        await all_acked(acks)

    async def check_settings(source: Source) -> None:
        parse_settings_record(ctx.codec, source.key, source.value)

    async def guard_batch(records: list[ConsumerRecord]) -> None:
        """Each malformed settings record is dead-lettered once (the settings table only ignores it)."""
        acks: Acks = []
        for rec in records:
            source = source_of(rec)
            try:
                await until_registry_answers(lambda: check_settings(source))
            except Exception as exc:
                metrics.settings_rejected.inc()
                letter = dead_letter(stage="settings", error_class=errors.error_class(exc), message=str(exc), source=source, now_ms=now_ms())
                acks.append(await ctx.dead_letter(letter))
        await asyncio.gather(*acks)

    def make(
        name: str, topics: list[str], handle: Callable[[list[ConsumerRecord]], Awaitable[None]], lookback: float | None
    ) -> BatchConsumer:
        return BatchConsumer(
            name=name,
            topics=topics,
            consumer_config=clients.group_consumer(cfg, f"{cfg.app_id}-{name}"),
            handle=handle,
            max_records=cfg.ingest_batch_size,
            new_group_lookback_seconds=lookback,
        )

    return [
        make("ingest", list(cfg.topics.inputs), ingest_batch, cfg.new_group_lookback_seconds),
        make("settings-guard", [cfg.topics.settings], guard_batch, None),
    ]
