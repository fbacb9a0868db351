"""The Faust app: topics, tables, agents and web views. Wiring only; decisions live elsewhere.

Flow: input topics → `ingest` agent (decode, validate, plan against the settings table) → delay
topic (or straight to a due topic when already overdue) → `DelayReleaser` (holds until due,
re-checks connection/pause) → per-CRM due topics → sink agents (ledger check, deliver, record)
→ CRM; anything that cannot go on goes to the dead-letter topic with the reason.

Agents consume raw bytes and decode themselves (Faust's own decode path acks bad records
silently) and run with concurrency 1 (higher concurrency can commit past in-flight records).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import faust
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import CONTENT_TYPE_LATEST

from connectors.credentials import CredentialStore
from connectors.retry import RetryPolicy
from processors.codec import Codec, DecodeError, RegistryUnavailableError
from processors.config import Config
from processors.deadletter import Source, dead_letter
from processors.delay import DelayReleaser, Held, Release
from processors.ingest import ingest
from processors.metrics import Metrics
from processors.model import Action, Crm, action_from_record, action_to_record
from processors.rules import DueDecision, decide_when_due
from processors.settings_store import SettingsStore, parse_settings_record
from processors.sinks import CREATED, FAILED, SKIPPED, Deliverer, outcome_fields

log = logging.getLogger("crm_sync")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Runtime:
    """The worker's long-lived parts, made once and shared by the agents."""

    config: Config
    codec: Codec
    settings: SettingsStore
    metrics: Metrics
    deliverer: Deliverer


def make_runtime(config: Config) -> Runtime:
    registry = SchemaRegistryClient.new_client({"url": config.schema_registry_url}) if config.schema_registry_url else None
    codec = Codec(registry)
    metrics = Metrics.create()
    settings = SettingsStore(config.kafka_client_config(), config.topics.settings, codec)
    deliverer = Deliverer(
        CredentialStore(config.secrets_dir),
        config.ca_bundle,
        RetryPolicy(max_elapsed=config.sink_max_attempts_seconds),
        metrics,
    )
    return Runtime(config, codec, settings, metrics, deliverer)


def aiokafka_options(config: Config) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": config.security_protocol}
    if config.sasl_mechanism:
        options.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password,
        )
    if config.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(cafile=config.ssl_ca_location)
    return options


