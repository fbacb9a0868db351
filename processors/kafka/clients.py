"""The one place Kafka client settings are built from `Config`: librdkafka (confluent-kafka: admin,
CLI, readers), aiokafka (the explicit-commit stages) and the pieces Faust needs (its producer).

Security (SPEC §10 `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CA_LOCATION`) is derived
once here, so every client of the worker, the CLI and the tools connects the same way.
"""

from __future__ import annotations

import ssl
from typing import Any

from processors.config import Config

# One session for every group member of ours (stages and Faust): a dead worker's partitions move
# after this long; heartbeats at a third of it.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 3.0
MAX_POLL_INTERVAL_MS = 300_000


def librdkafka(config: Config) -> dict[str, Any]:
    """confluent-kafka settings shared by every librdkafka client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        # librdkafka's info lines (e.g. BGQUEUE on close) would break the CLI's one-line stderr.
        "log_level": 4,
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
