"""Consumer lag per topic, for this worker's assigned partitions only (so summing over workers in
Prometheus counts each partition once).

`lag_by_topic` is the arithmetic; `LagProbe` asks the broker (committed offsets of one consumer
group, high watermarks) from a librdkafka consumer that never joins the group; there is one probe
per explicit-commit stage group. The delay and retry topics are not measured here: their backlog
is held on purpose and shows as `crm_sync_actions_held`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from confluent_kafka import Consumer, TopicPartition

Tp = tuple[str, int]


def lag_by_topic(
    topics: Iterable[str], committed: Mapping[Tp, int], watermarks: Mapping[Tp, tuple[int, int]]
) -> dict[str, int]:
    """Sum of (high - committed) per topic; no committed offset yet means 'from the low watermark'.

    Every topic in `topics` gets a value (0 when none of its partitions is assigned here), so a
    series never disappears when a rebalance moves partitions away.
    """
    lag = dict.fromkeys(topics, 0)
    for tp, (low, high) in watermarks.items():
        if tp[0] not in lag:
            continue
        position = committed.get(tp, -1)
        start = position if position >= 0 else low
        lag[tp[0]] += max(0, high - start)
    return lag


class LagProbe:
    """Blocking broker queries; call from an executor thread, one call at a time."""

    def __init__(self, kafka_config: Mapping[str, Any], group_id: str, timeout: float = 5.0) -> None:
        self._consumer = Consumer({**kafka_config, "group.id": group_id, "enable.auto.commit": False})
        self._timeout = timeout

    def measure(self, topics: Iterable[str], assigned: Iterable[Tp]) -> dict[str, int]:
        wanted = set(topics)
        tps = [TopicPartition(t, p) for t, p in sorted(assigned) if t in wanted]
        committed = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.committed(tps, timeout=self._timeout)} if tps else {}
        watermarks = {
            (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=self._timeout, cached=False) for tp in tps
        }
        return lag_by_topic(wanted, committed, watermarks)
