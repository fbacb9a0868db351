"""Creating the topics the worker needs (idempotent), with the configs the design relies on."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.config import Config
from processors.domain.model import Crm
from processors.kafka import clients

log = logging.getLogger(__name__)

SEVEN_DAYS_MS = str(7 * 24 * 3600 * 1000)
AUDIT_RETENTION_MS = 2 * 365 * 24 * 3600 * 1000


def topic_specs(config: Config) -> dict[str, dict[str, str]]:
    """Name → topic config. Settings are compacted; the DLQ keeps 30 days; the ledgers are
    compacted and keep what the sinks read back (`CRM_SYNC_LEDGER_KEEP_HOURS`).

    The history topic holds one record per outcome under its idempotency key (compacted: a
    repeat after a crash replaces the first); it keeps 8 days so that 7 whole days in any company
    time zone can be re-read from it.

    The settings audit is append-only (never compacted) and kept two years.
    """
    t = config.topics
    ledger = {"cleanup.policy": "compact,delete", "retention.ms": str(int(config.ledger_keep_hours * 3600 * 1000))}
    return {
        t.meetings: {},
        t.research: {},
        t.surveys: {},
        t.settings: {"cleanup.policy": "compact"},
        t.dead_letter: {"retention.ms": str(30 * 24 * 3600 * 1000)},
        t.delay: {"retention.ms": SEVEN_DAYS_MS},
        t.due_salesforce: {"retention.ms": SEVEN_DAYS_MS},
        t.due_hubspot: {"retention.ms": SEVEN_DAYS_MS},
        t.history: {"cleanup.policy": "compact,delete", "retention.ms": str(8 * 24 * 3600 * 1000)},
        t.retry: {"retention.ms": SEVEN_DAYS_MS},
        t.ledger_salesforce: ledger,
        t.ledger_hubspot: ledger,
        t.audit: {"cleanup.policy": "delete", "retention.ms": str(AUDIT_RETENTION_MS)},
    }


def create_missing(config: Config, names: list[str] | None = None, timeout: float = 30.0) -> dict[str, int]:
    """Create the named topics (default: all of them) that are missing, with their configs;
    returns every topic's partition count. A race with another creator is no error."""
    admin = AdminClient(clients.librdkafka(config))
    specs = topic_specs(config)
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

    The audit topic is the admins' (`SettingsAdmin` creates it): the worker only reads it (it applies
    audited settings changes only).
    """
    partitions = create_missing(config, [name for name in topic_specs(config) if name != config.topics.audit], timeout=timeout)
    check_ledgers(config, partitions)
    return partitions


def check_ledgers(config: Config, partitions: dict[str, int]) -> None:
    """A due record's ledger entry goes to the same partition number: the counts must match.

    A topic not yet in the metadata was just created here, with the same count as the others.
    """
    t = config.topics
    for crm in Crm:
        due, ledger = partitions.get(t.due(crm)), partitions.get(t.ledger(crm))
        if due is not None and ledger is not None and due != ledger:
            raise ValueError(f"topic {t.ledger(crm)} has {ledger} partitions but {t.due(crm)} has {due}: they must be equal")
