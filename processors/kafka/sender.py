"""The stages' producer: librdkafka (confluent-kafka) behind the async `Send` of
`processors.kafka.producer`, because it is where ingest's time went.

The profile of issue 16 put a quarter of the worker's CPU in aiokafka's producer (a Python record
builder and a produce request per batch of 16 KiB); librdkafka builds and batches records in C,
in its own threads. The contract does not change: `send` queues one record and returns a future
that resolves when the broker acknowledged it (acks=all), or fails with the broker's error, so a
stage still commits a batch only after everything the batch produced is acknowledged.

Delivery reports are served by one poll thread and handed to the event loop a poll at a time
(one wake-up per poll, not per record). A full local queue makes `send` wait (back-pressure).

An idempotent producer can hit a *fatal* error (the broker lost the producer's sequence state,
say): librdkafka then refuses every record. The sender fails every ack still pending, so no batch
that produced them is committed, and replaces the producer with a fresh one (a new producer id);
the stages' supervisor redoes those batches, and action ids make the repeats harmless downstream.

A record larger than the producer's `message.max.bytes` is that record's fault, not the
producer's: `send` raises `RecordTooLarge` for it (librdkafka refuses it in `produce`; a broker
or topic with a lower limit refuses it in the delivery report, which fails its ack with the same
error), so the stage handles it like any bad record (a dead letter) instead of restarting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processors.kafka.producer import Ack, Headers

POLL_SECONDS = 0.05
FULL_QUEUE_WAIT_SECONDS = 0.005
CLOSE_FLUSH_SECONDS = 30.0
FATAL_FLUSH_SECONDS = 1.0

log = logging.getLogger(__name__)


class RecordTooLarge(ValueError):
    """A record the producer or broker refuses for its size: permanent for that record only."""

    code = "record_too_large"

    def __init__(self, topic: str, size: int) -> None:
        super().__init__(f"a record of {size} bytes for {topic} is larger than Kafka accepts (message.max.bytes)")
        self.topic = topic
        self.size = size


def _too_large(err: KafkaError | None) -> bool:
    return err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


class RdSender:
    """One per worker; `start` in the worker's event loop before the first send, `close` after the last."""

    def __init__(self, conf: dict[str, Any], producer_factory: Callable[[dict[str, Any]], Producer] = Producer) -> None:
        self._conf = dict(conf, error_cb=self._on_error)
        self._factory = producer_factory
        self._producer = producer_factory(self._conf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[asyncio.Future[Any], KafkaError | RecordTooLarge | None]] = []
        self._closing = threading.Event()
        self._fatal: KafkaError | None = None
        self.replacements = 0
        self._thread = threading.Thread(target=self._poll, name="rdkafka-delivery", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None, partition: int | None = None
    ) -> Ack:
        assert self._loop is not None, "RdSender.start() was not called"
        future: asyncio.Future[Any] = self._loop.create_future()

        size = len(value or b"") + len(key or b"")

        def delivered(err: KafkaError | None, msg: Message, future: asyncio.Future[Any] = future) -> None:
            self._reports.append((future, RecordTooLarge(topic, size) if _too_large(err) else err))

        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        if headers is not None:
            extra["headers"] = list(headers)  # librdkafka takes a list or a dict, not the releaser's tuples
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=delivered, **extra)
                return future
            except BufferError:
                await asyncio.sleep(FULL_QUEUE_WAIT_SECONDS)
            except KafkaException as exc:
                if _too_large(exc.args[0] if exc.args else None):
                    raise RecordTooLarge(topic, size) from None
                raise

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (on the delivery thread): a fatal error marks the producer for replacement."""
        if err.fatal():
            self._fatal = err
        log.warning("kafka producer error", extra={"error": err.str(), "fatal": err.fatal()})

    def _poll(self) -> None:
        """The delivery thread: callbacks run here, their futures are resolved in the loop."""
        while not self._closing.is_set():
            self._producer.poll(POLL_SECONDS)
            if self._fatal is not None:
                self._replace()
            self._hand_over()
        self._producer.flush(CLOSE_FLUSH_SECONDS)
        self._hand_over()

    def _replace(self) -> None:
        """Swap in a fresh producer first (new sends go there), then fail what the dead one still holds."""
        err, self._fatal = self._fatal, None
        dead, self._producer = self._producer, self._factory(self._conf)
        self.replacements += 1
        log.error("kafka producer hit a fatal error: pending acks fail, a new producer takes over", extra={"error": err.str() if err else ""})
        dead.purge()
        while dead.flush(FATAL_FLUSH_SECONDS) > 0:  # serves the purged records' reports: their acks fail
            pass

    def _hand_over(self) -> None:
        if not self._reports:
            return
        reports, self._reports = self._reports, []
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_resolve, reports)
        except RuntimeError:  # the loop is closed: nobody waits for these acks any more
            pass

    async def close(self) -> None:
        """Flush what is queued (its acks still resolve), then stop the delivery thread."""
        if not self._thread.is_alive():
            return
        self._closing.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)


def _resolve(reports: list[tuple[asyncio.Future[Any], KafkaError | RecordTooLarge | None]]) -> None:
    for future, err in reports:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        elif isinstance(err, RecordTooLarge):
            future.set_exception(err)
        else:
            future.set_exception(KafkaException(err))
