"""Delay-store figures for this machine against a real local broker (run on demand; never a test).

    .venv/bin/python bench/bench_delay.py            # issue 4 sizes (about 10-15 minutes)
    .venv/bin/python bench/bench_delay.py --quick    # small sizes, about 3 minutes

Starts its own broker (deploy/kafka/kafka.sh, so the delay topic's disk use can be measured) unless
`--bootstrap` is given, then prints:

(a) ingest throughput: the real worker process (`crm-sync worker`) over a pre-filled meetings topic
    (decode → settings join → plan → delay topic), measured from the delay topic's record
    timestamps, once ingesting in its own process and once with `--ingest-processes` ingest
    processes (CRM_SYNC_INGEST_PROCESSES), each beside a bare confluent-kafka consume → decode →
    produce loop over the same records;
(b) due-time lateness p50/p99/max: `--lateness-actions` actions due at a steady rate, released by
    the real `DelayReleaser` in a process of its own (the worker's release loop without its sinks),
    lateness = due-topic record timestamp - due_at;
(c) `--held-actions` actions held (due over the next ~10 minutes at 1,700/s): the releaser's peak
    RSS, the delay topic's disk use, then kill -9 and the time until it fires again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from processors.ops.admin import SettingsAdmin  # noqa: E402
from processors.codec import Codec  # noqa: E402
from processors.config import TOPIC_ENV, Config, Topics  # noqa: E402
from processors.domain.model import Crm, EventType  # noqa: E402
import bench_sinks  # noqa: E402
import hotspots  # noqa: E402

COMPANY = "bench-co"
MEETING_TYPE = "intro-30"
HELD_RATE = 1_700  # events/s at peak (issue 4): 1,000,000 ≈ 10 minutes of it


# ---- broker and topics ---------------------------------------------------------------------------


def start_broker(workdir: Path) -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "deploy/kafka/kafka.sh"), "start", "--dir", str(workdir), "--owner-pid", str(os.getpid())],
        capture_output=True, text=True, check=True, env=dict(os.environ, PYTHON=sys.executable),
    )
    return out.stdout.strip().splitlines()[-1]


def stop_broker(workdir: Path) -> None:
    subprocess.run(["bash", str(ROOT / "deploy/kafka/kafka.sh"), "stop", "--dir", str(workdir)], capture_output=True)


@contextlib.contextmanager
def bench_broker(bootstrap: str | None, prefix: str) -> Iterator[tuple[str, Path, Path | None]]:
    """The given broker, or one of our own: yields (bootstrap, a scratch dir, our broker's dir or None)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    own = None
    try:
        if bootstrap is None:
            own = work / "kafka"
            bootstrap = start_broker(own)
        yield bootstrap, work, own
    finally:
        if own is not None:
            stop_broker(own)
        shutil.rmtree(work, ignore_errors=True)


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]).values():
        fut.result(30)


