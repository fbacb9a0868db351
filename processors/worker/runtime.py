"""The worker's long-lived parts, made once: codec, settings table, metrics, deliverer, and the
stage context the stages share. `processors.worker.app` supplies the producer (`processors.kafka.sender`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from aiokafka import TopicPartition

from connectors.credentials import CredentialStore
from connectors.retry import RetryPolicy
from processors.codec import Codec, registry_client
from processors.config import Config
from processors.domain.model import Crm
from processors.kafka import clients
from processors.kafka.consumer import StopSignal
from processors.kafka.producer import Send
from processors.metrics import Metrics
from processors.stages.common import StageContext
from processors.stages.deliverer import Deliverer
from processors.state.settings import SettingsStore

log = logging.getLogger("crm_sync")

RESTART_POLICY = RetryPolicy(base=1.0, cap=30.0, max_elapsed=None)


class Stage(Protocol):
    """What the app asks of every stage (`BatchConsumer`, `DelayReleaser`)."""

    name: str
    topics: tuple[str, ...]
    group_id: str
    stopping: StopSignal

    @property
    def running(self) -> bool:
        """Joined its group and its assignment settled (state read to its end): readiness."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    async def run(self) -> None: ...


class Readiness(Protocol):
    """A part the worker is not ready without (the ingest pool)."""

    @property
    def ready(self) -> bool: ...


@dataclass
class Runtime:
    """The worker's long-lived parts; `stages`, `context` and `ingest_pool` are attached by `build_app`."""

    config: Config
    codec: Codec
    settings: SettingsStore
    metrics: Metrics
    deliverer: Deliverer
    context: StageContext | None = None
    stages: list[Stage] = field(default_factory=list)
    ingest_pool: Readiness | None = None


def make_credentials(config: Config) -> CredentialStore:
    """The companies' credentials as the worker reads them (the CLI's `crm` and `preview` too)."""
    return CredentialStore(config.secrets_dir, allow_default=config.allow_default_credentials,
                           allowed_hosts=config.crm_allowed_hosts, token_dir=config.tokens_dir)


def make_codec(config: Config) -> Codec:
    """The worker's codec (and each ingest process's): with the registry client when one is configured."""
    registry = (
        registry_client(
            config.schema_registry_url,
            basic_auth_user_info=config.schema_registry_basic_auth_user_info,
            ssl_ca_location=config.schema_registry_ssl_ca_location,
        )
        if config.schema_registry_url
        else None
    )
    return Codec(registry)


def make_settings(config: Config, codec: Codec) -> SettingsStore:
    return SettingsStore(
        clients.librdkafka(config), config.topics.settings, codec, audit_topic=config.topics.audit,
        ready_timeout=config.settings_ready_timeout_seconds,
    )


def make_runtime(config: Config) -> Runtime:
    codec = make_codec(config)
    metrics = Metrics.create()
    settings = make_settings(config, codec)
    deliverer = Deliverer(
        make_credentials(config),
        config.ca_bundle,
        RetryPolicy(max_elapsed=config.sink_inline_retry_seconds, max_retry_after=config.retry_after_cap_seconds),
        metrics,
        rates={Crm.SALESFORCE: config.salesforce_rate_per_second, Crm.HUBSPOT: config.hubspot_rate_per_second},
        action_id_fields={Crm.SALESFORCE: config.salesforce_action_id_field, Crm.HUBSPOT: config.hubspot_action_id_property},
        threads_per_tenant=config.sink_concurrency,
        company_budget_seconds=config.sink_company_budget_seconds,
        quota_defer_ratio=config.quota_defer_ratio,
        quota_defer_seconds=config.quota_defer_seconds,
        session_timeout_s=clients.session_timeout_ms(config) / 1000,
    )
    return Runtime(config, codec, settings, metrics, deliverer)


def attach(rt: Runtime, send: Send, history_partitions: int) -> StageContext:
    rt.context = StageContext(rt.config, rt.codec, rt.settings, rt.metrics, send, history_partitions)
    return rt.context


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """A stage that dies would hold its partitions' records forever: restart it (offsets are committed)."""
    failures = 0
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            wait = RESTART_POLICY.backoff(failures)
            log.exception("stage failed; restarting", extra={"stage": name, "retry_in": round(wait, 2)})
            await asyncio.sleep(wait)
