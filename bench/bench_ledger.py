"""How long a sink takes to read its ledger back when it is assigned partitions (run on demand).

    .venv/bin/python bench/bench_ledger.py [--entries 1000000] [--partitions 6] [--bootstrap HOST:PORT]

Writes `--entries` ledger entries (32-character action id → an 18-character CRM id, as the sinks
write them) over `--partitions` partitions of a fresh topic, then reads them all back with the
worker's `Ledger.hold` and prints the time, entries/s and the memory they take. Starts its own
broker (deploy/kafka/kafka.sh) unless `--bootstrap` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from confluent_kafka import Producer  # noqa: E402

from bench_delay import bench_broker, create_topics  # noqa: E402
from processors.state.ledger import Ledger  # noqa: E402


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fill(bootstrap: str, topic: str, entries: int, partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000})
    for i in range(entries):
        key = uuid.uuid4().hex.encode()
        while True:
            try:
                producer.produce(topic, key=key, value=f"00T{i:015d}".encode(), partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)


async def read_back(bootstrap: str, topic: str, partitions: int) -> tuple[int, float, float]:
    """Entries read, seconds, and the memory (MiB) the process grew by while it holds them."""
    async def no_write(partition: int, key: bytes, value: bytes) -> Any:
        raise AssertionError("the benchmark only reads")

    ledger = Ledger(topic=topic, write=no_write, reader_config={"bootstrap.servers": bootstrap}, keep_ms=7 * 24 * 3_600_000)
    before = rss_mib()
    started = time.monotonic()
    await ledger.hold(range(partitions))
    return len(ledger), time.monotonic() - started, rss_mib() - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--bootstrap", help="an existing broker")
    args = p.parse_args()
    with bench_broker(args.bootstrap, "bench-ledger-") as (bootstrap, _, _):
        topic = f"bench.ledger.{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], args.partitions)
        # In a process of its own, so that its buffers do not hide the ledger's memory in ours.
        filler = multiprocessing.get_context("spawn").Process(target=fill, args=(bootstrap, topic, args.entries, args.partitions))
        filler.start()
        filler.join()
        count, seconds, grown = asyncio.run(read_back(bootstrap, topic, args.partitions))
        print(f"ledger read back: {count:,} entries over {args.partitions} partitions in {seconds:.1f} s "
              f"({count / seconds:,.0f} entries/s); memory +{grown:.0f} MiB ({grown * 2**20 / max(1, count):.0f} bytes each)")

if __name__ == "__main__":
    main()
