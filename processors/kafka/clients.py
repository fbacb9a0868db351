"""The one place Kafka client settings are built from `Config`: librdkafka (confluent-kafka: the
stages' producer, admin, CLI, readers), aiokafka (the explicit-commit stages' consumers) and the
pieces Faust needs.

Security (SPEC §10 `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CA_LOCATION`) is derived
once here, so every client of the worker, the CLI and the tools connects the same way. The
passthrough `CRM_SYNC_KAFKA_<KEY>` (docs/kafka-clients.md) goes to every librdkafka client as is,
and to the aiokafka consumers through the few keys they know; `check_options` refuses at start what
cannot apply. Passthrough values may be secrets: no message here ever shows one.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from processors.config import Config, ConfigError

# One session for every group member of ours (stages and Faust), unless
# CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS says otherwise: a dead worker's partitions move after this long;
# heartbeats at most every 3 s and at least three times a session.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 3.0
MAX_POLL_INTERVAL_MS = 300_000
LIBRDKAFKA_LOG = logging.getLogger("crm_sync.librdkafka")


class _TransientNotices(logging.Filter):
    """librdkafka logs some conditions it retries by itself at warning level: a transaction
    coordinator still loading after a broker start ("Coordinator load in progress: retrying") is
    not worth a line on every start. Anything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # One passthrough feeds producers and consumers alike: a consumer key on a producer is expected.
        return "load in progress: retrying" not in message and "property and will be ignored by this" not in message


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
    conf.update({key: value for _, key, value in config.kafka_options})
    return conf


# Passthrough keys that have their own variable (one place for each setting) ...
_OWN_VARIABLE = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "KAFKA_BOOTSTRAP_SERVERS",
    "security.protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "KAFKA_SASL_MECHANISM",
    "sasl.mechanisms": "KAFKA_SASL_MECHANISM",
    "sasl.username": "KAFKA_SASL_USERNAME",
    "sasl.password": "KAFKA_SASL_PASSWORD",
    "ssl.ca.location": "KAFKA_SSL_CA_LOCATION",
    "group.instance.id": "CRM_SYNC_GROUP_INSTANCE_ID",
}
# ... and keys crm-sync sets per client because its guarantees rest on them.
_OWN_SETTING = frozenset({
    "group.id", "enable.auto.commit", "enable.auto.offset.store", "isolation.level", "auto.offset.reset",
    "enable.idempotence", "acks", "request.required.acks", "transactional.id", "partitioner",
})
# What the aiokafka consumers (the stages) can take, as their keyword ...
_AIOKAFKA_INT = {
    "session.timeout.ms": "session_timeout_ms",
    "heartbeat.interval.ms": "heartbeat_interval_ms",
    "max.poll.interval.ms": "max_poll_interval_ms",
    "request.timeout.ms": "request_timeout_ms",
    "metadata.max.age.ms": "metadata_max_age_ms",
    "retry.backoff.ms": "retry_backoff_ms",
}
_AIOKAFKA_STR = {"client.id": "client_id", "client.rack": "client_rack"}
# ... through the TLS context (client certificate, mTLS) ...
_AIOKAFKA_TLS = frozenset({"ssl.certificate.location", "ssl.key.location", "ssl.key.password"})
# ... or not at all because only producers use them.
_PRODUCER_ONLY = frozenset({
    "compression.type", "compression.codec", "compression.level", "linger.ms", "queue.buffering.max.ms",
    "queue.buffering.max.messages", "queue.buffering.max.kbytes", "batch.size", "batch.num.messages",
    "message.timeout.ms", "delivery.timeout.ms", "retries", "message.send.max.retries", "sticky.partitioning.linger.ms",
})
_SILENT = logging.getLogger("crm_sync.librdkafka.check")
_SILENT.propagate = False
_SILENT.addHandler(logging.NullHandler())


def check_options(config: Config, *, worker: bool) -> None:
    """ConfigError naming each passthrough variable that cannot apply, values never shown: keys with
    a variable of their own or that crm-sync sets itself, then librdkafka's own check (a throwaway
    producer without a bootstrap server, so it connects nowhere), then, for the worker, what its
    aiokafka consumers cannot take."""
    problems: list[str] = []
    for var, key, value in config.kafka_options:
        if key in _OWN_VARIABLE:
            problems.append(f"{var}: expected a key without a variable of its own, got {key} (set {_OWN_VARIABLE[key]})")
        elif key in _OWN_SETTING:
            problems.append(f"{var}: expected a key crm-sync does not set itself, got {key}")
        elif key in _AIOKAFKA_INT:
            if not value.isdigit() or int(value) <= 0:
                problems.append(f"{var}: expected a whole number of milliseconds (> 0), got (hidden)")
    problems = problems or _librdkafka_problems(config)
    if worker and not problems:
        problems = _aiokafka_problems(config)
    if problems:
        raise ConfigError(problems)


