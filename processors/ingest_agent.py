"""Agents on the input and settings topics: decode, validate, plan, hand over to the delay."""

from __future__ import annotations

import asyncio
import logging

import faust

from processors.channels import Channels, source_of, until_registry_answers
from processors.deadletter import Source, dead_letter
from processors.ingest import ingest
from processors.model import action_headers, action_to_record
from processors.runtime import now_ms
from processors.settings_store import parse_settings_record

log = logging.getLogger("crm_sync.ingest")


def register_ingest(app: faust.App, ch: Channels) -> None:
    rt = ch.runtime
    metrics = rt.metrics
    delay_ms = int(rt.config.delay_seconds * 1000)

    async def ingest_one(source: Source) -> None:
        now = now_ms()
        result = ingest(rt.codec, source, rt.settings, now, delay_ms)
        if result.dead_letter is not None:
            metrics.invalid.labels(source.topic, result.invalid_reason or "invalid").inc()
            await ch.send_dead_letter(result.dead_letter)
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
            if action.due_at <= now:
                await ch.due[action.crm].send(key=action.action_id.encode(), value=value, headers=action_headers(action))
            else:
                await ch.delay.send(key=action.company_id.encode(), value=value, headers=action_headers(action))
            log.info(
                "planned",
                extra={"event_id": action.event_id, "action_id": action.action_id, "crm": action.crm.value, "due_at": action.due_at},
            )

    @app.agent(ch.inputs, name="ingest", concurrency=1)
    async def ingest_agent(stream: faust.StreamT) -> None:
        await asyncio.get_running_loop().run_in_executor(None, rt.settings.wait_ready, 120.0)
        async for event in stream.events():
            source = source_of(event)
            metrics.ingested.labels(source.topic).inc()
            try:
                await until_registry_answers(lambda: ingest_one(source))
            except Exception as exc:
                log.exception("ingest failed", extra={"source_topic": source.topic, "source_offset": source.offset})
                await ch.send_dead_letter(
                    dead_letter(stage="plan", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms())
                )

    async def check_settings(source: Source) -> None:
        parse_settings_record(rt.codec, source.key, source.value)

    @app.agent(ch.settings, name="settings-guard", concurrency=1)
    async def settings_guard(stream: faust.StreamT) -> None:
        """Each malformed settings record is dead-lettered once (the settings table only ignores it)."""
        async for event in stream.events():
            source = source_of(event)
            try:
                await until_registry_answers(lambda: check_settings(source))
            except Exception as exc:
                metrics.settings_rejected.inc()
                await ch.send_dead_letter(
                    dead_letter(stage="settings", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms())
                )
