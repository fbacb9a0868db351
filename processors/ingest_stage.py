"""The ingest stage on the input topics (decode, validate, plan, hand over to the delay) and the
guard on the settings topic. Both are `BatchConsumer`s: a batch's offsets are committed only once
everything it produced (actions, dead letters) is acknowledged by the broker."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiokafka.structs import ConsumerRecord

from processors.batch_consumer import BatchConsumer
from processors.channels import Acks, Channels, source_of, until_registry_answers
from processors.deadletter import Source, dead_letter
from processors.ingest import ingest
from processors.model import action_headers, action_to_record
from processors.runtime import group_options, now_ms
from processors.settings_store import parse_settings_record

log = logging.getLogger("crm_sync.ingest")


def make_ingest(ch: Channels) -> list[BatchConsumer]:
    rt = ch.runtime
    cfg = rt.config
    metrics = rt.metrics
    delay_ms = int(cfg.delay_seconds * 1000)

    async def ingest_one(source: Source, acks: Acks) -> None:
        now = now_ms()
        result = ingest(rt.codec, source, rt.settings, now, delay_ms)
        if result.dead_letter is not None:
            metrics.invalid.labels(source.topic, result.invalid_reason or "invalid").inc()
            acks.append(await ch.send_dead_letter(result.dead_letter))
            return
        assert result.event is not None and result.plan is not None
        event_type = result.event.event_type.value
        for skip in result.plan.skips:
            crm = skip.crm.value if skip.crm else "any"
            metrics.skipped.labels(crm, event_type, skip.reason).inc()
            rt.history.record(
                company_id=result.event.company_id, crm=crm, event_type=event_type, outcome="skipped",
                reason=skip.reason, at_ms=now, event_id=result.event.event_id,
            )
            log.info("skipped", extra={"event_id": result.event.event_id, "reason": skip.reason})
        for action in result.plan.actions:
            metrics.planned.labels(action.crm.value, event_type).inc()
            value = rt.codec.encode("Action", action_to_record(action))
            headers = action_headers(action)
            if action.due_at <= now:
                acks.append(await ch.send(cfg.topics.due(action.crm), action.action_id.encode(), value, headers))
            else:
                acks.append(await ch.send(cfg.topics.delay, action.company_id.encode(), value, headers))
            log.info(
                "planned",
                extra={"event_id": action.event_id, "action_id": action.action_id, "crm": action.crm.value, "due_at": action.due_at},
            )

    async def ingest_batch(records: list[ConsumerRecord]) -> None:
        acks: Acks = []
        for rec in records:
            source = source_of(rec)
            metrics.ingested.labels(source.topic).inc()
            try:
                await until_registry_answers(lambda: ingest_one(source, acks))
            except Exception as exc:
                log.exception("ingest failed", extra={"source_topic": source.topic, "source_offset": source.offset})
                acks.append(
                    await ch.send_dead_letter(
                        dead_letter(stage="plan", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms())
                    )
                )
        await asyncio.gather(*acks)

    async def check_settings(source: Source) -> None:
        parse_settings_record(rt.codec, source.key, source.value)

    async def guard_batch(records: list[ConsumerRecord]) -> None:
        """Each malformed settings record is dead-lettered once (the settings table only ignores it)."""
        acks: Acks = []
        for rec in records:
            source = source_of(rec)
            try:
                await until_registry_answers(lambda: check_settings(source))
            except Exception as exc:
                metrics.settings_rejected.inc()
                acks.append(
                    await ch.send_dead_letter(
                        dead_letter(stage="settings", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms())
                    )
                )
        await asyncio.gather(*acks)

    def make(name: str, topics: list[str], handle: Callable[[list[ConsumerRecord]], Awaitable[None]]) -> BatchConsumer:
        return BatchConsumer(
            name=name,
            bootstrap_servers=cfg.bootstrap_servers,
            topics=topics,
            group_id=f"{cfg.app_id}-{name}",
            handle=handle,
            max_records=cfg.ingest_batch_size,
            consumer_options=group_options(cfg),
        )

    return [
        make("ingest", list(cfg.topics.inputs), ingest_batch),
        make("settings-guard", [cfg.topics.settings], guard_batch),
    ]
