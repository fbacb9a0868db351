"""The sink stage, one consumer per CRM on its due topic: deduplicate, deliver per company, record.

Each batch (up to `sink_batch_size` due actions, or what arrived within the batch window) drops
the actions its ledger already knows, groups the rest by company and delivers every company's
group concurrently (`Deliverer.deliver_batch`). A company whose CRM is failing gets its actions
parked on the retry topic, so it never holds back another company's deliveries. The batch's
offsets are committed (`BatchConsumer`) only after every outcome it produced (ledger entry,
retry, dead letter) is acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import replace
from typing import Any, Awaitable, Sequence

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from processors.batch_consumer import BatchConsumer
from processors.channels import Acks, Channels, source_of
from processors.codec import DecodeError
from processors.deadletter import Source, dead_letter
from processors.ledger import Ledger
from processors.model import Action, Crm, action_from_record, action_headers, action_to_record
from processors.runtime import aiokafka_options, group_options, now_ms
from processors.sinks import CREATED, DEFERRED, DUPLICATE, FAILED, SKIPPED, Outcome, deferral_backoff, outcome_fields

log = logging.getLogger("crm_sync.sink")


def make_sinks(ch: Channels) -> list[BatchConsumer]:
    rt = ch.runtime
    cfg = rt.config
    metrics = rt.metrics

    async def defer(action: Action, outcome: Outcome, source: Source) -> Awaitable[Any]:
        """Park on the retry topic with a not-before time, or give up after `sink_give_up_seconds`."""
        now = now_ms()
        if now - action.due_at > cfg.sink_give_up_seconds * 1000:
            return await fail(action, outcome, source)
        backoff = outcome.retry_after or deferral_backoff(action.attempt + 1)
        retried = replace(action, attempt=action.attempt + 1, due_at=now + int(backoff * 1000))
        metrics.deferred.labels(action.crm.value, outcome.reason or "transient").inc()
        return await ch.send(
            cfg.topics.retry, action.company_id.encode(), rt.codec.encode("Action", action_to_record(retried)), action_headers(retried)
        )

    async def fail(action: Action, outcome: Outcome, source: Source) -> Awaitable[Any]:
        err = outcome.error
        rt.history.record(
            company_id=action.company_id, crm=action.crm.value, event_type=action.event_type.value, outcome=FAILED,
            reason=err.code if err else outcome.reason, at_ms=now_ms(), event_id=action.event_id, action_id=action.action_id,
        )
        return await ch.send_dead_letter(
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

    async def record(crm: Crm, ledger: Ledger, rec: ConsumerRecord, action: Action, outcome: Outcome) -> Awaitable[Any] | None:
        metrics.delivered.labels(crm.value, action.object_type.value, outcome.status).inc()
        if outcome.status in (CREATED, SKIPPED):
            rt.history.record(
                company_id=action.company_id, crm=crm.value, event_type=action.event_type.value, outcome=outcome.status,
                reason=outcome.reason, at_ms=now_ms(), event_id=action.event_id, action_id=action.action_id,
            )
        log.info("delivery", extra={"event_id": action.event_id, "action_id": action.action_id, "crm": crm.value, **outcome_fields(outcome)})
        if outcome.status in (CREATED, DUPLICATE):
            return await ledger.put(rec.partition, action.action_id, outcome.object_id or "")
        if outcome.status == SKIPPED:
            metrics.skipped.labels(crm.value, action.event_type.value, outcome.reason or "").inc()
            return await ledger.put(rec.partition, action.action_id, f"skipped:{outcome.reason}")
        if outcome.status == DEFERRED:
            return await defer(action, outcome, source_of(rec))
        if outcome.status == FAILED:
            return await fail(action, outcome, source_of(rec))
        return None

    async def deliver(crm: Crm, ledger: Ledger, records: list[ConsumerRecord]) -> Acks:
        acks: Acks = []
        groups: dict[str, list[tuple[ConsumerRecord, Action]]] = defaultdict(list)
        seen: set[str] = set()
        for rec in records:
            try:
                action = action_from_record(rt.codec.decode(rec.value or b"").value)
            except (DecodeError, KeyError, ValueError) as exc:
                acks.append(
                    await ch.send_dead_letter(
                        dead_letter(stage="deliver", error_class="DecodeError", message=str(exc), source=source_of(rec), now_ms=now_ms())
                    )
                )
                continue
            known = "in this batch" if action.action_id in seen else ledger.get(rec.partition, action.action_id)
            if known is not None:
                metrics.delivered.labels(crm.value, action.object_type.value, DUPLICATE).inc()
                log.info("already delivered", extra={"event_id": action.event_id, "action_id": action.action_id, "ledger": known})
                continue
            seen.add(action.action_id)
            groups[action.company_id].append((rec, action))

        async def one_company(company_id: str, items: list[tuple[ConsumerRecord, Action]]) -> None:
            outcomes = await rt.deliverer.deliver_batch(crm, company_id, [a for _, a in items])
            for (rec, action), outcome in zip(items, outcomes):
                ack = await record(crm, ledger, rec, action, outcome)
                if ack is not None:
                    acks.append(ack)

        await asyncio.gather(*(one_company(c, items) for c, items in groups.items()))
        return acks

    def make(crm: Crm) -> BatchConsumer:
        async def write(partition: int, key: bytes, value: bytes) -> Awaitable[Any]:
            return await ch.send(cfg.topics.ledger(crm), key, value, partition=partition)

        ledger = Ledger(
            topic=cfg.topics.ledger(crm),
            write=write,
            reader_options={"bootstrap_servers": cfg.bootstrap_servers, **aiokafka_options(cfg)},
            keep_ms=int(cfg.ledger_keep_hours * 3600 * 1000),
        )

        async def handle(records: list[ConsumerRecord]) -> None:
            try:
                acks = await deliver(crm, ledger, records)
            except Exception as exc:
                log.exception("sink batch failed")
                acks = [
                    await ch.send_dead_letter(
                        dead_letter(stage="deliver", error_class=type(exc).__name__, message=str(exc), source=source_of(rec), now_ms=now_ms())
                    )
                    for rec in records
                ]
            await asyncio.gather(*acks)

        async def assigned(partitions: Sequence[TopicPartition]) -> None:
            await ledger.hold(tp.partition for tp in partitions)

        return BatchConsumer(
            name=f"sink-{crm.value}",
            bootstrap_servers=cfg.bootstrap_servers,
            topics=[cfg.topics.due(crm)],
            group_id=f"{cfg.app_id}-sink-{crm.value}",
            handle=handle,
            on_assigned=assigned,
            max_records=cfg.sink_batch_size,
            batch_window_seconds=cfg.sink_batch_window_seconds,
            consumer_options=group_options(cfg),
        )

    return [make(crm) for crm in Crm]