def end_offsets(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def scan(bootstrap: str, topic: str, want: int, timeout: float = 120.0, start_after_ms: int = 0) -> list[Any]:
    """(timestamp ms, headers dict, value) of the first `want` records (all partitions, from the start)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            for msg in c.consume(10_000, 0.5):
                if msg.error():
                    continue
                ts = msg.timestamp()[1]
                if ts >= start_after_ms:
                    out.append((ts, dict(msg.headers() or ()), msg.value()))
    finally:
        c.close()
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def disk_bytes(broker_dir: Path | None, topic: str) -> int | None:
    if broker_dir is None:
        return None
    return sum(f.stat().st_size for d in broker_dir.rglob(f"{topic}-*") if d.is_dir() for f in d.iterdir())


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _tree(pid: int) -> list[int]:
    return [pid, *(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of the worker and its child processes so far."""
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_peak_mib(pid: int) -> float:
    """The worker's peak RSS plus each of its child processes' (ingest processes, resource tracker):
    a sum of peaks, so at least the tree's peak."""
    total = 0.0
    for member in _tree(pid):
        try:
            total += rss_peak_mib(member)
        except OSError:  # gone meanwhile
            continue
    return total


# ---- (a) ingest ----------------------------------------------------------------------------------


def booking(i: int, now_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"evt-bench-{i}-{uuid.uuid4().hex[:8]}", "occurred_at": now_ms, "company_id": COMPANY,
        "meeting_type_id": MEETING_TYPE, "meeting_id": f"m-{i}", "meeting_type_name": "Intro call (30 min)",
        "host": {"email": "host@seller.example", "name": "Hana Host"},
        "booker": {"email": f"booker{i}@buyer.example", "name": "Bo Booker", "company_name": "Buyer Inc."},
        "start_at": now_ms + 86_400_000, "end_at": now_ms + 88_200_000, "timezone": "Asia/Tokyo",
        "meeting_url": "https://meet.example.com/abc", "form_answers": [{"question": "Budget?", "answer": "large"}],
    }


def worker_env(bootstrap: str, topics: Topics, app_id: str, state: Path, delay_s: float, partitions: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_SYNC_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap, CRM_SYNC_DELAY_SECONDS=str(delay_s), CRM_SYNC_APP_ID=app_id,
        CRM_SYNC_TOPIC_PARTITIONS=str(partitions), CRM_SYNC_STATE_DIR=str(state / "state"),
        CRM_SYNC_SECRETS_DIR=str(state / "secrets"), CRM_SYNC_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
    )
    env.update({var: getattr(topics, name) for name, var in TOPIC_ENV.items()})
    return env


def bench_ingest(
    bootstrap: str, events: int, partitions: int, work: Path, profile: Path | None = None, processes: int = 0
) -> dict[str, Any]:
    """`processes` is the worker's CRM_SYNC_INGEST_PROCESSES (0: ingest in the worker's own process)."""
    sfx = uuid.uuid4().hex[:8]
    topics = Topics(**{f.name: f"bench.{f.name}.{sfx}" for f in dataclasses.fields(Topics)})
    create_topics(bootstrap, [topics.meetings, topics.research, topics.surveys, topics.delay, topics.due_salesforce, topics.due_hubspot], partitions)
    env = dict(worker_env(bootstrap, topics, f"bench-{sfx}", work, 600.0, partitions), CRM_SYNC_INGEST_PROCESSES=str(processes))
    admin = SettingsAdmin(Config.from_env(env), actor="bench")
    for crm in Crm:
        admin.set_connected(COMPANY, crm, True)
        admin.set_toggle(COMPANY, MEETING_TYPE, crm, EventType.MEETING_BOOKED, True)

    codec = Codec()
    now = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(events):
        # One key per event spreads the load over the partitions as many companies would.
        producer.produce(topics.meetings, key=f"k{i}".encode(), value=codec.encode("MeetingBooked", booking(i, now)))
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)

    port = _free_port()
    log = open(work / "worker.log", "ab")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT,
                            env=dict(env, CRM_SYNC_METRICS_PORT=str(port)), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _ready(port), 120, "worker readiness", log=work / "worker.log")
        ready_s = time.monotonic() - started
        cpu_at_ready = tree_cpu_seconds(proc.pid)
        sampler = hotspots.attach(proc.pid, profile) if profile is not None else None
        _wait(lambda: end_offsets(bootstrap, topics.delay) >= 2 * events, 1800, "every action on the delay topic")
        caught_up_s = time.monotonic() - started
        cpu_us_per_event = (tree_cpu_seconds(proc.pid) - cpu_at_ready) / events * 1e6
        peak_rss = tree_rss_peak_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        if sampler is not None:
            sampler.wait(60)
    stamps = sorted(ts for ts, _, _ in scan(bootstrap, topics.delay, 2 * events))
    worker_rate = events / max(1e-3, (stamps[-1] - stamps[0]) / 1000)

    # The bare loop: the same records, consume → decode → produce, no Faust, no planning.
    out_topic = f"bench.bare.{sfx}"
    create_topics(bootstrap, [out_topic], partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{sfx}", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topics.meetings])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    seen, first = 0, None
    cpu_start = time.process_time()  # this process, librdkafka's threads included
    while seen < events:
        for msg in consumer.consume(1000, 1.0):
            if msg.error():
                continue
            first = first or time.monotonic()
            codec.decode(msg.value())
            producer.produce(out_topic, key=msg.key(), value=msg.value())
            seen += 1
        producer.poll(0)
    producer.flush(60)
    bare_rate = events / (time.monotonic() - (first or time.monotonic()))
    bare_cpu_us = (time.process_time() - cpu_start) / events * 1e6
    consumer.close()
    return {"worker_ready_s": ready_s, "worker_events_per_s": worker_rate, "bare_events_per_s": bare_rate,
            "caught_up_s": caught_up_s, "worker_peak_rss_mib": peak_rss, "worker_cpu_us_per_event": cpu_us_per_event,
            "bare_cpu_us_per_event": bare_cpu_us,
            "sample": scan(bootstrap, topics.delay, 1)[0]}


# ---- (b)/(c) the releaser in a process of its own --------------------------------------------------


async def run_releaser(
    bootstrap: str, topic: str, due_topic: str, group: str, lookahead: float, max_buffered: int, instance_id: str | None
) -> None:
    """The worker's release loop minus the sinks: every action goes to one due topic."""
    from aiokafka import AIOKafkaProducer

    from processors.domain.release import Held, Release
    from processors.kafka import clients
    from processors.kafka.releaser import DelayReleaser

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()

    async def emit(held: Held) -> Any:
        return await producer.send(due_topic, key=held.action_id.encode(), value=held.value, headers=list(held.headers))

    async def nothing(*args: Any) -> Any:
        raise AssertionError("the benchmark's actions are all deliverable and well formed")

    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **({"CRM_SYNC_GROUP_INSTANCE_ID": instance_id} if instance_id else {})}
    releaser = DelayReleaser(
        topic=topic, consumer_config=clients.group_consumer(Config.from_env(env), group),
        decide=lambda company, crm: Release.DELIVER, emit=emit, drop=nothing, reject=nothing,
        lookahead_seconds=lookahead, max_buffered=max_buffered,
    )
    try:
        await releaser.run()
    finally:
        await producer.stop()


