"""Creating the topics the worker needs (idempotent), with the configs the design relies on."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from processors.config import Config
from processors.domain.model import Crm
from processors.kafka import clients

log = logging.getLogger(__name__)

SEVEN_DAYS_MS = str(7 * 24 * 3600 * 1000)
AUDIT_RETENTION_MS = 2 * 365 * 24 * 3600 * 1000
DEAD_LETTER_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_specs(config: Config) -> dict[str, dict[str, str]]:
    """Name → topic config. Settings are compacted; the DLQ keeps 30 days; the ledgers are
    compacted and keep what the sinks read back (`CRM_SYNC_LEDGER_KEEP_HOURS`).

    The history topic holds one record per outcome under its idempotency key (compacted: a
    repeat after a crash replaces the first); it keeps 8 days so that 7 whole days in any company
    time zone can be re-read from it.

    The dead-letter index holds each dead letter's latest state under its id (compacted), as long
    as the dead letters themselves.

    The settings audit is append-only (never compacted) and kept two years.

    The retry tiers keep `CRM_SYNC_RETRY_RETENTION_HOURS` (8 days): longer than the longest wait
    (7 days) plus the time a paused action stays parked before it is copied on.
    """
    t = config.topics
    retry = {"retention.ms": str(int(config.retry_retention_hours * 3600 * 1000))}
    ledger = {"cleanup.policy": "compact,delete", "retention.ms": str(int(config.ledger_keep_hours * 3600 * 1000))}
    return {
        t.meetings: {},
        t.research: {},
        t.surveys: {},
        t.settings: {"cleanup.policy": "compact"},
        t.dead_letter: {"retention.ms": str(DEAD_LETTER_RETENTION_MS)},
        t.dead_letter_index: {"cleanup.policy": "compact,delete", "retention.ms": str(DEAD_LETTER_RETENTION_MS)},
        t.delay: {"retention.ms": SEVEN_DAYS_MS},
        t.due_salesforce: {"retention.ms": SEVEN_DAYS_MS},
        t.due_hubspot: {"retention.ms": SEVEN_DAYS_MS},
        t.history: {"cleanup.policy": "compact,delete", "retention.ms": str(8 * 24 * 3600 * 1000)},
        t.retry: retry,
        t.retry_medium: retry,
        t.retry_long: retry,
        t.ledger_salesforce: ledger,
        t.ledger_hubspot: ledger,
        t.audit: {"cleanup.policy": "delete", "retention.ms": str(AUDIT_RETENTION_MS)},
    }


def min_insync_replicas(replication_factor: int) -> int:
    """2 of 3 (or more) replicas must have a write before it is acknowledged (acks=all): one broker
    may be down without losing data or stopping writes. With fewer replicas there is no margin."""
    return 2 if replication_factor >= 3 else 1


def internal_specs(config: Config) -> dict[str, dict[str, str]]:
    """The topics crm-sync owns (everything but the upstream inputs), with `min.insync.replicas`."""
    isr = {"min.insync.replicas": str(min_insync_replicas(config.replication_factor))}
    inputs = set(config.topics.inputs)
    return {name: {**spec, **isr} for name, spec in topic_specs(config).items() if name not in inputs}


def manifest(config: Config, fmt: str, cluster: str = "my-cluster") -> str:
    """Every topic crm-sync owns, for platform teams that create topics themselves: Strimzi
    `KafkaTopic` resources, or `kafka-topics.sh --create` commands. The upstream inputs are not in
    it: their owner makes them."""
    specs = internal_specs(config)
    if fmt == "kafka-topics":
        lines = []
        for name, spec in specs.items():
            flags = "".join(f" --config {k}={v}" for k, v in spec.items())
            lines.append(f"kafka-topics.sh --bootstrap-server \"$BOOTSTRAP\" --create --if-not-exists --topic {name} "
                         f"--partitions {config.topic_partitions} --replication-factor {config.replication_factor}{flags}")
        return "\n".join(lines) + "\n"
    if fmt == "strimzi":
        import yaml

        docs = [
            {
                "apiVersion": "kafka.strimzi.io/v1beta2",
                "kind": "KafkaTopic",
                "metadata": {"name": name.replace(".", "-").replace("_", "-").lower(), "labels": {"strimzi.io/cluster": cluster}},
                "spec": {"topicName": name, "partitions": config.topic_partitions, "replicas": config.replication_factor, "config": spec},
            }
            for name, spec in specs.items()
        ]
        return yaml.safe_dump_all(docs, sort_keys=False)
    raise ValueError(f"unknown format {fmt!r}: strimzi or kafka-topics")


def missing_topics(config: Config, names: list[str], timeout: float = 30.0) -> list[str]:
    admin = AdminClient(clients.librdkafka(config))
    existing = {name for name, meta in admin.list_topics(timeout=timeout).topics.items() if meta.error is None}
    return [name for name in names if name not in existing]


def create_missing(config: Config, names: list[str] | None = None, timeout: float = 30.0) -> dict[str, int]:
    """Create the named topics (default: all of them) that are missing, with their configs;
    returns every topic's partition count. A race with another creator is no error."""
    admin = AdminClient(clients.librdkafka(config))
    specs = {**topic_specs(config), **internal_specs(config)}
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [
        NewTopic(name, num_partitions=config.topic_partitions, replication_factor=config.replication_factor, config=specs[name])
        for name in (names if names is not None else list(specs))
        if name not in existing
    ]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
                log.info("topic created", extra={"topic": name})
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    # A topic just created may take a moment to appear in the metadata (and have its partitions).
    wanted = set(names if names is not None else specs)
    deadline = time.monotonic() + timeout
    while True:
        partitions = {name: len(meta.partitions) for name, meta in admin.list_topics(timeout=timeout).topics.items() if meta.partitions}
        if wanted <= set(partitions) or time.monotonic() > deadline:
            return partitions
        time.sleep(0.1)


