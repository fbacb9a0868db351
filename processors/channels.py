"""The worker's topics and the few things every stage does with them (dead letters, headers)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import faust
from aiokafka.structs import ConsumerRecord

from processors.codec import RegistryUnavailableError
from processors.deadletter import Source
from processors.metrics import Metrics
from processors.model import Crm
from processors.runtime import Runtime

log = logging.getLogger("crm_sync")


@dataclass
class Channels:
    inputs: faust.TopicT
    settings: faust.TopicT
    delay: faust.TopicT
    due: dict[Crm, faust.TopicT]
    retry: faust.TopicT
    ledger: dict[Crm, faust.TopicT]
    dead_letter: faust.TopicT
    runtime: Runtime

    @classmethod
    def create(cls, app: faust.App, rt: Runtime) -> "Channels":
        def raw_topic(*names: str) -> faust.TopicT:
            return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

        t = rt.config.topics
        return cls(
            inputs=raw_topic(*t.inputs),
            settings=raw_topic(t.settings),
            delay=raw_topic(t.delay),
            due={crm: raw_topic(t.due(crm)) for crm in Crm},
            retry=raw_topic(t.retry),
            ledger={crm: raw_topic(t.ledger(crm)) for crm in Crm},
            dead_letter=raw_topic(t.dead_letter),
            runtime=rt,
        )

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

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
        return await self.dead_letter.send(key=key, value=self.runtime.codec.encode("DeadLetter", letter), force=True)


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
