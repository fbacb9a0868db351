"""What every stage shares: the worker's long-lived parts (`StageContext`), dead letters, sync
history records and the wait for a schema registry that does not answer.

Stages are thin: they call the pure rooms (`processors.domain`), the Kafka layer and the state
layer, and hand every record they produce to `send`, collecting acks to await before a commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiokafka.structs import ConsumerRecord

from connectors.retry import RetryPolicy
from processors.codec import Codec, RegistryUnavailableError
from processors.config import Config
from processors.domain.deadletter import Source, letter_headers
from processors.domain.deadletter_index import entry_of
from processors.domain.history import HistoryRecord, company_timezone, local_day
from processors.kafka.producer import Ack, Send, partition_for
from processors.metrics import Metrics
from processors.state.settings import SettingsStore

log = logging.getLogger("crm_sync")

REGISTRY_POLICY = RetryPolicy(base=0.5, cap=30.0, max_elapsed=None)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class StageContext:
    """Made once per worker (`processors.worker.runtime`) and shared by its stages."""

    config: Config
    codec: Codec
    settings: SettingsStore
    metrics: Metrics
    send: Send
    history_partitions: int

    async def dead_letter(self, letter: dict[str, Any]) -> Ack:
        """Returns the broker's ack, which the caller awaits before committing the record's offset."""
        self.metrics.dead_lettered.labels(letter["stage"], letter["error_class"]).inc()
        action = letter["action"]
        log.warning(
            "dead-lettered",
            extra={
                "stage": letter["stage"],
                "error_class": letter["error_class"],
                "error_code": letter["error_code"],
                "reason": letter["message"],
                "dead_letter_id": letter["dead_letter_id"],
                "action_id": action["action_id"] if action else None,
                "event_id": action["event_id"] if action else None,
                "source_topic": letter["source_topic"],
                "source_offset": letter["source_offset"],
            },
        )
        key = (letter["company_id"] or "").encode()
        sent = await self.send(self.config.topics.dead_letter, key, self.codec.encode("DeadLetter", letter), letter_headers(letter))
        entry = entry_of(letter)
        indexed = await self.send(self.config.topics.dead_letter_index, entry.key, entry.to_json())
        return asyncio.gather(sent, indexed)

    async def history(
        self,
        *,
        company_id: str,
        crm: str,
        event_type: str,
        outcome: str,
        reason: str | None,
        event_id: str,
        action_id: str | None = None,
        at_ms: int | None = None,
        ref: str | None = None,
    ) -> Ack:
        """One sync-history record, in its company's partition, under its idempotency key.

        `crm` is "any" when no CRM applies (no settings at all).
        """
        at = now_ms() if at_ms is None else at_ms
        tz = company_timezone(self.settings)(company_id)
        rec = HistoryRecord(company_id, local_day(at, tz), tz, crm, event_type, outcome, reason, at, event_id, action_id, ref)
        self.metrics.history_recorded.labels(outcome).inc()
        partition = partition_for(company_id.encode(), self.history_partitions)
        return await self.send(self.config.topics.history, rec.key.encode(), rec.to_json(), partition=partition)


def source_of(record: ConsumerRecord) -> Source:
    """The record's provenance for a dead letter, headers included (a `traceparent` survives a retry)."""
    return Source(record.topic, record.partition, record.offset, record.key, record.value, tuple(record.headers or ()))


async def until_registry_answers(step: Callable[[], Awaitable[None]]) -> None:
    """A registry outage is not the record's fault: wait and try the same record again."""
    attempt = 0
    while True:
        try:
            return await step()
        except RegistryUnavailableError as exc:
            attempt += 1
            wait = REGISTRY_POLICY.backoff(attempt)
            log.warning("schema registry unavailable; retrying", extra={"reason": str(exc), "retry_in": round(wait, 2)})
            await asyncio.sleep(wait)
