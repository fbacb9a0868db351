"""`crm-sync worker`: create topics, start the settings table, run the Faust worker."""

from __future__ import annotations

import faust

from processors.worker.app import build_app
from processors.worker.logs import logging_config
from processors.worker.runtime import make_runtime
from processors.config import Config, ConfigError
from processors.kafka.topics import ensure_topics
from processors.codec import registry_problems


def run_worker(config: Config) -> None:
    if problems := config.http_problems() + config.retry_problems():
        raise ConfigError(problems)
    runtime = make_runtime(config)
    # A registry that cannot answer now is a configuration problem: say so in one line, before Kafka.
    if runtime.codec.registry is not None and config.schema_registry_url:
        if problems := registry_problems(runtime.codec.registry, config.schema_registry_url):
            raise ConfigError(problems)
    partitions = ensure_topics(config)
    (config.state_dir / config.app_id).mkdir(parents=True, exist_ok=True)
    runtime.settings.start()
    app = build_app(runtime, partitions[config.topics.history])
    worker = faust.Worker(
        app, loglevel=config.log_level, logging_config=logging_config(config.log_level), redirect_stdouts=False
    )
    # At WARNING and above Faust's terminal spinner sets the root logger to DEBUG (its handler keeps
    # the level), so every debug call built a record: 10% of ingest's CPU. No terminal to spin here.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        runtime.settings.stop()
