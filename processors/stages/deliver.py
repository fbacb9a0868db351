"""The deliver stage, one consumer per CRM on its due topic: deduplicate, deliver per company, record.

Each batch (up to `sink_batch_size` due actions, or what arrived within the batch window):
1. decodes its actions (a record that does not decode is dead-lettered; the batch goes on) and
   drops those its ledger has an outcome for;
2. writes an **intent** to the ledger for every action it is about to deliver, and waits for the
   broker to have them. An action that is **doubtful** had an attempt that may have reached the
   CRM: its ledger entry is an intent without an outcome (a crash, a timeout), or a failure (an
   outcome that may have created something: a dead letter being retried), or it comes back from
   the retry topic (`attempt > 0`). It is reconciled against the CRM before anything is created
   (`processors.stages.reconcile`), so kill -9 at any moment never duplicates (SPEC §11);
3. groups the rest by company and delivers every company's group concurrently; a company's bug,
   slowness or failing CRM affects only its own records (deferred to the retry topic);
4. routes each outcome (`processors.domain.deliver.route`): ledger entry, retry with a new due
   time, dead letter, history. The batch's offsets are committed (`BatchConsumer`) only after
   every record it produced is acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Sequence

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from connectors.retry import RetryPolicy
from processors.domain import errors
from processors.domain.deadletter import dead_letter
from processors.domain.deliver import (
    DEAD_LETTER,
    DEFER,
    DEFERRED,
    DUPLICATE,
    GIVE_UP,
    LEDGER,
    Outcome,
    RetryRules,
    outcome_fields,
    route,
)
from processors.domain.model import Action, Crm, Origin
from processors.domain.records import action_from_record, action_headers, action_to_record
from processors.domain.planner import action_id as plan_action_id
from processors.kafka import clients
from processors.kafka.consumer import BatchConsumer
from processors.kafka.producer import Ack, Acks
from processors.stages.common import StageContext, now_ms, source_of
from processors.stages.deliverer import Deliverer
from processors.stages.reconcile import Claimant
from processors.state.ledger import Ledger

log = logging.getLogger("crm_sync.deliver")

DEFERRAL_POLICY_BASE, DEFERRAL_POLICY_CAP = 5.0, 900.0
INTENT = "intent:"
FAILED_ENTRY = "failed:"
Item = tuple[ConsumerRecord, Action]


def failed_entry(code: str | None, intent_ms: int) -> str:
    """A permanent failure's ledger entry; it keeps the intent, so a retry of the dead letter
    reconciles from when the failed attempt began."""
    return f"{FAILED_ENTRY}{code}@{intent_ms}"


def intent_of(value: str | None, action: Action) -> int | None:
    """When a doubtful action may first have reached the CRM, or None when it is not doubtful.

    An intent or failure entry says when (a failure written before failures kept it: 0, any
    time); without an entry, an action back from the retry topic may have been tried from its
    first due time on (its entry may sit in the partition its action id used to be keyed to)."""
    state = ledger_state(value)
    if state == "intent":
        assert value is not None
        return int(value[len(INTENT):] or 0)
    if state == "failed":
        assert value is not None
        _, at, stamp = value.rpartition("@")
        return int(stamp) if at and stamp.isdigit() else 0
    if state == "none" and action.attempt > 0:
        return action.give_up_clock
    return None


def ledger_state(value: str | None) -> str:
    """What a ledger entry says of its action: `none`, `intent` (reconcile first), `failed`
    (a permanent failure: a DLQ retry delivers it again) or `done` (created or skipped)."""
    if value is None:
        return "none"
    if value.startswith(INTENT):
        return "intent"
    if value.startswith(FAILED_ENTRY):
        return "failed"
    return "done"


def make_deliver(ctx: StageContext, deliverer: Deliverer) -> list[BatchConsumer]:
    cfg = ctx.config
    metrics = ctx.metrics
    deferral = RetryPolicy(base=DEFERRAL_POLICY_BASE, cap=DEFERRAL_POLICY_CAP, max_elapsed=None)
    rules = RetryRules(
        give_up_ms=int(cfg.sink_give_up_seconds * 1000), backoff=deferral.backoff, retry_after_cap=cfg.retry_after_cap_seconds
    )

    async def dead_letter_action(rec: ConsumerRecord, action: Action, outcome: Outcome) -> Ack:
        err = outcome.error
        return await ctx.dead_letter(
            dead_letter(
                stage="deliver",
                error_class=errors.error_class(err) if err is not None else errors.UNDELIVERABLE,
                error_code=err.code if err is not None else outcome.reason,
                message=err.message if err is not None else f"gave up after transient failures: {outcome.reason}",
                source=source_of(rec),
                now_ms=now_ms(),
                action=action,
                attempts=action.attempt + outcome.attempts,
                first_attempt_at=outcome.first_attempt_at,
                last_attempt_at=outcome.last_attempt_at,
            )
        )

    async def record(crm: Crm, ledger: Ledger, rec: ConsumerRecord, action: Action, outcome: Outcome, intent_ms: int) -> Acks:
        metrics.delivered.labels(crm.value, action.object_type.value, outcome.status).inc()
        log.info("delivery", extra={"event_id": action.event_id, "action_id": action.action_id, "crm": crm.value, **outcome_fields(outcome)})
        company = ctx.settings.company(action.company_id)
        decision = route(action, outcome, now_ms(), rules, company.contact_recheck_seconds if company is not None else ())
        acks: Acks = []
        if decision.kind == LEDGER:
            assert decision.ledger_value is not None
            if decision.history == "created" and decision.ledger_value:
                acks.append(await ledger.claim(rec.partition, action.company_id, decision.ledger_value, action.action_id))
            acks.append(await ledger.put(rec.partition, action.company_id, action.action_id, decision.ledger_value))
            if decision.history == "skipped":
                metrics.skipped.labels(crm.value, action.event_type.value, decision.reason or "").inc()
        elif decision.kind == DEFER:
            assert decision.retry is not None
            metrics.deferred.labels(crm.value, decision.history or decision.reason or "transient").inc()
            retried = decision.retry
            acks.append(
                await ctx.send(
                    cfg.retry_topic(retried.due_at - now_ms()), action.company_id.encode(), ctx.codec.encode("Action", action_to_record(retried)), action_headers(retried)
                )
            )
        elif decision.kind in (DEAD_LETTER, GIVE_UP):
            if decision.kind == DEAD_LETTER:
                code = outcome.error.code if outcome.error is not None else outcome.reason
                acks.append(await ledger.put(rec.partition, action.company_id, action.action_id, failed_entry(code, intent_ms)))
            acks.append(await dead_letter_action(rec, action, outcome))
        if decision.history is not None:
            acks.append(
                await ctx.history(
                    company_id=action.company_id, crm=crm.value, event_type=action.event_type.value, outcome=decision.history,
                    reason=decision.reason if decision.history != "created" else None,
                    event_id=action.event_id, action_id=action.action_id,
                    ref=str(decision.recheck) if decision.recheck is not None else None,
                )
            )
        return acks

    def siblings_claimed(ledger: Ledger, rec: ConsumerRecord, action: Action) -> dict[str, str]:
        """Objects recorded for the event's other actions on this CRM → those actions: the
        company- and meeting-type-level ToDos of one event may render alike. Entries written
        before claims existed have no claim entry; this lookup covers them."""
        claimed: dict[str, str] = {}
        for origin in Origin:
            other = plan_action_id(action.company_id, action.event_id, action.crm, origin)
            value = ledger.get(rec.partition, action.company_id, other) if other != action.action_id else None
            if ledger_state(value) == "done" and value and not value.startswith("skipped:"):
                claimed[value] = other
        return claimed

    def claimant(ledger: Ledger, company_id: str, items: list[Item]) -> Claimant:
        """Object id → the action whose ledger entry names it, in every partition this company's
        records came from (one, unless some were keyed by action id before the upgrade)."""
        partitions = sorted({rec.partition for rec, _ in items})
        legacy: dict[str, str] = {}
        for rec, action in items:
            legacy.update(siblings_claimed(ledger, rec, action))

        def owner(object_id: str) -> str | None:
            for partition in partitions:
                found = ledger.claimant(partition, company_id, object_id)
                if found is not None:
                    return found
            return legacy.get(object_id)

        return owner

    async def one_company(crm: Crm, ledger: Ledger, company_id: str, items: list[Item], reconcile: dict[str, int], intents: dict[str, int]) -> Acks:
        actions = [a for _, a in items]
        try:
            outcomes = await deliverer.deliver_batch(crm, company_id, actions, reconcile, claimant(ledger, company_id, items))
        except Exception:
            # A bug in one company's delivery: its actions try again later (reconciled), nobody else's.
            log.exception("delivery failed for one company; its actions are deferred", extra={"crm": crm.value, "company_id": company_id})
            outcomes = [Outcome(DEFERRED, reason="internal_error")] * len(actions)
        acks: Acks = []
        for (rec, action), outcome in zip(items, outcomes):
            acks.extend(await record(crm, ledger, rec, action, outcome, intents[action.action_id]))
        return acks

    async def deliver(crm: Crm, ledger: Ledger, records: list[ConsumerRecord]) -> Acks:
        acks: Acks = []
        groups: dict[str, list[Item]] = defaultdict(list)
        reconcile: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        for rec in records:
            try:
                action = action_from_record(ctx.codec.decode(rec.value or b"").value)
            except Exception as exc:
                letter = dead_letter(stage="deliver", error_class=errors.INVALID_RECORD, message=f"not an action: {exc}", source=source_of(rec), now_ms=now_ms())
                acks.append(await ctx.dead_letter(letter))
                continue
            key = (action.company_id, action.action_id)
            known = ledger.get(rec.partition, action.company_id, action.action_id)
            state = "done" if key in seen else ledger_state(known)
            if state == "done":
                metrics.delivered.labels(crm.value, action.object_type.value, DUPLICATE).inc()
                log.info("already delivered", extra={"event_id": action.event_id, "action_id": action.action_id, "ledger": known or "in this batch"})
                if known is not None and key not in seen:
                    # Its history record may not have reached the broker before a crash: again (counted once).
                    skipped = known.startswith("skipped:")
                    acks.append(
                        await ctx.history(
                            company_id=action.company_id, crm=crm.value, event_type=action.event_type.value,
                            outcome="skipped" if skipped else "created", reason=known[len("skipped:"):] if skipped else None,
                            event_id=action.event_id, action_id=action.action_id,
                        )
                    )
                continue
            doubtful_since = intent_of(known, action)
            if doubtful_since is not None:
                reconcile[action.action_id] = doubtful_since
            seen.add(key)
            groups[action.company_id].append((rec, action))
        started = now_ms()
        intents = {a.action_id: reconcile.get(a.action_id, started) for items in groups.values() for _, a in items}
        written = [
            await ledger.put(rec.partition, a.company_id, a.action_id, f"{INTENT}{intents[a.action_id]}")
            for items in groups.values()
            for rec, a in items
        ]
        await asyncio.gather(*written)
        results = await asyncio.gather(*(one_company(crm, ledger, c, items, reconcile, intents) for c, items in groups.items()))
        for company_acks in results:
            acks.extend(company_acks)
        return acks

    def make(crm: Crm) -> BatchConsumer:
        async def write(partition: int, key: bytes, value: bytes) -> Ack:
            return await ctx.send(cfg.topics.ledger(crm), key, value, partition=partition)

        ledger = Ledger(
            topic=cfg.topics.ledger(crm), write=write, reader_config=clients.librdkafka(cfg), keep_ms=int(cfg.ledger_keep_hours * 3600 * 1000),
            read_timeout=cfg.ledger_read_timeout_seconds,
        )

        async def handle(records: list[ConsumerRecord]) -> None:
            unread = sorted({r.partition for r in records if not ledger.ready(r.partition)})
            if unread:  # the consumer holds such partitions back; never deliver on a partial ledger
                raise RuntimeError(f"ledger partitions {unread} not read to their end in this assignment")
            await asyncio.gather(*await deliver(crm, ledger, records))

        async def assigned(partitions: Sequence[TopicPartition]) -> None:
            await ledger.hold(tp.partition for tp in partitions)

        return BatchConsumer(
            name=f"sink-{crm.value}",
            topics=[cfg.topics.due(crm)],
            consumer_config=clients.group_consumer(cfg, f"{cfg.app_id}-sink-{crm.value}"),
            handle=handle,
            on_assigned=assigned,
            max_records=cfg.sink_batch_size,
            batch_window_seconds=cfg.sink_batch_window_seconds,
            new_group_lookback_seconds=cfg.new_group_lookback_seconds,
            earlier_group_id=clients.earlier_group(cfg, f"{cfg.app_id}-sink-{crm.value}"),
        )

    return [make(crm) for crm in Crm]