def faust_credentials(config: Config) -> Any:
    if config.security_protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if config.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context(cafile=config.ssl_ca_location)
    if config.sasl_mechanism:
        return faust.SASLCredentials(
            username=config.sasl_username,
            password=config.sasl_password,
            mechanism=config.sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


def build_app(rt: Runtime) -> faust.App:
    cfg = rt.config
    topics = cfg.topics
    app = faust.App(
        cfg.app_id,
        broker=[f"kafka://{host}" for host in cfg.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(cfg),
        store="memory://",
        datadir=str(cfg.state_dir / cfg.app_id),
        autodiscover=False,
        topic_partitions=cfg.topic_partitions,
        topic_replication_factor=cfg.replication_factor,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=True,
        web_port=cfg.metrics_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
    )

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    inputs = raw_topic(*topics.inputs)
    settings_topic = raw_topic(topics.settings)
    delay_topic = raw_topic(topics.delay)
    due_topics = {Crm.SALESFORCE: raw_topic(topics.due_salesforce), Crm.HUBSPOT: raw_topic(topics.due_hubspot)}
    dlq_topic = raw_topic(topics.dead_letter)
    ledgers = {
        crm: app.Table(f"ledger-{crm.value}", default=None, partitions=cfg.topic_partitions, key_type=str, value_type=str)
        for crm in Crm
    }
    metrics = rt.metrics
    delay_ms = int(cfg.delay_seconds * 1000)

    def action_headers(action: Action) -> list[tuple[str, bytes]]:
        return [
            ("due_at", str(action.due_at).encode()),
            ("crm", action.crm.value.encode()),
            ("company_id", action.company_id.encode()),
            ("action_id", action.action_id.encode()),
            ("event_id", action.event_id.encode()),
            ("event_type", action.event_type.value.encode()),
        ]

    async def send_dead_letter(letter: dict[str, Any], *, force: bool = False) -> None:
        metrics.dead_lettered.labels(letter["stage"], letter["error_class"]).inc()
        log.warning(
            "dead-lettered",
            extra={
                "stage": letter["stage"],
                "error_class": letter["error_class"],
                "error_code": letter["error_code"],
                "reason": letter["message"],
                "dead_letter_id": letter["dead_letter_id"],
                "action_id": letter["action"]["action_id"] if letter["action"] else None,
                "source_topic": letter["source_topic"],
                "source_offset": letter["source_offset"],
            },
        )
        key = (letter["company_id"] or "").encode()
        await dlq_topic.send(key=key, value=rt.codec.encode("DeadLetter", letter), force=force)

    async def until_registry_answers(step: Callable[[], Awaitable[None]]) -> None:
        """A registry outage is not the record's fault: wait and try the same record again."""
        delay = 0.5
        while True:
            try:
                return await step()
            except RegistryUnavailableError as exc:
                log.warning("schema registry unavailable; retrying", extra={"reason": str(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def source_of(event: faust.EventT) -> Source:
        msg = event.message
        return Source(msg.topic, msg.partition, msg.offset, msg.key, msg.value)

    @app.agent(inputs, concurrency=1)
    async def ingest_agent(stream: faust.StreamT) -> None:
        await asyncio.get_running_loop().run_in_executor(None, rt.settings.wait_ready, 120.0)
        async for event in stream.events():
            source = source_of(event)
            metrics.ingested.labels(source.topic).inc()
            try:
                await until_registry_answers(lambda: _ingest_one(source))
            except Exception as exc:
                log.exception("ingest failed", extra={"source_topic": source.topic, "source_offset": source.offset})
                await send_dead_letter(
                    dead_letter(stage="plan", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms())
                )

    async def _ingest_one(source: Source) -> None:
        now = now_ms()
        result = ingest(rt.codec, source, rt.settings, now, delay_ms)
        if result.dead_letter is not None:
            metrics.invalid.labels(source.topic, result.invalid_reason or "invalid").inc()
            await send_dead_letter(result.dead_letter)
            return
        assert result.event is not None and result.plan is not None
        event_type = result.event.event_type.value
        for skip in result.plan.skips:
            metrics.skipped.labels(skip.crm.value if skip.crm else "any", event_type, skip.reason).inc()
            log.info("skipped", extra={"event_id": result.event.event_id, "reason": skip.reason})
        for action in result.plan.actions:
            metrics.planned.labels(action.crm.value, event_type).inc()
            value = rt.codec.encode("Action", action_to_record(action))
            if action.due_at <= now:
                await due_topics[action.crm].send(key=action.action_id.encode(), value=value, headers=action_headers(action))
            else:
                await delay_topic.send(key=action.company_id.encode(), value=value, headers=action_headers(action))
            log.info(
                "planned",
                extra={"event_id": action.event_id, "action_id": action.action_id, "crm": action.crm.value, "due_at": action.due_at},
            )

    @app.agent(settings_topic, concurrency=1)
    async def settings_guard(stream: faust.StreamT) -> None:
        async for event in stream.events():
            source = source_of(event)
            try:
                await until_registry_answers(lambda: _parse_async(source))
            except Exception as exc:
                metrics.settings_rejected.inc()
                await send_dead_letter(
                    dead_letter(
                        stage="settings", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms()
                    )
                )

    async def _parse_async(source: Source) -> None:
        parse_settings_record(rt.codec, source.key, source.value)

    def make_sink(crm: Crm) -> None:
        ledger = ledgers[crm]

        async def sink(stream: faust.StreamT) -> None:
            async for event in stream.events():
                source = source_of(event)
                try:
                    await _deliver_one(crm, ledger, source)
                except Exception as exc:
                    log.exception("sink failed", extra={"source_topic": source.topic, "source_offset": source.offset})
                    await send_dead_letter(
                        dead_letter(
                            stage="deliver", error_class=type(exc).__name__, message=str(exc), source=source, now_ms=now_ms()
                        )
                    )

        sink.__name__ = f"sink_{crm.value}"
        app.agent(due_topics[crm], name=f"sink-{crm.value}", concurrency=1)(sink)

    async def _deliver_one(crm: Crm, ledger: Any, source: Source) -> None:
        try:
            action = action_from_record(rt.codec.decode(source.value or b"").value)
        except (DecodeError, KeyError, ValueError) as exc:
            await send_dead_letter(
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
            await send_dead_letter(
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

    for crm in Crm:
        make_sink(crm)

    releases = {DueDecision.DELIVER: Release.DELIVER, DueDecision.HOLD: Release.PARK, DueDecision.DROP: Release.DROP}

    def decide(company_id: str, crm: str) -> str:
        return releases[decide_when_due(Crm(crm), rt.settings.company(company_id))]

    async def emit(held: Held) -> Any:
        metrics.released.labels(held.crm).inc()
        metrics.lateness.labels(held.crm).observe(max(0.0, (now_ms() - held.due_at) / 1000))
        headers = [(name, value.encode()) for name, value in held.headers.items()]
        return await due_topics[Crm(held.crm)].send(
            key=held.action_id.encode(), value=held.value, headers=headers, force=True
        )

    def dropped(held: Held) -> None:
        metrics.skipped.labels(held.crm, held.headers.get("event_type", "unknown"), "integration_disabled").inc()
        log.info("dropped at due time", extra={"reason": "integration_disabled", "crm": held.crm, "due_at": held.due_at})

    releaser = DelayReleaser(
        bootstrap_servers=cfg.bootstrap_servers,
        topic=topics.delay,
        group_id=f"{cfg.app_id}-delay",
        decide=decide,
        emit=emit,
        on_dropped=dropped,
        lookahead_seconds=cfg.delay_lookahead_seconds,
        consumer_options=aiokafka_options(cfg),
    )

    def on_settings_change(company_id: str) -> None:
        company = rt.settings.company(company_id)
        if company is not None and not company.paused:
            releaser.company_resumed(company_id)
        metrics.paused_tenants.set(sum(1 for c in rt.settings.companies() if c.paused))

    rt.settings.add_listener(on_settings_change)

    @app.task
    async def run_releaser() -> None:
        await asyncio.get_running_loop().run_in_executor(None, rt.settings.wait_ready, 120.0)
        await releaser.run()

    @app.timer(interval=1.0)
    async def gauges() -> None:
        metrics.held.set(releaser.held)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    @app.page("/health/live")
    async def live_view(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/health/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ready = rt.settings.ready
        return web.json({"ready": ready, "settings_ready": rt.settings.ready}, status=200 if ready else 503)

    app.releaser = releaser  # type: ignore[attr-defined]
    return app