def ensure_topics(config: Config, timeout: float = 30.0) -> dict[str, int]:
    """The worker's start: every topic it uses exists and the ledgers match their due topics.

    The worker creates the topics it owns. The audit topic is the admins' (`SettingsAdmin` creates
    it): the worker only reads it (it applies audited settings changes only). The input topics are the upstream's: the worker only
    reads them, so a secured broker does not let it create them (`processors.ops.acls`) and their
    owner creates them first; a missing one is then a one-line refusal naming it. A broker without
    ACLs (development) lets the worker create them.
    """
    t = config.topics
    own = [name for name in topic_specs(config) if name != t.audit and name not in t.inputs]
    if not config.create_topics:
        if missing := missing_topics(config, [*own, *t.inputs], timeout):
            raise TopicsMissing(
                f"topic creation is off (CRM_SYNC_CREATE_TOPICS=false) and these topics are missing: {', '.join(missing)}; "
                "create them from `crm-sync topics print` (the inputs: their owner)"
            )
    partitions = create_missing(config, own, timeout=timeout) if config.create_topics else _partitions(config, [*own, *t.inputs], timeout)
    try:
        partitions |= create_missing(config, list(t.inputs), timeout=timeout)
    except KafkaException as exc:
        refused = clients.refusal(config, exc)
        if refused is None:
            raise
        missing = ", ".join(name for name in t.inputs if name not in partitions)
        raise clients.BrokerRefused(f"{refused}: the input topics {missing} are missing (or not readable by it); their owner creates them") from exc
    check_ledgers(config, partitions)
    check_retention(config, timeout)
    return partitions


class TopicsMissing(ValueError):
    """The worker may not create topics and some it needs are not there."""


def _partitions(config: Config, names: list[str], timeout: float) -> dict[str, int]:
    admin = AdminClient(clients.librdkafka(config))
    return {name: len(meta.partitions) for name, meta in admin.list_topics(timeout=timeout).topics.items() if name in names}


def needed_retention_ms(config: Config) -> dict[str, int]:
    """What each holding topic's retention must exceed: its longest wait plus the repark time (a
    parked action is re-read from its offset after a restart until it is copied on)."""
    repark = int(config.paused_repark_seconds * 1000)
    delay = int((config.delay_seconds + config.delay_lookahead_seconds) * 1000)
    return {config.topics.delay: delay + repark, **{tier.topic: tier.max_wait_ms + repark for tier in config.retry_tiers()}}


def retention_problems(config: Config, retention_ms: dict[str, int]) -> list[str]:
    """Topics whose retention (`-1`: forever) would delete records before they are due."""
    return [
        f"topic {topic} keeps records {retention_ms[topic]} ms but must keep them more than {need} ms "
        "(its longest wait plus CRM_SYNC_PAUSED_REPARK_SECONDS): raise its retention.ms"
        for topic, need in needed_retention_ms(config).items()
        if topic in retention_ms and 0 <= retention_ms[topic] <= need
    ]


def check_retention(config: Config, timeout: float = 30.0) -> None:
    """Refuse to start when an existing topic would expire actions before they are due."""
    if problems := config.retry_problems():
        raise ValueError("; ".join(problems))
    admin = AdminClient(clients.librdkafka(config))
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in needed_retention_ms(config)]
    retention = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        entry = future.result().get("retention.ms")
        if entry is not None and entry.value is not None:
            retention[resource.name] = int(entry.value)
    if problems := retention_problems(config, retention):
        raise ValueError("; ".join(problems))


def check_ledgers(config: Config, partitions: dict[str, int]) -> None:
    """A due record's ledger entry goes to the same partition number: the counts must match.

    A topic not yet in the metadata was just created here, with the same count as the others.
    """
    t = config.topics
    for crm in Crm:
        due, ledger = partitions.get(t.due(crm)), partitions.get(t.ledger(crm))
        if due is not None and ledger is not None and due != ledger:
            raise ValueError(f"topic {t.ledger(crm)} has {ledger} partitions but {t.due(crm)} has {due}: they must be equal")
