"""A worker's restart with static membership (CRM_SYNC_GROUP_INSTANCE_ID) on a real local broker:
how long from the process's start until it is ready and every stage's consumer group has it back
as a member (joined). The group session (CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS) must be longer than
a restart (stop + start → joined), or the broker rebalances the group meanwhile (run on demand;
never a test).

    nice -n 19 .venv/bin/python bench/bench_restart.py [--restarts 3] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import subprocess
import sys
import time
import uuid

from confluent_kafka.admin import AdminClient

from bench_delay import ROOT, _free_port, _ready, _wait, bench_broker, create_topics, worker_env
from processors.config import Topics

INSTANCE = "bench-restart-0"


def members(bootstrap: str, app_id: str) -> dict[str, set[str]]:
    """Member ids of our static instance in each of the app's consumer groups."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid if g.group_id.startswith(app_id)]
    if not groups:
        return {}
    return {
        group: {m.member_id for m in future.result(timeout=30).members if m.group_instance_id == INSTANCE}
        for group, future in admin.describe_consumer_groups(groups).items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--bootstrap", help="an existing broker")
    args = p.parse_args()
    with bench_broker(args.bootstrap, "bench-restart-") as (bootstrap, work, _):
        sfx = uuid.uuid4().hex[:8]
        topics = Topics(**{f.name: f"bench.{f.name}.{sfx}" for f in dataclasses.fields(Topics)})
        create_topics(bootstrap, [topics.meetings, topics.research, topics.surveys], args.partitions)
        app_id = f"bench-{sfx}"
        env = dict(
            worker_env(bootstrap, topics, app_id, work, 600.0, args.partitions),
            CRM_SYNC_GROUP_INSTANCE_ID=INSTANCE, CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS="60000",
        )
        previous: dict[str, set[str]] = {}
        for run in range(args.restarts + 1):
            port = _free_port()
            log = work / f"worker-{run}.log"
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT,
                                    env=dict(env, CRM_SYNC_METRICS_PORT=str(port)), stdout=open(log, "ab"), stderr=subprocess.STDOUT)
            _wait(lambda: _ready(port), 180, "worker readiness", log=log)
            ready_s = time.monotonic() - started

            def joined() -> dict[str, set[str]] | None:
                now = members(bootstrap, app_id)
                fresh = now and all(ids and not ids & previous.get(group, set()) for group, ids in now.items())
                return now if fresh else None

            previous = _wait(joined, 180, "every stage group with the new member", log=log)
            joined_s = time.monotonic() - started
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            stop_s = time.monotonic() - stopping
            kind = "first start" if run == 0 else f"restart {run}"
            print(f"{kind}: ready {ready_s:.1f} s, joined ({len(previous)} groups) {joined_s:.1f} s after the process start;"
                  f" stop (SIGTERM → exit) {stop_s:.1f} s", flush=True)


if __name__ == "__main__":
    main()
