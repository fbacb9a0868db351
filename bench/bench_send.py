"""What an acknowledged send costs the worker, per record, and what a batch-level ack would save (issue 16).

    .venv/bin/python bench/bench_send.py            # its own broker (deploy/kafka/kafka.sh)
    .venv/bin/python bench/bench_send.py --bootstrap HOST:PORT

Sends Action-sized records with the ingest stage's headers in batches of `--batch` and awaits each
batch, three ways, printing wall and process CPU (librdkafka's threads included) per record:
- the worker's `RdSender`: a future per record, resolved from librdkafka's delivery report;
- one delivery callback per batch (a counter), the batch's ack being the counter reaching zero:
  what a batch-level ack in the sender would cost;
- no delivery report at all (`flush`), the floor of librdkafka itself, which cannot tell a failed
  record from a delivered one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delay import bench_broker, create_topics  # noqa: E402
from confluent_kafka import KafkaError, Message, Producer  # noqa: E402

from processors.kafka.producer import all_acked  # noqa: E402
from processors.kafka.sender import RdSender  # noqa: E402

VALUE = b"x" * 523  # an encoded Action of the ingest benchmark
HEADERS = [("due_at", b"1796140960856"), ("crm", b"salesforce"), ("company_id", b"bench-co"),
           ("action_id", b"a" * 32), ("event_id", b"evt-bench-1-abcdef12"), ("event_type", b"meeting_booked")]


def conf(bootstrap: str) -> dict[str, Any]:
    """As the worker's producer: idempotent, acks=all, 5 ms linger."""
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5, "partitioner": "murmur2_random"}


def timed(records: int, run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return (time.perf_counter() - wall) / records * 1e6, (time.process_time() - cpu) / records * 1e6


def rd_sender(bootstrap: str, topic: str, records: int, batch: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        send = RdSender(conf(bootstrap))
        send.start(asyncio.get_running_loop())
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, records, batch):
            acks = [await send(topic, f"k{i}".encode(), VALUE, HEADERS) for i in range(start, start + batch)]
            await all_acked(acks)
        result = (time.perf_counter() - wall) / records * 1e6, (time.process_time() - cpu) / records * 1e6
        await send.close()
        return result

    return asyncio.run(main())


def batch_callback(bootstrap: str, topic: str, records: int, batch: int) -> tuple[float, float]:
    producer = Producer(conf(bootstrap))

    def run() -> None:
        for start in range(0, records, batch):
            left = [batch]

            def delivered(err: KafkaError | None, msg: Message) -> None:
                assert err is None, err
                left[0] -= 1

            for i in range(start, start + batch):
                producer.produce(topic, VALUE, f"k{i}".encode(), on_delivery=delivered, headers=HEADERS)
            while left[0]:
                producer.poll(0.05)

    return timed(records, run)


def no_report(bootstrap: str, topic: str, records: int, batch: int) -> tuple[float, float]:
    producer = Producer(conf(bootstrap))

    def run() -> None:
        for start in range(0, records, batch):
            for i in range(start, start + batch):
                producer.produce(topic, VALUE, f"k{i}".encode(), headers=HEADERS)
            producer.flush()

    return timed(records, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap")
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2_000, help="records a batch (ingest: 2 actions an event)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ways = {"RdSender (a future a record)": rd_sender, "one callback a batch": batch_callback, "no delivery report (flush)": no_report}
    with bench_broker(args.bootstrap, "bench-send-") as (bootstrap, _, _):
        topic = f"bench-send-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], 6)
        no_report(bootstrap, topic, args.records, args.batch)  # a warm broker: producer id, leaders, page cache
        rows = []
        for name, way in ways.items():
            figures = [way(bootstrap, topic, args.records, args.batch) for _ in range(args.rounds)]
            rows.append((name, min(f[0] for f in figures), min(f[1] for f in figures)))
    print(f"\n{args.records:,} records of {len(VALUE)} bytes in batches of {args.batch:,}, best of {args.rounds} ({os.cpu_count()} cores):\n")
    print("| send | wall µs a record | CPU µs a record |\n|---|---|---|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