def spawn_releaser(bootstrap: str, topic: str, due_topic: str, group: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "releaser", "--bootstrap", bootstrap, "--topic", topic, "--due-topic", due_topic,
         "--group", group, "--lookahead", str(args.lookahead), "--max-buffered", str(args.max_buffered),
         *(["--instance-id", f"{group}-releaser"] if args.static_membership else [])],
        cwd=ROOT,
    )


def prefill_delay(bootstrap: str, topic: str, count: int, first_due_ms: int, rate: float, sample: Any) -> None:
    """`count` actions like the worker writes them, due at a steady `rate` from `first_due_ms`."""
    _, headers, value = sample
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000})
    for i in range(count):
        due = first_due_ms + int(i * 1000 / rate)
        h = {**headers, "due_at": str(due).encode(), "action_id": f"bench-{i}".encode(), "company_id": f"co-{i % 500}".encode()}
        while True:
            try:
                producer.produce(topic, key=h["company_id"], value=value, headers=list(h.items()), timestamp=due - 600_000)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 50_000 == 0:
            producer.poll(0)
    producer.flush(120)


def bench_lateness(bootstrap: str, count: int, rate: float, partitions: int, sample: Any, args: argparse.Namespace) -> dict[str, float]:
    sfx = uuid.uuid4().hex[:8]
    delay_topic, due_topic = f"bench.late-delay.{sfx}", f"bench.late-due.{sfx}"
    create_topics(bootstrap, [delay_topic, due_topic], partitions)
    first_due = int(time.time() * 1000) + 20_000
    prefill_delay(bootstrap, delay_topic, count, first_due, rate, sample)
    proc = spawn_releaser(bootstrap, delay_topic, due_topic, f"bench-late-{sfx}", args)
    try:
        _wait(lambda: end_offsets(bootstrap, due_topic) >= count, 60 + count / rate * 2, "every action released")
    finally:
        proc.kill()
        proc.wait()
    late = sorted((ts - int(h["due_at"])) / 1000 for ts, h, _ in scan(bootstrap, due_topic, count))
    early = sum(1 for x in late if x < 0)
    return {"count": len(late), "p50": percentile(late, 0.50), "p99": percentile(late, 0.99), "max": late[-1], "early": early}


