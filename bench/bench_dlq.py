"""How fast the failure-history tools answer when the dead-letter topic is full (run on demand).

    .venv/bin/python bench/bench_dlq.py [--dead-letters 1000000] [--companies 2000] [--partitions 6]
                                        [--days 30] [--bootstrap HOST:PORT] [--full]

Writes `--dead-letters` dead letters, as the worker writes them (the `DeadLetter` record keyed by
company, its index entry keyed by id), stamped evenly over the last `--days` days for `--companies`
companies, then times the real CLI (a subprocess, as an admin runs it, interpreter start included):
`dlq list --company C --since 1h`, `dlq list --since 1h` (every company), `dlq show ID` of the
oldest dead letter, and `dlq retry ID --dry-run`. `--full` also times the read of everything (what
every call did before the range reads). Starts its own broker unless `--bootstrap` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from confluent_kafka import Producer  # noqa: E402

from bench_delay import bench_broker  # noqa: E402
from processors.codec import Codec  # noqa: E402
from processors.config import TOPIC_ENV, Config, Topics  # noqa: E402
from processors.domain.deadletter import Source, dead_letter  # noqa: E402
from processors.domain.deadletter_index import entry_of  # noqa: E402
from processors.kafka import topics as kafka_topics  # noqa: E402
from processors.ops.dlq import read_dead_letters  # noqa: E402

DAY_MS = 24 * 3600 * 1000


def fill(bootstrap: str, topics: Topics, count: int, companies: int, days: int) -> tuple[str, str]:
    """Writes the dead letters; returns (a company with a dead letter in the last hour, the oldest id)."""
    codec = Codec()
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 50,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000, "compression.type": "lz4"})
    now = int(time.time() * 1000)
    start = now - days * DAY_MS
    step = (now - start) / count
    oldest = ""
    payload = b"\x00" + os.urandom(300)  # an undecodable input record, as a decode failure carries
    for i in range(count):
        at = int(start + i * step)
        company = f"company-{i % companies:05d}"
        letter = dead_letter(stage="decode", error_class="DecodeError", message="not Avro: bad magic byte", company_id=company,
                             now_ms=at, source=Source("scheduling.meetings.v1", i % 6, i, company.encode(), payload))
        entry = entry_of(letter)
        for topic, key, value in ((topics.dead_letter, company.encode(), codec.encode("DeadLetter", letter)),
                                  (topics.dead_letter_index, entry.key, entry.to_json())):
            while True:
                try:
                    producer.produce(topic, key=key, value=value, timestamp=at)
                    break
                except BufferError:
                    producer.poll(0.1)
        if i == 0:
            oldest = letter["dead_letter_id"]
        if i % 100_000 == 0:
            print(f"  {i:,} written", file=sys.stderr, flush=True)
    assert producer.flush(300) == 0
    return f"company-{(count - 1) % companies:05d}", oldest


def timed_cli(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "processors.ops.cli", "dlq", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"dlq {' '.join(args)} failed: {done.stderr}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dead-letters", type=int, default=1_000_000)
    parser.add_argument("--companies", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--bootstrap")
    parser.add_argument("--full", action="store_true", help="also time a read of the whole topic")
    args = parser.parse_args()
    with bench_broker(args.bootstrap, "bench-dlq-") as (bootstrap, _work, _own):
        suffix = str(int(time.time()))
        topics = Topics(**{name: f"bench-dlq.{name}.{suffix}" for name in TOPIC_ENV})
        config = Config(bootstrap_servers=bootstrap, topics=topics, topic_partitions=args.partitions)
        kafka_topics.create_missing(config, [topics.dead_letter, topics.dead_letter_index])
        started = time.monotonic()
        company, oldest = fill(bootstrap, topics, args.dead_letters, args.companies, args.days)
        print(f"wrote {args.dead_letters:,} dead letters over {args.days} days in {time.monotonic() - started:.0f} s", file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_SYNC_")}
        env.update({TOPIC_ENV[name]: getattr(topics, name) for name in TOPIC_ENV})
        env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, CRM_SYNC_TOPIC_PARTITIONS=str(args.partitions))
        rows = []
        for label, cli_args in (
            (f"dlq list --company {company} --since 1h", ("list", "--json", "--company", company, "--since", "1h")),
            ("dlq list --since 1h (every company)", ("list", "--json", "--since", "1h")),
            ("dlq show ID (the oldest, 30 days back)", ("show", oldest)),
            ("dlq retry ID --dry-run (the oldest)", ("retry", oldest, "--dry-run", "--json")),
        ):
            runs = [timed_cli(env, *cli_args) for _ in range(3)]
            lines = len(runs[-1][1].splitlines()) if cli_args[0] == "list" else 1
            rows.append((label, min(s for s, _ in runs), max(s for s, _ in runs), lines))
        if args.full:
            started = time.monotonic()
            everything = read_dead_letters(config, Codec(), timeout=600)
            rows.append(("the whole topic read (in-process, no CLI start)", time.monotonic() - started, time.monotonic() - started, len(everything)))
        print(f"\n{args.dead_letters:,} dead letters, {args.companies:,} companies, {args.partitions} partitions, {args.days} days\n")
        print("| command | best of 3 | worst of 3 | records answered |")
        print("|---|---|---|---|")
        for label, best, worst, lines in rows:
            print(f"| `{label}` | {best:.2f} s | {worst:.2f} s | {lines:,} |")
        print(json.dumps({"rows": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
