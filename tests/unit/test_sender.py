"""The stages' producer keeps the send/ack contract: an ack fails when the broker never took the
record (so the batch is not committed), and `close` resolves what was queued before it stops."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaException

from processors.kafka.sender import RdSender

# Nothing listens on port 1: every record times out in librdkafka's queue.
UNREACHABLE = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0}


def test_an_ack_fails_when_the_broker_never_acknowledged_the_record() -> None:
    async def scenario() -> None:
        sender = RdSender(UNREACHABLE)
        sender.start(asyncio.get_running_loop())
        try:
            # The releaser passes its headers as a tuple: librdkafka only takes lists, the sender copies.
            ack = await sender("t", b"k", b"v", (("due_at", b"1"),), partition=0)
            with pytest.raises(KafkaException):
                await asyncio.wait_for(ack, 10)
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_close_resolves_every_queued_ack_before_it_returns() -> None:
    async def scenario() -> None:
        sender = RdSender(UNREACHABLE)
        sender.start(asyncio.get_running_loop())
        acks = [await sender("t", None, b"v") for _ in range(3)]
        await sender.close()
        await asyncio.sleep(0)  # the hand-over is scheduled on the loop
        assert all(ack.done() for ack in acks)
        for ack in acks:
            assert isinstance(ack.exception(), KafkaException)

    asyncio.run(scenario())
