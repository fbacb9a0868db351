"""The one "read a topic to its end" helper, for everything that rebuilds state from a topic:
the settings table, the sinks' ledgers, the failure history, sync history and the test harness.

`TopicReader` is a librdkafka consumer outside any consumer group: it assigns partitions itself
and never commits. "The end" is each partition's high watermark as it was when the read began.
It reads `read_committed` by default, so an open transaction on the topic (an admin's change in
progress) holds the read back until the transaction ends: a caller never sees half a change, and
never mistakes "not read yet" for "absent" (SPEC §11, no decision on missing state).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

OnRecord = Callable[[Message], None]


class NotCaughtUp(TimeoutError):
    """The end was not reached in time (slow broker, or a transaction still open)."""

# librdkafka consumers need a group id even outside any group; finding its coordinator needs
# DESCRIBE on it, which `processors.ops.acls` grants on this prefix (no offsets are ever committed).
READER_GROUP_PREFIX = "crm-sync-reader-"
_REFUSED = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED})
# A partition's leader not known yet (librdkafka does not mark these retriable for offset lookups).
_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART})


class TopicReader:
    """Blocking; use from one thread (the worker calls it from an executor)."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, *, isolation: str = "read_committed") -> None:
        self.topic = topic
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": f"{READER_GROUP_PREFIX}{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": isolation,
                "auto.offset.reset": "earliest",
            }
        )
        self._assigned: list[TopicPartition] = []
        self.ends: dict[int, int] = {}  # what the last `read_to_end` read up to, per partition
        # The end to reach is the high watermark: under read_committed the consumer's own watermark
        # query answers the last stable offset, which an open transaction holds back — reading to
        # it would pass for caught up while the transaction's records are still unseen.
        self._probe = Consumer({**kafka_config, "group.id": f"{READER_GROUP_PREFIX}{uuid.uuid4().hex}", "isolation.level": "read_uncommitted"})

    def partitions(self, timeout: float = 10.0) -> list[int]:
        """The topic's partitions; empty when the topic does not exist."""
        meta = self._consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if meta is not None and meta.error is not None and meta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise KafkaException(meta.error)  # not "missing": the broker refuses this principal
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def assign(
        self, partitions: Iterable[int], since_ms: int | None = None, timeout: float = 10.0, *, start: Mapping[int, int] | None = None
    ) -> None:
        """Read these partitions from their beginning, from the offsets in `start`, or from their
        first record stamped at or after `since_ms`: the broker's time index finds it, so an old
        tail is never read."""
        self._assigned = [TopicPartition(self.topic, p, (start or {}).get(p, OFFSET_BEGINNING)) for p in partitions]
        if since_ms is not None and self._assigned:
            wanted = [TopicPartition(self.topic, tp.partition, since_ms) for tp in self._assigned]
            found = self._offsets_for_times(wanted, timeout)
            for tp in found:
                if tp.offset < 0:  # nothing at or after that time: start at the end
                    tp.offset = self._probe.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=timeout, cached=False)[1]
            self._assigned = [TopicPartition(self.topic, tp.partition, tp.offset) for tp in found]
        self._consumer.assign(self._assigned)

    def _offsets_for_times(self, wanted: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        """The broker's time-index lookup; a leader still moving (a topic just made, a broker
        restarting) is asked again until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return list(self._consumer.offsets_for_times(wanted, timeout=max(1.0, deadline - time.monotonic())))
            except KafkaException as exc:
                error = exc.args[0]
                if not (error.retriable() or error.code() in _MOVING) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def read_to_end(self, on_record: OnRecord, timeout: float = 30.0, until: Mapping[int, int] | None = None) -> int:
        """Feed every record up to the end of the assigned partitions (or up to the offsets in
        `until`, exclusive) to `on_record`; returns how many.

        Raises `NotCaughtUp` after `timeout` seconds (records read so far were fed).
        """
        ends = dict(until) if until is not None else {
            tp.partition: self._probe.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=timeout, cached=False)[1]
            for tp in self._assigned
        }
        self.ends = ends
        starts = {tp.partition: max(tp.offset, 0) for tp in self._assigned}
        position = {p: starts.get(p, 0) for p in ends}
        deadline = time.monotonic() + timeout
        count = 0
        while any(position[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                behind = sum(max(0, ends[p] - position[p]) for p in ends)
                raise NotCaughtUp(f"topic {self.topic} not read to its end within {timeout:.0f}s ({behind} records behind)")
            msg = self._consumer.poll(0.2)
            if msg is None:
                # Control records (transaction markers) move the position without a message.
                for tp in self._consumer.position([TopicPartition(self.topic, p) for p in ends]):
                    if tp.offset >= 0:
                        position[tp.partition] = max(position[tp.partition], tp.offset)
                continue
            if msg.error():
                if msg.error().code() in _REFUSED:
                    raise KafkaException(msg.error())  # the broker refuses this principal: say so
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {self.topic}: {msg.error()}")
                continue
            on_record(msg)
            count += 1
            position[msg.partition()] = msg.offset() + 1
        return count

    def follow(self, on_record: OnRecord, seconds: float) -> None:
        """After `read_to_end`: feed what arrives for about `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            msg = self._consumer.poll(max(0.0, min(0.2, deadline - time.monotonic())))
            if msg is not None and not msg.error():
                on_record(msg)
            if time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self._consumer.close()
        self._probe.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_to_end(
    kafka_config: dict[str, Any],
    topic: str,
    on_record: OnRecord,
    *,
    partitions: Iterable[int] | None = None,
    since_ms: int | None = None,
    timeout: float = 30.0,
    isolation: str = "read_committed",
) -> int:
    """One-shot: every record now on `topic` (or on some of its partitions, from `since_ms`),
    oldest first per partition. A missing topic reads as empty."""
    with TopicReader(kafka_config, topic, isolation=isolation) as reader:
        reader.assign(reader.partitions(timeout) if partitions is None else partitions, since_ms, timeout)
        return reader.read_to_end(on_record, timeout)


def read_one(kafka_config: dict[str, Any], topic: str, partition: int, offset: int, timeout: float = 30.0) -> Message | None:
    """The one record at `topic`/`partition`/`offset` (read_uncommitted), or None when there is none."""
    consumer = Consumer({**kafka_config, "group.id": f"{READER_GROUP_PREFIX}{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or partition not in meta.partitions:
            return None
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
        if not low <= offset < high:
            return None
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return None
                raise KafkaException(msg.error())
            return msg if msg.offset() == offset else None  # compacted or a transaction marker: not there
        raise NotCaughtUp(f"record {topic}:{partition}:{offset} not read within {timeout:.0f}s")
    finally:
        consumer.close()
