"""The stages' producer keeps the send/ack contract: an ack fails when the broker never took the
record (so the batch is not committed), `close` resolves what was queued before it stops, and a
record refused for its size is a per-record `RecordTooLarge`, never a producer failure."""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from processors.domain.errors import error_class
from processors.kafka.sender import RdSender, RecordTooLarge

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


class FakeProducer:
    """librdkafka's producer as the sender sees it: records wait for a poll, and a poll may report a
    fatal error through `error_cb` (an idempotent producer that lost its sequence state)."""

    made: list["FakeProducer"] = []

    def __init__(self, conf: dict[str, object]) -> None:
        self.error_cb = conf["error_cb"]
        self.queued: list[object] = []
        self.fail_fatally = False
        FakeProducer.made.append(self)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, on_delivery: object, **extra: object) -> None:
        self.queued.append(on_delivery)

    def poll(self, timeout: float) -> int:
        if self.fail_fatally:
            self.fail_fatally = False
            self.error_cb(KafkaError(KafkaError._FATAL, "out of order sequence", fatal=True))  # type: ignore[operator]
            return 0
        time.sleep(timeout / 10)
        queued, self.queued = self.queued, []
        for report in queued:
            report(None, None)  # type: ignore[operator]
        return len(queued)

    def purge(self) -> None:
        queued, self.queued = self.queued, []
        self.purged = queued

    def flush(self, timeout: float) -> int:
        for report in getattr(self, "purged", []):
            report(KafkaError(KafkaError._PURGE_QUEUE), None)  # type: ignore[operator]
        self.purged = []
        return 0


def test_a_fatal_error_fails_the_pending_acks_and_a_new_producer_takes_the_next_records() -> None:
    async def scenario() -> None:
        FakeProducer.made.clear()
        sender = RdSender({}, producer_factory=FakeProducer)  # type: ignore[arg-type]
        first = FakeProducer.made[0]
        first.poll = lambda timeout: (time.sleep(timeout / 10), 0)[1]  # type: ignore[method-assign]  # holds the records
        sender.start(asyncio.get_running_loop())
        try:
            pending = [await sender("t", None, b"v") for _ in range(2)]
            del first.poll  # back to the class's poll, which now reports a fatal error
            first.fail_fatally = True
            for ack in pending:
                with pytest.raises(KafkaException):
                    await asyncio.wait_for(ack, 5)
            assert sender.replacements == 1 and len(FakeProducer.made) == 2
            await asyncio.wait_for(await sender("t", None, b"after"), 5)
            assert FakeProducer.made[1].queued == []
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_a_record_librdkafka_refuses_for_its_size_raises_record_too_large_and_the_next_goes_out() -> None:
    """librdkafka checks `message.max.bytes` in `produce` and raises KafkaException (not BufferError):
    that is the record's fault, so the caller gets a per-record error it can dead-letter."""

    async def scenario() -> None:
        sender = RdSender({**UNREACHABLE, "message.max.bytes": 1_000_000})
        sender.start(asyncio.get_running_loop())
        try:
            with pytest.raises(RecordTooLarge) as raised:
                await sender("t", b"k", b"x" * 1_010_000)
            assert raised.value.size == 1_010_001 and raised.value.code == "record_too_large"
            assert error_class(raised.value) == "RecordTooLarge"
            assert not (await sender("t", b"k", b"small")).done()  # queued as usual
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_a_size_refusal_in_the_delivery_report_fails_that_ack_with_record_too_large() -> None:
    class RefusingProducer(FakeProducer):
        def poll(self, timeout: float) -> int:
            time.sleep(timeout / 10)
            queued, self.queued = self.queued, []
            for report in queued:
                report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)  # type: ignore[operator]
            return len(queued)

    async def scenario() -> None:
        sender = RdSender({}, producer_factory=RefusingProducer)  # type: ignore[arg-type]
        sender.start(asyncio.get_running_loop())
        try:
            ack = await sender("t", None, b"v" * 10)
            with pytest.raises(RecordTooLarge):
                await asyncio.wait_for(ack, 5)
        finally:
            await sender.close()

    asyncio.run(scenario())
