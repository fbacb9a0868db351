"""Agents on the per-CRM due topics: ledger check, delivery, outcome, dead letter."""

from __future__ import annotations

import logging
from typing import Any

import faust

from processors.channels import Channels, source_of
from processors.codec import DecodeError
from processors.deadletter import Source, dead_letter
from processors.model import Crm, action_from_record
from processors.runtime import now_ms
from processors.sinks import CREATED, FAILED, SKIPPED, outcome_fields

log = logging.getLogger("crm_sync.sink")


def register_sinks(app: faust.App, ch: Channels) -> None:
    rt = ch.runtime
    metrics = rt.metrics

    async def deliver_one(crm: Crm, ledger: Any, source: Source) -> None:
        try:
            action = action_from_record(rt.codec.decode(source.value or b"").value)
        except (DecodeError, KeyError, ValueError) as exc:
            await ch.send_dead_letter(
                dead_letter(stage="deliver", error_class="DecodeError", message=str(exc), source=source, now_ms=now_ms())
            )
            return
        context = {"event_id": action.event_id, "action_id": action.action_id, "crm": crm.value}
        if ledger.get(action.action_id) is not None:
            metrics.delivered.labels(crm.value, action.object_type.value, "duplicate").inc()
            log.info("already delivered", extra=context)
            return
        outcome = await rt.deliverer.deliver(action)
        metrics.delivered.labels(crm.value, action.object_type.value, outcome.status).inc()
        log.info("delivery", extra={**context, **outcome_fields(outcome)})
        if outcome.status == CREATED:
            ledger[action.action_id] = outcome.object_id or ""
        elif outcome.status == SKIPPED:
            metrics.skipped.labels(crm.value, action.event_type.value, outcome.reason or "").inc()
            ledger[action.action_id] = f"skipped:{outcome.reason}"
        elif outcome.status == FAILED and outcome.error is not None:
            err = outcome.error
            await ch.send_dead_letter(
                dead_letter(
                    stage="deliver",
                    error_class=type(err).__name__,
                    error_code=err.code,
                    message=err.message,
                    source=source,
                    now_ms=now_ms(),
                    action=action,
                    attempts=outcome.attempts,
                    first_attempt_at=outcome.first_attempt_at,
                    last_attempt_at=outcome.last_attempt_at,
                )
            )

    def register(crm: Crm) -> None:
        ledger = app.Table(
            f"ledger-{crm.value}", default=None, partitions=rt.config.topic_partitions, key_type=str, value_type=str
        )

        async def sink(stream: faust.StreamT) -> None:
            async for event in stream.events():
                source = source_of(event)
                try:
                    await deliver_one(crm, ledger, source)
                except Exception as exc:
                    log.exception("sink failed", extra={"source_topic": source.topic, "source_offset": source.offset})
                    await ch.send_dead_letter(
                        dead_letter(stage="deliver", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms())
                    )

        app.agent(ch.due[crm], name=f"sink-{crm.value}", concurrency=1)(sink)

    for crm in Crm:
        register(crm)
