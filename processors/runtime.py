"""The worker's long-lived parts (codec, settings table, metrics, deliverer) and Kafka client options."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import faust
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.credentials import CredentialStore
from connectors.retry import RetryPolicy
from processors.batch_consumer import BatchConsumer
from processors.codec import Codec
from processors.config import Config
from processors.history import History
from processors.metrics import Metrics
from processors.model import Crm
from processors.settings_store import SettingsStore
from processors.sinks import Deliverer

log = logging.getLogger("crm_sync")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Runtime:
    """The worker's long-lived parts, made once and shared by the stages."""

    config: Config
    codec: Codec
    settings: SettingsStore
    metrics: Metrics
    deliverer: Deliverer
    history: History = field(init=False, repr=False)  # needs the Faust app: attached by build_app
    stages: list[BatchConsumer] = field(default_factory=list)  # attached by build_app


def make_runtime(config: Config) -> Runtime:
    registry = SchemaRegistryClient.new_client({"url": config.schema_registry_url}) if config.schema_registry_url else None
    codec = Codec(registry)
    metrics = Metrics.create()
    settings = SettingsStore(config.kafka_client_config(), config.topics.settings, codec)
    deliverer = Deliverer(
        CredentialStore(config.secrets_dir),
        config.ca_bundle,
        RetryPolicy(max_elapsed=config.sink_inline_retry_seconds),
        metrics,
        rates={Crm.SALESFORCE: config.salesforce_rate_per_second, Crm.HUBSPOT: config.hubspot_rate_per_second},
        action_id_fields={Crm.SALESFORCE: config.salesforce_action_id_field, Crm.HUBSPOT: config.hubspot_action_id_property},
        concurrency=config.sink_concurrency,
    )
    return Runtime(config, codec, settings, metrics, deliverer)


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """A stage that dies would hold its partitions' records forever: restart it (offsets are committed)."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stage failed; restarting in 1s", extra={"stage": name})
            await asyncio.sleep(1.0)


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


def group_options(config: Config) -> dict[str, Any]:
    """For the stages' group consumers: with a stable instance id (static membership) a restarted
    worker takes its partitions back at once instead of waiting for its old session to expire."""
    options = aiokafka_options(config)
    if config.group_instance_id:
        options["group_instance_id"] = config.group_instance_id
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
