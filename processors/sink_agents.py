"""Agents on the per-CRM due topics: batch, deduplicate, deliver per company, record outcomes.

Each agent takes up to `sink_batch_size` due actions (or what arrived within the batch window),
drops the ones its ledger already knows, groups the rest by company and delivers every company's
group concurrently (`Deliverer.deliver_batch`). A company whose CRM is failing gets its actions
parked on the retry topic, so it never holds back another company's deliveries. Offsets are acked
only after every action of the batch has its outcome recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import defaultdict
from dataclasses import replace
from typing import Any, Iterator

import faust
from faust import streams

from processors.channels import Channels, source_of
from processors.codec import DecodeError
from processors.deadletter import Source, dead_letter
from processors.model import Action, Crm, action_from_record, action_headers, action_to_record
from processors.runtime import now_ms
from processors.sinks import CREATED, DEFERRED, DUPLICATE, FAILED, SKIPPED, Outcome, deferral_backoff, outcome_fields

log = logging.getLogger("crm_sync.sink")


@contextlib.contextmanager
def as_current(event: faust.EventT) -> Iterator[None]:
    """Faust writes a table's changelog to the partition of the *current* event; in a batch we say which."""
    token = streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        streams._current_event.reset(token)


def register_sinks(app: faust.App, ch: Channels) -> None:
    rt = ch.runtime
    cfg = rt.config
    metrics = rt.metrics

    async def defer(action: Action, outcome: Outcome, source: Source) -> None:
        """Park on the retry topic with a not-before time, or give up after `sink_give_up_seconds`."""
        now = now_ms()
        if now - action.due_at > cfg.sink_give_up_seconds * 1000:
            await fail(action, outcome, source)
            return
        backoff = outcome.retry_after or deferral_backoff(action.attempt + 1)
        retried = replace(action, attempt=action.attempt + 1, due_at=now + int(backoff * 1000))
        metrics.deferred.labels(action.crm.value, outcome.reason or "transient").inc()
        await ch.retry.send(
            key=action.company_id.encode(),
            value=rt.codec.encode("Action", action_to_record(retried)),
            headers=action_headers(retried),
        )

    async def fail(action: Action, outcome: Outcome, source: Source) -> None:
        err = outcome.error
        rt.history.record(
            company_id=action.company_id, crm=action.crm.value, event_type=action.event_type.value, outcome=FAILED,
            reason=err.code if err else outcome.reason, at_ms=now_ms(), event_id=action.event_id, action_id=action.action_id,
        )
        await ch.send_dead_letter(
            dead_letter(
                stage="deliver",
                error_class=type(err).__name__ if err else "Undeliverable",
                error_code=err.code if err else outcome.reason,
                message=err.message if err else f"gave up: {outcome.reason}",
                source=source,
                now_ms=now_ms(),
                action=action,
                attempts=action.attempt + outcome.attempts,
                first_attempt_at=outcome.first_attempt_at,
                last_attempt_at=outcome.last_attempt_at,
            )
        )

    async def record(crm: Crm, ledger: Any, event: faust.EventT, action: Action, outcome: Outcome) -> None:
        source = source_of(event)
        metrics.delivered.labels(crm.value, action.object_type.value, outcome.status).inc()
        if outcome.status in (CREATED, SKIPPED):
            rt.history.record(
                company_id=action.company_id, crm=crm.value, event_type=action.event_type.value, outcome=outcome.status,
                reason=outcome.reason, at_ms=now_ms(), event_id=action.event_id, action_id=action.action_id,
            )
        log.info("delivery", extra={"event_id": action.event_id, "action_id": action.action_id, "crm": crm.value, **outcome_fields(outcome)})
        if outcome.status in (CREATED, DUPLICATE):
            with as_current(event):
                ledger[action.action_id] = outcome.object_id or ""
        elif outcome.status == SKIPPED:
            metrics.skipped.labels(crm.value, action.event_type.value, outcome.reason or "").inc()
            with as_current(event):
                ledger[action.action_id] = f"skipped:{outcome.reason}"
        elif outcome.status == DEFERRED:
            await defer(action, outcome, source)
        elif outcome.status == FAILED:
            await fail(action, outcome, source)

    async def deliver(crm: Crm, ledger: Any, events: list[faust.EventT]) -> None:
        groups: dict[str, list[tuple[faust.EventT, Action]]] = defaultdict(list)
        seen: set[str] = set()
        for event in events:
            source = source_of(event)
            try:
                action = action_from_record(rt.codec.decode(source.value or b"").value)
            except (DecodeError, KeyError, ValueError) as exc:
                await ch.send_dead_letter(
                    dead_letter(stage="deliver", error_class="DecodeError", message=str(exc), source=source, now_ms=now_ms())
                )
                continue
            known = "in this batch" if action.action_id in seen else ledger.get(action.action_id)
            if known is not None:
                metrics.delivered.labels(crm.value, action.object_type.value, DUPLICATE).inc()
                log.info("already delivered", extra={"event_id": action.event_id, "action_id": action.action_id, "ledger": known})
                continue
            seen.add(action.action_id)
            groups[action.company_id].append((event, action))

        async def one_company(company_id: str, items: list[tuple[faust.EventT, Action]]) -> None:
            outcomes = await rt.deliverer.deliver_batch(crm, company_id, [a for _, a in items])
            for (event, action), outcome in zip(items, outcomes):
                await record(crm, ledger, event, action, outcome)

        await asyncio.gather(*(one_company(c, items) for c, items in groups.items()))

    def register(crm: Crm) -> None:
        ledger = app.Table(
            f"ledger-{crm.value}", default=None, partitions=cfg.topic_partitions, key_type=str, value_type=str
        )

        async def sink(stream: faust.StreamT) -> None:
            async for events in stream.take_events(cfg.sink_batch_size, within=cfg.sink_batch_window_seconds):
                try:
                    await deliver(crm, ledger, list(events))
                except asyncio.CancelledError:
                    # take_events acks the whole batch when its generator closes; a worker stopped
                    # mid-batch must not commit actions it has not delivered, so keep them referenced.
                    for event in events:
                        event.message.incref()
                    raise
                except Exception as exc:
                    log.exception("sink batch failed")
                    for event in events:
                        await ch.send_dead_letter(
                            dead_letter(
                                stage="deliver", error_class=type(exc).__name__, message=str(exc),
                                source=source_of(event), now_ms=now_ms(),
                            )
                        )

        app.agent(ch.due[crm], name=f"sink-{crm.value}", concurrency=1)(sink)

    for crm in Crm:
        register(crm)
