"""The Faust app: wiring only; every decision lives in a module of its own.

Flow: input topics → ingest stage (decode, validate, plan against the settings table) → delay
topic (or straight to a due topic when already overdue) → `DelayReleaser` (holds until due,
re-checks connection/pause) → per-CRM due topics → sink stages (ledger check, deliver, record)
→ CRM; anything that cannot go on goes to the dead-letter topic with the reason.

Every stage on the way of an action is an explicit-commit aiokafka consumer (`BatchConsumer`,
`DelayReleaser`), not a Faust agent: Faust's offset bookkeeping can commit past a record during a
rebalance (see `batch_consumer`). Faust runs the rest: the producer, the history table and its
agent, the web views and the timers.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from processors.channels import Channels
from processors.history import company_timezone, register_history
from processors.ingest_stage import make_ingest
from processors.lag import register_lag
from processors.release_task import register_releaser
from processors.runtime import Runtime, faust_credentials, supervise
from processors.sink_stage import make_sinks
from processors.views import register_views


log = logging.getLogger("crm_sync")

SHUTDOWN_DRAIN_SECONDS = 30.0


def build_app(rt: Runtime) -> faust.App:
    cfg = rt.config
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
        # Batches every stage's sends (a stage awaits them per batch, not per record); 5 ms is far
        # below the releaser's lateness budget.
        producer_linger=0.005,
        web_enabled=True,
        web_port=cfg.metrics_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    channels = Channels(app, rt)
    rt.history = register_history(app, cfg, company_timezone(rt.settings))
    rt.stages = [*make_ingest(channels), *make_sinks(channels)]
    releasers = register_releaser(app, channels)

    @app.task
    async def run_stages() -> None:
        """Plans and releases need the settings: start once the settings replica has caught up."""
        await asyncio.get_running_loop().run_in_executor(None, rt.settings.wait_ready, 120.0)
        await asyncio.gather(*(supervise(stage.name, stage.run) for stage in [*rt.stages, *releasers]))

    @app.on_before_shutdown.connect
    async def drain_stages(app: faust.App, **kwargs: object) -> None:
        """Before Faust stops its producer: let every stage finish its batch, commit and leave its group."""
        stops = asyncio.gather(*(stage.stopping.stop() for stage in [*rt.stages, *releasers]))
        try:
            await asyncio.wait_for(stops, SHUTDOWN_DRAIN_SECONDS)
        except asyncio.TimeoutError:
            log.warning("stages still busy at shutdown; their batches will be handled again", extra={"waited_s": SHUTDOWN_DRAIN_SECONDS})

    register_lag(app, rt)
    register_views(app, rt)
    return app
