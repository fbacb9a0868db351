"""The ingest stage on the input topics (decode, validate, plan, hand over to the delay) and the
guard on the settings topic. Both are `BatchConsumer`s: a batch's offsets are committed only once
everything it produced (actions, dead letters, history) is acknowledged by the broker.

Per action, "planned" and "skipped" are DEBUG lines: at INFO they were 7% of ingest's CPU (issue 16),
and the metrics (`crm_sync_actions_planned_total`, `..._skipped_total`) count them at every level.

The CPU work of a record (decode → validate → plan → render → encode: `prepare`) runs in the
worker's process, or in `CRM_SYNC_INGEST_PROCESSES` ingest processes (`processors.worker.ingest_pool`);
the stage itself (consume, send, await the acks, commit) stays here either way, so the commit rule
does not depend on where the records were prepared.

Nothing is planned before the settings table has read its topic to the end (`wait_for_settings`):
an event is never skipped as `no_settings` only because the table was not loaded yet.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Awaitable, Callable, NamedTuple, Protocol, Sequence

from aiokafka.structs import ConsumerRecord

from processors.codec import Codec, RegistryUnavailableError
from processors.domain import errors
from processors.domain.deadletter import Source, dead_letter
from processors.domain.ingest import ingest
from processors.domain.model import Crm
from processors.domain.records import action_to_record, headers_of
from processors.domain.rules import SettingsView
from processors.kafka import clients
from processors.kafka.consumer import BatchConsumer
from processors.kafka.producer import Acks, all_acked
from processors.stages.common import StageContext, now_ms, source_of, until_registry_answers
from processors.state.ledger import due_key
from processors.state.settings import parse_settings_record

log = logging.getLogger("crm_sync.ingest")


async def wait_for_settings(ctx: StageContext) -> None:
    while not ctx.settings.ready:
        await asyncio.sleep(0.2)


class PlannedAction(NamedTuple):
    """One action, encoded, with where it goes: what the stage needs to send it.

    Tuples of plain values, because they cross from an ingest process by pickle: dataclasses, enums
    and header lists cost more to pickle than the planning itself (issue 16).
    """

    crm: str
    action_id: str
    company_id: str
    event_id: str
    due_at: int
    value: bytes


class Prepared(NamedTuple):
    """One input record, prepared: its dead letter, or its skips and encoded actions."""

    now_ms: int
    letter: dict[str, Any] | None = None
    invalid_reason: str | None = None  # None beside a letter: planning failed, the record was valid
    company_id: str = ""
    event_id: str = ""
    event_type: str = ""
    skips: tuple[tuple[str, str], ...] = ()  # (crm or "any", reason)
    actions: tuple[PlannedAction, ...] = ()


def prepare(
    codec: Codec, settings: SettingsView, sources: Sequence[Source], delay_ms: int
) -> tuple[list[Prepared], str | None]:
    """decode → validate → plan → render → encode, for records in order; no I/O but the codec's registry.

    Stops at the first record the schema registry cannot answer for, returning what was prepared
    before it and the reason: a registry outage is not the record's fault, so the caller waits and
    starts again from that record. Runs in the worker's process or in an ingest process.
    """
    out: list[Prepared] = []
    for source in sources:
        now = now_ms()
        try:
            out.append(_prepare_one(codec, settings, source, now, delay_ms))
        except RegistryUnavailableError as exc:
            return out, str(exc)
        except Exception as exc:
            out.append(Prepared(now, letter=failed(source, exc, now)))
    return out, None


def failed(source: Source, exc: Exception, now: int) -> dict[str, Any]:
    """The dead letter of a valid record that could not be planned or sent (logged with its trace)."""
    log.exception("ingest failed", extra={"source_topic": source.topic, "source_offset": source.offset})
    return dead_letter(stage="plan", error_class=errors.error_class(exc), message=str(exc), source=source, now_ms=now)


def _prepare_one(codec: Codec, settings: SettingsView, source: Source, now: int, delay_ms: int) -> Prepared:
    result = ingest(codec.decode, source, settings, now, delay_ms)
    if result.dead_letter is not None:
        return Prepared(now, letter=result.dead_letter, invalid_reason=result.invalid_reason or "invalid")
    assert result.event is not None and result.plan is not None
    event = result.event
    actions = tuple(
        PlannedAction(
            action.crm.value, action.action_id, action.company_id, action.event_id, action.due_at,
            codec.encode("Action", action_to_record(action)),
        )
        for action in result.plan.actions
    )
    skips = tuple((skip.crm.value if skip.crm else "any", skip.reason) for skip in result.plan.skips)
    return Prepared(now, company_id=event.company_id, event_id=event.event_id, event_type=event.event_type.value,
                    skips=skips, actions=actions)


Chunk = tuple[Sequence[Source], "asyncio.Future[list[Prepared]]"]


class Preparer(Protocol):
    """Runs `prepare` over a batch's records, here or in other processes; same result either way.

    Returns the batch cut into consecutive chunks, each already under way: the stage sends one
    chunk's records while the next ones are still being prepared.
    """

    def __call__(self, sources: Sequence[Source]) -> list[Chunk]: ...


async def until_prepared(run: Callable[[Sequence[Source]], Awaitable[tuple[list[Prepared], str | None]]],
                         sources: Sequence[Source]) -> list[Prepared]:
    """`prepare` to the end of `sources`, waiting out a schema registry that does not answer."""
    done: list[Prepared] = []

    async def step() -> None:
        prepared, unavailable = await run(sources[len(done):])
        done.extend(prepared)
        if unavailable is not None:
            raise RegistryUnavailableError(unavailable, code="registry_unavailable")

    await until_registry_answers(step)
    return done


def in_process(ctx: StageContext) -> Preparer:
    delay_ms = int(ctx.config.delay_seconds * 1000)

    async def run(sources: Sequence[Source]) -> tuple[list[Prepared], str | None]:
        return prepare(ctx.codec, ctx.settings, sources, delay_ms)

    def preparer(sources: Sequence[Source]) -> list[Chunk]:
        return [(sources, asyncio.ensure_future(until_prepared(run, sources)))]

    return preparer


def _abandon(futures: list["asyncio.Future[list[Prepared]]"]) -> None:
    """A batch that failed half-way leaves its later chunks: stop them, and read their failures
    (the batch's own failure is what the supervisor logs)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def make_ingest(ctx: StageContext, preparer: Preparer | None = None) -> list[BatchConsumer]:
    """`preparer` is where the CPU work happens (`processors.worker.ingest_pool`); by default here."""
    cfg = ctx.config
    metrics = ctx.metrics
    prepared_by = preparer or in_process(ctx)

    async def emit(source: Source, done: Prepared, acks: Acks, planned: collections.Counter[tuple[str, str]]) -> None:
        if done.letter is not None:
            if done.invalid_reason is not None:
                metrics.invalid.labels(source.topic, done.invalid_reason).inc()
            acks.append(await ctx.dead_letter(done.letter))
            return
        for crm, reason in done.skips:
            metrics.skipped.labels(crm, done.event_type, reason).inc()
            acks.append(
                await ctx.history(
                    company_id=done.company_id, crm=crm, event_type=done.event_type, outcome="skipped",
                    reason=reason, at_ms=done.now_ms, event_id=done.event_id,
                )
            )
            log.debug("skipped", extra={"event_id": done.event_id, "reason": reason})
        for action in done.actions:
            planned[action.crm, done.event_type] += 1
            headers = headers_of(action.due_at, action.crm, action.company_id, action.action_id, action.event_id, done.event_type)
            if action.due_at <= done.now_ms:
                acks.append(await ctx.send(cfg.topics.due(Crm(action.crm)), due_key(action.company_id), action.value, headers))
            else:
                acks.append(await ctx.send(cfg.topics.delay, action.company_id.encode(), action.value, headers))
            log.debug(
                "planned",
                extra={"event_id": action.event_id, "action_id": action.action_id, "crm": action.crm, "due_at": action.due_at},
            )

    async def ingest_batch(records: list[ConsumerRecord]) -> None:
        await wait_for_settings(ctx)
        sources = [source_of(rec) for rec in records]
        # Counted per batch: a labelled counter costs a lookup and a lock per increment.
        for topic, count in collections.Counter(source.topic for source in sources).items():
            metrics.ingested.labels(topic).inc(count)
        acks: Acks = []
        planned: collections.Counter[tuple[str, str]] = collections.Counter()
        chunks = prepared_by(sources)
        try:
            for chunk, prepared in chunks:
                for source, done in zip(chunk, await prepared):
                    try:
                        await emit(source, done, acks, planned)
                    except Exception as exc:
                        acks.append(await ctx.dead_letter(failed(source, exc, now_ms())))
        finally:
            _abandon([prepared for _, prepared in chunks])
        for (crm, event_type), count in planned.items():
            metrics.planned.labels(crm, event_type).inc(count)
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
