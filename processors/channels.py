"""How the stages send (one producer, acks returned) and the few things every stage does (dead letters, registry waits)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import faust
from aiokafka.structs import ConsumerRecord

from processors.codec import RegistryUnavailableError
from processors.deadletter import Source
from processors.metrics import Metrics
from processors.runtime import Runtime

log = logging.getLogger("crm_sync")

Headers = Sequence[tuple[str, bytes]]
Acks = list[Awaitable[Any]]  # what a stage awaits before it commits a batch


@dataclass
class Channels:
    """Where the stages send: Faust's producer (straight, without Faust's per-record channel
    machinery: it costs ~15% of ingest throughput), topic names from the configuration."""

    app: faust.App
    runtime: Runtime

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None, partition: int | None = None
    ) -> Awaitable[Any]:
        """Queues one record; returns the broker's ack, which the caller awaits before committing."""
        return await self.app.producer.send(topic, key, value, partition, None, list(headers) if headers is not None else None)

    async def send_dead_letter(self, letter: dict[str, Any]) -> Awaitable[Any]:
        """Returns the broker's ack, which the caller awaits before committing the record's offset."""
        self.metrics.dead_lettered.labels(letter["stage"], letter["error_class"]).inc()
        log.warning(
            "dead-lettered",
            extra={
                "stage": letter["stage"],
                "error_class": letter["error_class"],
                "error_code": letter["error_code"],
                "reason": letter["message"],
                "dead_letter_id": letter["dead_letter_id"],
                "action_id": letter["action"]["action_id"] if letter["action"] else None,
                "event_id": letter["action"]["event_id"] if letter["action"] else None,
                "source_topic": letter["source_topic"],
                "source_offset": letter["source_offset"],
            },
        )
        key = (letter["company_id"] or "").encode()
        return await self.send(self.runtime.config.topics.dead_letter, key, self.runtime.codec.encode("DeadLetter", letter))


def source_of(record: ConsumerRecord) -> Source:
    return Source(record.topic, record.partition, record.offset, record.key, record.value)


async def until_registry_answers(step: Callable[[], Awaitable[None]]) -> None:
    """A registry outage is not the record's fault: wait and try the same record again."""
    delay = 0.5
    while True:
        try:
            return await step()
        except RegistryUnavailableError as exc:
            log.warning("schema registry unavailable; retrying", extra={"reason": str(exc), "retry_in": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
