"""The Faust app: the worker's runtime (lifecycle, producer, web views, timers). Wiring only;
every decision lives in `processors.domain`, every stage in `processors.stages`.

Flow: input topics → ingest stage (decode, validate, plan against the settings table) → delay
topic (or straight to a due topic when already overdue) → release stage (holds until due,
re-checks connection/pause) → per-CRM due topics → deliver stages (ledger, intents, deliver per
company, record) → CRM; anything that cannot go on goes to the dead-letter topic with the reason.

Every stage on the way of an action is an explicit-commit aiokafka consumer (`BatchConsumer`,
`DelayReleaser`), not a Faust agent: Faust's offset bookkeeping can commit past a record during a
rebalance (faust-streaming #221, #606; see `processors.kafka.consumer`). The stages send through
librdkafka (`processors.kafka.sender`): aiokafka's producer was a quarter of ingest's CPU (issue 16).
Faust is the one home of everything else: lifecycle, the HTTP endpoints and the timers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from processors.kafka import clients
from processors.kafka.sender import RdSender
from processors.stages.deliver import make_deliver
from processors.stages.ingest import make_ingest
from processors.stages.release import make_releasers
from processors.worker.ingest_pool import IngestPool
from processors.worker.lag import register_lag
from processors.worker.runtime import Runtime, attach, supervise
from processors.worker.views import register_views

log = logging.getLogger("crm_sync")

SHUTDOWN_DRAIN_SECONDS = 30.0
SETTINGS_WAIT_LOG_SECONDS = 30.0


def faust_credentials(rt: Runtime) -> Any:
    cfg = rt.config
    if cfg.security_protocol == "PLAINTEXT":
        return None
    context = clients.ssl_context(cfg)
    if cfg.sasl_mechanism:
        return faust.SASLCredentials(
            username=cfg.sasl_username, password=cfg.sasl_password, mechanism=cfg.sasl_mechanism, ssl_context=context
        )
    return faust.SSLCredentials(context)


def build_app(rt: Runtime, history_partitions: int) -> faust.App:
    cfg = rt.config
    app = faust.App(
        cfg.app_id,
        broker=[f"kafka://{host}" for host in cfg.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(rt),
        store="memory://",
        datadir=str(cfg.state_dir / cfg.app_id),
        autodiscover=False,
        topic_partitions=cfg.topic_partitions,
        topic_replication_factor=cfg.replication_factor,
        topic_disable_leader=True,
        web_enabled=True,
        web_port=cfg.metrics_port,
        web_bind=cfg.http_bind,
        web_in_thread=False,
        # Faust's own views show the app's tables and key routing to anyone on the port: the
        # worker serves its own views only (processors.worker.views).
        web_router_enabled=False,
        web_tables_enabled=False,
        broker_session_timeout=clients.session_timeout_ms(cfg) / 1000,
        broker_heartbeat_interval=clients.heartbeat_interval_ms(cfg) / 1000,
    )

    # No Faust agent or table consumes anything (the stages have their own consumers): the app
    # runs as Faust's "producer only" kind — web server, tasks and timers.
    app.producer_only = True

    # Batches every stage's sends (a stage awaits them per batch, not per record); its 5 ms linger
    # is far below the releaser's lateness budget.
    send = RdSender(clients.producer(cfg))
    ctx = attach(rt, send, history_partitions)
    releasers = make_releasers(ctx)
    pool = IngestPool(cfg, cfg.ingest_processes) if cfg.ingest_processes > 0 else None
    rt.ingest_pool = pool
    rt.stages = [*make_ingest(ctx, pool), *make_deliver(ctx, rt.deliverer), *releasers]

    @app.task
    async def run_stages() -> None:
        """Plans and releases need the settings: nothing starts before the table was read to its end."""
        loop = asyncio.get_running_loop()
        send.start(loop)
        if pool is not None:
            pool.start()
        await loop.run_in_executor(None, rt.deliverer.warn_retiring_logins)
        while not await loop.run_in_executor(None, rt.settings.wait_ready, SETTINGS_WAIT_LOG_SECONDS):
            log.warning("still waiting for the settings table: not ready, nothing is planned")
        await asyncio.gather(*(supervise(stage.name, stage.run) for stage in rt.stages))

    @app.on_before_shutdown.connect
    async def drain_stages(app: faust.App, **kwargs: object) -> None:
        """Let every stage finish its batch, commit and leave its group, then flush the producer."""
        stops = asyncio.gather(*(stage.stopping.stop() for stage in rt.stages))
        try:
            await asyncio.wait_for(stops, SHUTDOWN_DRAIN_SECONDS)
        except asyncio.TimeoutError:
            log.warning("stages still busy at shutdown; their batches will be handled again", extra={"waited_s": SHUTDOWN_DRAIN_SECONDS})
        if pool is not None:
            await pool.close()
        await send.close()

    def on_settings_change(company_id: str) -> None:
        rt.metrics.paused_tenants.set(sum(1 for c in rt.settings.companies() if c.paused))

    rt.settings.add_listener(on_settings_change)

    @app.timer(interval=1.0)
    async def gauges() -> None:
        rt.metrics.held.set(sum(r.held for r in releasers))
        rt.metrics.settings_ready.set(1 if rt.settings.ready else 0)

    if pool is not None:

        @app.timer(interval=1.0)
        async def heal_ingest_pool() -> None:
            pool.heal()

    register_lag(app, rt)
    register_views(app, rt)
    return app