def _aiokafka_problems(config: Config) -> list[str]:
    """What the stages' aiokafka consumers cannot apply, so a setting never holds for some clients only."""
    problems: list[str] = []
    if config.sasl_mechanism == "OAUTHBEARER":
        problems.append("KAFKA_SASL_MECHANISM: expected PLAIN or SCRAM-* for the worker (its aiokafka consumers cannot fetch OAUTHBEARER tokens), got OAUTHBEARER")
    known = set(_AIOKAFKA_INT) | set(_AIOKAFKA_STR) | _AIOKAFKA_TLS | _PRODUCER_ONLY
    for var, key, _ in config.kafka_options:
        if key not in known:
            problems.append(f"{var}: expected a key the worker's aiokafka consumers can apply too (see docs/kafka-clients.md), got {key}")
        elif key in _AIOKAFKA_TLS and config.security_protocol not in ("SSL", "SASL_SSL"):
            problems.append(f"{var}: expected KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL for {key}, got {config.security_protocol}")
    return problems


def _librdkafka_problems(config: Config) -> list[str]:
    """Each key and value alone first (so the error names its variable, aliases included), then
    all of them with the security settings together."""
    problems = [
        f"{var}: expected a librdkafka property and a value it takes ({key}: {reason}), got (hidden)"
        for var, key, value in config.kafka_options
        if (reason := _refused({key: value}, config, per_key=True))
    ]
    if problems:
        return problems
    conf = {k: v for k, v in librdkafka(config).items() if k not in ("bootstrap.servers", "logger", "log_level")}
    if reason := _refused(conf, config, per_key=False):
        names = ", ".join(var for var, _, _ in config.kafka_options) or "KAFKA_SECURITY_PROTOCOL"
        return [f"{names}: expected settings librdkafka accepts together, got: {reason}"]
    return []


def _refused(conf: dict[str, Any], config: Config, *, per_key: bool) -> str | None:
    """librdkafka's reason for refusing `conf` on a throwaway producer that connects nowhere (no
    bootstrap server), with every passthrough value and the password blanked; None if accepted.
    Per key, only what is wrong with the key or value itself counts."""
    try:
        Producer({**conf, "logger": _SILENT, "log_level": 0})
    except KafkaException as exc:
        text = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
        if per_key and text.startswith("Failed to create"):  # a combination check: judged with all keys
            return None
        if per_key:
            return "no such property" if text.startswith("No such") else "librdkafka refused the value"
        secrets = [value for _, _, value in config.kafka_options] + [config.sasl_password or ""]
        for value in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(value, "(hidden)")
        return text
    return None


def session_timeout_ms(config: Config) -> int:
    """The group session of every member of ours (stages and Faust)."""
    return _option_ms(config, "session.timeout.ms", int(SESSION_TIMEOUT_S * 1000))


def heartbeat_interval_ms(config: Config) -> int:
    return _option_ms(config, "heartbeat.interval.ms", min(int(HEARTBEAT_INTERVAL_S * 1000), session_timeout_ms(config) // 3))


def _option_ms(config: Config, key: str, default: int) -> int:
    value = next((v for _, k, v in config.kafka_options if k == key), None)
    return int(value) if value is not None and value.isdigit() else default


def producer(config: Config) -> dict[str, Any]:
    """The stages' librdkafka producer (`processors.kafka.sender`): every record acknowledged by all
    in-sync replicas, no duplicates from its own retries, keys partitioned as the Java clients and
    aiokafka do (murmur2), so the delay and ledger topics keep their companies' partitions."""
    return {"linger.ms": 5, **librdkafka(config), "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"}


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the aiokafka and Faust clients (None without TLS)."""
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    tls = {key: value for _, key, value in config.kafka_options if key in _AIOKAFKA_TLS}
    return create_ssl_context(
        cafile=config.ssl_ca_location,
        certfile=tls.get("ssl.certificate.location"),
        keyfile=tls.get("ssl.key.location"),
        password=tls.get("ssl.key.password"),
    )


def aiokafka(config: Config) -> dict[str, Any]:
    """aiokafka settings shared by every aiokafka client (bootstrap, security and the passthrough
    keys aiokafka knows; `check_options` refuses the others at start)."""
    options: dict[str, Any] = {"bootstrap_servers": config.bootstrap_servers, "security_protocol": config.security_protocol}
    for _, key, value in config.kafka_options:
        if key in _AIOKAFKA_INT and value.isdigit():
            options[_AIOKAFKA_INT[key]] = int(value)
        elif key in _AIOKAFKA_STR:
            options[_AIOKAFKA_STR[key]] = value
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
    options = {
        "max_poll_interval_ms": MAX_POLL_INTERVAL_MS,
        **aiokafka(config),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "session_timeout_ms": session_timeout_ms(config),
        "heartbeat_interval_ms": heartbeat_interval_ms(config),
    }
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