def bench_held(bootstrap: str, count: int, partitions: int, sample: Any, args: argparse.Namespace, broker_dir: Path | None) -> dict[str, Any]:
    sfx = uuid.uuid4().hex[:8]
    delay_topic, due_topic = f"bench.held-delay.{sfx}", f"bench.held-due.{sfx}"
    create_topics(bootstrap, [delay_topic, due_topic], partitions)
    first_due = int(time.time() * 1000) + 45_000 + int(count / 200)  # time to prefill first
    prefill_delay(bootstrap, delay_topic, count, first_due, HELD_RATE, sample)
    group = f"bench-held-{sfx}"
    proc = spawn_releaser(bootstrap, delay_topic, due_topic, group, args)
    peak = 0.0
    # Run until the first actions are due and a lookahead's worth is buffered, then 10 s of firing.
    while time.time() * 1000 < first_due + 10_000:
        peak = max(peak, rss_peak_mib(proc.pid))
        time.sleep(0.5)
    peak = max(peak, rss_peak_mib(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(args.downtime)
    restarted = time.time()
    proc = spawn_releaser(bootstrap, delay_topic, due_topic, group, args)
    try:
        resumed = _wait(lambda: scan(bootstrap, due_topic, 1, timeout=2, start_after_ms=int(restarted * 1000)), 120, "the first release after restart")
        resume_s = resumed[0][0] / 1000 - restarted
        time.sleep(10)
        peak2 = rss_peak_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    after = [(ts - int(h["due_at"])) / 1000 for ts, h, _ in scan(bootstrap, due_topic, 10**9, timeout=15, start_after_ms=int(restarted * 1000))]
    overdue = sorted(x for x in after if x > 0.5)
    return {
        "held": count, "peak_rss_mib": max(peak, peak2), "disk_mib": (disk_bytes(broker_dir, delay_topic) or 0) / 2**20 if broker_dir else None,
        "resume_s": resume_s,
        "overdue_fired": len(overdue), "overdue_max_late_s": overdue[-1] if overdue else 0.0,
    }


# ---- plumbing ---------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _wait(check: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log else ""
            raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "releaser"], help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="small sizes: 5,000 events, 20,000 and 100,000 actions")
    p.add_argument("--bootstrap", help="an existing broker (disk use then needs --broker-dir)")
    p.add_argument("--broker-dir", type=Path, help="that broker's data dir, to measure the delay topic's disk use")
    p.add_argument("--only", choices=["a", "b", "c"], help="run one part: (a) ingest, (b) lateness, (c) held")
    p.add_argument("--ingest-events", type=int, default=20_000)
    p.add_argument("--ingest-processes", type=int, default=os.cpu_count() or 1,
                   help="(a): CRM_SYNC_INGEST_PROCESSES of the second worker run (the first ingests in-process)")
    p.add_argument("--profile", type=Path, help="(a): sample the worker with py-spy from readiness on; collapsed stacks to this file")
    p.add_argument("--lateness-actions", type=int, default=100_000)
    p.add_argument("--lateness-rate", type=float, default=2_000.0, help="actions due per second in (b)")
    p.add_argument("--held-actions", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--lookahead", type=float, default=60.0)
    p.add_argument("--max-buffered", type=int, default=100_000)
    p.add_argument("--downtime", type=float, default=5.0, help="seconds between kill -9 and restart in (c)")
    p.add_argument("--static-membership", action="store_true", help="the releaser restarts with the same group instance id (CRM_SYNC_GROUP_INSTANCE_ID)")
    p.add_argument("--instance-id", help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--due-topic", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "releaser":
        asyncio.run(run_releaser(args.bootstrap, args.topic, args.due_topic, args.group, args.lookahead, args.max_buffered, args.instance_id))
        return
    if args.quick:
        args.ingest_events, args.lateness_actions, args.held_actions = 5_000, 20_000, 100_000

    with bench_broker(args.bootstrap, "bench-delay-") as (bootstrap, work, own_broker):
        broker_dir = own_broker or args.broker_dir
        print(f"broker {bootstrap}; {os.cpu_count()} CPUs; partitions {args.partitions}", flush=True)

        a = bench_ingest(bootstrap, args.ingest_events, args.partitions, work, args.profile)
        if args.only in (None, "a"):
            pooled = bench_ingest(bootstrap, args.ingest_events, args.partitions, work, processes=args.ingest_processes)
            print(f"(a) ingest, {args.ingest_events:,} events (2 actions each) through the worker process:")
            print(f"    worker  {a['worker_events_per_s']:10,.0f} events/s   in-process (CRM_SYNC_INGEST_PROCESSES=0), ratio"
                  f" {a['worker_events_per_s'] / a['bare_events_per_s']:.2f}; peak RSS {a['worker_peak_rss_mib']:.0f} MiB;"
                  f" CPU {a['worker_cpu_us_per_event']:.0f} µs an event")
            print(f"    worker  {pooled['worker_events_per_s']:10,.0f} events/s   CRM_SYNC_INGEST_PROCESSES={args.ingest_processes}, ratio"
                  f" {pooled['worker_events_per_s'] / pooled['bare_events_per_s']:.2f}; peak RSS {pooled['worker_peak_rss_mib']:.0f} MiB,"
                  f" CPU {pooled['worker_cpu_us_per_event']:.0f} µs an event (worker + ingest processes)")
            print(f"    bare    {a['bare_events_per_s']:10,.0f} / {pooled['bare_events_per_s']:,.0f} events/s   confluent-kafka consume → decode → produce,"
                  f" measured after each worker run; CPU {a['bare_cpu_us_per_event']:.0f} µs an event", flush=True)
            # The next stage downstream, so the table shows where the bottleneck moves: the sinks'
            # objects/s into the CRM sandbox with the stage's 200-action batches.
            for crm, row in bench_sinks.run(2_000, 5, 20, 200).items():
                print(f"    sink    {row['objects_per_second']:10,.0f} objects/s   {crm}, 200-action batches (bench_sinks.py)", flush=True)
            if args.profile is not None:
                print(hotspots.report(args.profile), flush=True)
        if args.only == "a":
            return

        if args.only in (None, "b"):
            b = bench_lateness(bootstrap, args.lateness_actions, args.lateness_rate, args.partitions, a["sample"], args)
            print(f"(b) lateness, {b['count']:,} actions due at {args.lateness_rate:,.0f}/s, releaser process:")
            print(f"    p50 {b['p50'] * 1000:.0f} ms   p99 {b['p99'] * 1000:.0f} ms   max {b['max'] * 1000:.0f} ms   early {b['early']}", flush=True)
        if args.only == "b":
            return

        c = bench_held(bootstrap, args.held_actions, args.partitions, a["sample"], args, broker_dir)
        disk = f"{c['disk_mib']:.0f} MiB" if c["disk_mib"] is not None else "n/a (pass --broker-dir)"
        membership = "static" if args.static_membership else "dynamic"
        print(f"(c) {c['held']:,} actions held (due over {c['held'] / HELD_RATE:.0f} s), lookahead {args.lookahead:.0f} s, max_buffered {args.max_buffered:,}, {membership} group membership:")
        print(f"    peak RSS {c['peak_rss_mib']:.0f} MiB   delay topic on disk {disk}")
        print(f"    kill -9, {args.downtime:.0f} s down, restart → first release after {c['resume_s']:.2f} s;"
              f" {c['overdue_fired']:,} overdue actions fired, the latest {c['overdue_max_late_s']:.1f} s after its due time")


if __name__ == "__main__":
    main()
