"""Catch-up after an outage (issue 16): `--events` bookings wait on the meetings topic when the
worker starts; prints the time from the worker's start until all their actions are on the delay
topic, and the worker's peak RSS meanwhile (run on demand; never a test).

    .venv/bin/python bench/bench_catchup.py                  # 100,000 events
    .venv/bin/python bench/bench_catchup.py --events 20000

The backlog is `bench_delay.py`'s ingest set-up (one settings company, 2 actions an event), so the
figures are comparable with its part (a). The time includes the worker's start (topics, settings
table, group join); the rate is taken from the delay topic's record timestamps, as in (a).
"""

from __future__ import annotations

import argparse
import os

from bench_delay import bench_broker, bench_ingest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--bootstrap", help="an existing broker")
    p.add_argument("--ingest-processes", type=int, default=os.cpu_count() or 1, help="the worker's CRM_SYNC_INGEST_PROCESSES")
    args = p.parse_args()
    with bench_broker(args.bootstrap, "bench-catchup-") as (bootstrap, work, _):
        print(f"broker {bootstrap}; {os.cpu_count()} CPUs; partitions {args.partitions}", flush=True)
        a = bench_ingest(bootstrap, args.events, args.partitions, work, processes=args.ingest_processes)
        print(f"catch-up, {args.events:,} events waiting (2 actions each) when the worker starts"
              f" (CRM_SYNC_INGEST_PROCESSES={args.ingest_processes}):")
        print(f"    all actions on the delay topic {a['caught_up_s']:.1f} s after the worker's start"
              f" (ready after {a['worker_ready_s']:.1f} s; {a['worker_events_per_s']:,.0f} events/s)")
        print(f"    worker peak RSS {a['worker_peak_rss_mib']:.0f} MiB (with its ingest processes)")
        print(f"    bare loop over the same backlog {a['bare_events_per_s']:,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
