"""The one place Kafka client settings are built from `Config`: librdkafka (confluent-kafka: the
stages' producer, admin, CLI, readers), aiokafka (the explicit-commit stages' consumers) and the
pieces Faust needs.

Security (SPEC §10 `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CA_LOCATION`) is derived
once here, so every client of the worker, the CLI and the tools connects the same way.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from processors.config import Config

# One session for every group member of ours (stages and Faust): a dead worker's partitions move
# after this long; heartbeats at a third of it.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 3.0
MAX_POLL_INTERVAL_MS = 300_000
LIBRDKAFKA_LOG = logging.getLogger("crm_sync.librdkafka")


class _TransientNotices(logging.Filter):
    """librdkafka logs some conditions it retries by itself at warning level: a transaction
    coordinator still loading after a broker start ("Coordinator load in progress: retrying") is
    not worth a line on every start. Anything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "load in progress: retrying" not in record.getMessage()


LIBRDKAFKA_LOG.addFilter(_TransientNotices())


def librdkafka(config: Config) -> dict[str, Any]:
    """confluent-kafka settings shared by every librdkafka client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        # librdkafka's info lines (e.g. BGQUEUE on close) would break the CLI's one-line stderr;
        # what it still logs goes through Python logging (the worker's JSON lines; the CLI drops it).
        "log_level": 4,
        "logger": LIBRDKAFKA_LOG,
    }
    if config.sasl_mechanism:
        conf["sasl.mechanism"] = config.sasl_mechanism
    if config.sasl_username:
        conf["sasl.username"] = config.sasl_username
    if config.sasl_password:
        conf["sasl.password"] = config.sasl_password
    if config.ssl_ca_location:
        conf["ssl.ca.location"] = config.ssl_ca_location
    return conf


def producer(config: Config) -> dict[str, Any]:
    """The stages' librdkafka producer (`processors.kafka.sender`): every record acknowledged by all
    in-sync replicas, no duplicates from its own retries, keys partitioned as the Java clients and
    aiokafka do (murmur2), so the delay and ledger topics keep their companies' partitions."""
    return dict(
        librdkafka(config),
        **{"acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 5},
    )


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the aiokafka and Faust clients (None without TLS)."""
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(cafile=config.ssl_ca_location)


def aiokafka(config: Config) -> dict[str, Any]:
    """aiokafka settings shared by every aiokafka client (bootstrap and security)."""
    options: dict[str, Any] = {"bootstrap_servers": config.bootstrap_servers, "security_protocol": config.security_protocol}
    if config.sasl_mechanism:
        options.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password,
        )
    context = ssl_context(config)
    if context is not None:
        options["ssl_context"] = context
    return options


def group_consumer(config: Config, group_id: str) -> dict[str, Any]:
    """An explicit-commit stage's consumer: no auto-commit, committed reads only, one session length.

    With a stable instance id (static membership) a restarted worker takes its partitions back at
    once instead of waiting for its old session to expire.
    """
    options = dict(
        aiokafka(config),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
    )
    if config.group_instance_id:
        options["group_instance_id"] = config.group_instance_id
    return options


def earlier_group(config: Config, group_id: str) -> str | None:
    """The same stage's group under `CRM_SYNC_PREVIOUS_APP_ID` (None without one): where a
    brand-new group of this app id starts (`processors.kafka.consumer.start_new_partitions`)."""
    prefix = f"{config.app_id}-"
    if not config.previous_app_id or not group_id.startswith(prefix):
        return None
    return f"{config.previous_app_id}-{group_id[len(prefix):]}"


_REFUSALS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "no access to the topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "no access to the consumer group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "no access to the transactional id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "no access to the cluster",
    KafkaError.SASL_AUTHENTICATION_FAILED: "authentication failed",
    KafkaError._AUTHENTICATION: "authentication failed",
}


class BrokerRefused(Exception):
    """The broker refused this principal; `str()` is the one line the CLI and the worker print."""


def refusal(config: Config, exc: BaseException) -> BrokerRefused | None:
    """A BrokerRefused naming the principal when `exc` is the broker refusing it, else None."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) else None
    if error is None or error.code() not in _REFUSALS:
        return None
    who = f"User:{config.sasl_username}" if config.sasl_username else "this client"
    return BrokerRefused(f"the broker refused {who}: {_REFUSALS[error.code()]} ({error.name()}: {error.str()})")


def check_credentials(config: Config, timeout: float = 15.0) -> None:
    """Fails fast (BrokerRefused) on wrong SASL credentials, instead of every client retrying them.

    librdkafka reports a failed authentication only through its error callback, while its calls
    keep waiting for a broker to answer; so this asks for metadata and serves that callback.
    """
    if not config.security_protocol.startswith("SASL"):
        return
    failures: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            failures.append(error)

    admin = AdminClient({**librdkafka(config), "error_cb": on_error})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=0.5)
            return
        except KafkaException as exc:
            admin.poll(0.1)  # serves the error callback
            if failures or time.monotonic() > deadline:
                raise refusal(config, KafkaException(failures[0])) if failures else exc from None
