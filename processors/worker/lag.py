"""Consumer lag of this worker's stage groups, measured every few seconds (`processors.kafka.lag`)."""

from __future__ import annotations

import asyncio
import logging

import faust

from processors.kafka import clients
from processors.kafka.consumer import BatchConsumer
from processors.kafka.lag import LagProbe, Tp
from processors.worker.runtime import Runtime

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0


def register_lag(app: faust.App, rt: Runtime) -> None:
    kafka = clients.librdkafka(rt.config)
    probes = [(LagProbe(kafka, stage.group_id), stage) for stage in rt.stages if isinstance(stage, BatchConsumer)]

    def measure_all(assigned: list[tuple[LagProbe, tuple[str, ...], list[Tp]]]) -> dict[str, int]:
        lag: dict[str, int] = {}
        for probe, topics, tps in assigned:
            lag.update(probe.measure(topics, tps))
        return lag

    @app.timer(interval=INTERVAL_SECONDS)
    async def measure_lag() -> None:
        try:
            # assignments are read here, in the event loop that changes them; the broker calls block
            assigned = [(probe, stage.topics, [(tp.topic, tp.partition) for tp in stage.assignment()]) for probe, stage in probes]
            lag = await asyncio.get_running_loop().run_in_executor(None, measure_all, assigned)
        except Exception as exc:  # consumer not started yet, or a slow broker: the gauge just goes stale
            log.warning("consumer lag not measured", extra={"reason": str(exc)})
            return
        for topic, value in lag.items():
            rt.metrics.consumer_lag.labels(topic).set(value)
