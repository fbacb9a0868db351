"""Creating the topics the worker needs (idempotent), with the configs the design relies on."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.config import Config

log = logging.getLogger(__name__)

SEVEN_DAYS_MS = str(7 * 24 * 3600 * 1000)


def topic_specs(config: Config) -> dict[str, dict[str, str]]:
    """Name → topic config. Settings and the ledger are compacted; the DLQ keeps 30 days.

    The history topic holds one record per outcome (not compactable: every record counts); it keeps
    8 days so that 7 whole days in any company time zone can be re-read from it.
    """
    t = config.topics
    return {
        t.meetings: {},
        t.research: {},
        t.surveys: {},
        t.settings: {"cleanup.policy": "compact"},
        t.dead_letter: {"retention.ms": str(30 * 24 * 3600 * 1000)},
        t.delay: {"retention.ms": SEVEN_DAYS_MS},
        t.due_salesforce: {"retention.ms": SEVEN_DAYS_MS},
        t.due_hubspot: {"retention.ms": SEVEN_DAYS_MS},
        t.history: {"retention.ms": str(8 * 24 * 3600 * 1000)},
        t.retry: {"retention.ms": SEVEN_DAYS_MS},
    }


def ensure_topics(config: Config, timeout: float = 30.0) -> None:
    admin = AdminClient(config.kafka_client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [
        NewTopic(name, num_partitions=config.topic_partitions, replication_factor=config.replication_factor, config=conf)
        for name, conf in topic_specs(config).items()
        if name not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result()
            log.info("topic created", extra={"topic": name})
        except KafkaException as exc:
            if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: another worker won the race
                raise
