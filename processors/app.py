"""The Faust app: wiring only; every decision lives in a module of its own.

Flow: input topics → `ingest` agent (decode, validate, plan against the settings table) → delay
topic (or straight to a due topic when already overdue) → `DelayReleaser` (holds until due,
re-checks connection/pause) → per-CRM due topics → sink agents (ledger check, deliver, record)
→ CRM; anything that cannot go on goes to the dead-letter topic with the reason.

Agents consume raw bytes and decode themselves (Faust's own decode path acks bad records
silently) and run with concurrency 1 (higher concurrency can commit past in-flight records).
"""

from __future__ import annotations

import faust

from processors.channels import Channels
from processors.history import company_timezone, register_history
from processors.ingest_agent import register_ingest
from processors.lag import register_lag
from processors.release_task import register_releaser
from processors.runtime import Runtime, faust_credentials
from processors.sink_agents import register_sinks
from processors.views import register_views


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
        web_enabled=True,
        web_port=cfg.metrics_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    channels = Channels.create(app, rt)
    rt.history = register_history(app, cfg, company_timezone(rt.settings))
    register_ingest(app, channels)
    register_sinks(app, channels)
    register_releaser(app, channels)
    register_lag(app, rt)
    register_views(app, rt)
    return app
