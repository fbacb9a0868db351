"""Scenario m of bench/chaos.py: hostile records on every input partition, then bookings.

On each partition of each input topic: one record of 1.01 MB (a valid single-object record whose
text field is 1.01 MB long, so Kafka carries it and only the product can refuse it), one whose
array claims 2**62 items (an absurd count its bytes cannot hold) and, in the Confluent wire format
against a real registry (Apicurio, deploy/registry/registry.sh), one whose registered writer
schema nests a recursive record 20,000 deep and one whose `array<null>` claims 4e18 items (the
shapes of tests/integration/test_hostile_schemas.py). Then bookings on the same partitions,
behind them. Every booking arrives, and each bad record is dead-lettered within 30 s of reaching
the broker, while the same worker process keeps running.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from confluent_kafka import Producer

from chaos_env import ROOT, Env, Feeder, Row, log, wait_until
from chaos_fuzz import ARRAY_MARK, _varint, base_records
from processors.codec import Codec, registry_client
from processors.kafka.producer import partition_for
from schemas import load_schema
from tests.integration.test_hostile_schemas import (
    NULL_ARRAY_FIELD, RECURSIVE_FIELD, frame, null_array_tail, recursive_tail, register,
)

OVERSIZED_BYTES = 1_010_000
ABSURD_COUNT = 2**62
DEAD_LETTER_GOAL_S = 30.0
SCHEMA_NAMES = {"meetings": "MeetingBooked", "research": "ResearchCompleted", "surveys": "SurveyAnswered"}


@contextmanager
def registry(workdir: Path) -> Iterator[dict[str, str] | str]:
    """Apicurio for this scenario: the workers' registry env vars, or why it could not start."""
    workdir.mkdir(parents=True, exist_ok=True)
    user_info = f"crm-sync:{secrets.token_hex(12)}"
    sh = ["bash", str(ROOT / "deploy/registry/registry.sh")]
    try:
        proc = subprocess.run([*sh, "start", "--dir", str(workdir), "--owner-pid", str(os.getpid()), "--user", user_info],
                              capture_output=True, text=True, timeout=300)
        ok = proc.returncode == 0
        why = "" if ok else f"registry.sh start: exit {proc.returncode}: {proc.stderr[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, why = False, f"registry.sh start: {exc!r}"
    try:
        if ok:
            base = proc.stdout.strip().splitlines()[-1]
            yield {"SCHEMA_REGISTRY_URL": f"{base}/apis/ccompat/v7", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": user_info}
        else:
            yield why
    finally:
        subprocess.run([*sh, "stop", "--dir", str(workdir)], capture_output=True, timeout=60)


def with_field(name: str, field: dict[str, Any]) -> dict[str, Any]:
    schema = load_schema(name)
    schema["fields"].append(field)
    return schema


def oversized(value: bytes) -> bytes:
    """`value` with its first question's text (ARRAY_MARK, in every input kind) made so long that
    the record is OVERSIZED_BYTES: still a well-formed record, refused by the product only."""
    at = value.find(ARRAY_MARK.encode())
    rest = len(value) - len(ARRAY_MARK) - 1  # without the text and its one-byte length
    filler = OVERSIZED_BYTES - rest
    for _ in range(2):  # the length varint grows with the text: shrink the text by its size
        filler = OVERSIZED_BYTES - rest - len(_varint(filler))
    return value[: at - 1] + _varint(filler) + b"x" * filler + value[at + len(ARRAY_MARK):]


def absurd_count(value: bytes) -> bytes:
    """`value` with its one-item array's block count rewritten to ABSURD_COUNT."""
    qat = value.find(ARRAY_MARK.encode())
    return value[: qat - 2] + _varint(ABSURD_COUNT) + value[qat - 1:]


def scenario_m(ctx: Any) -> Row:
    with registry(ctx.workdir / "registry") as reg:
        return _scenario_m(ctx, reg)


def _scenario_m(ctx: Any, reg: dict[str, str] | str) -> Row:
    count = ctx.size(400, floor=50)
    if isinstance(reg, str):
        log(f"m: no schema registry, so no hostile writer schemas: {reg}")
    env = Env("m", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0, extra_env=reg if isinstance(reg, dict) else None)
    ctx.envs.append(env)
    # One company per input partition (the publisher keys by company), so bookings queue behind
    # the hostile records on every partition.
    partitions = env.deployment.partitions
    names: dict[int, str] = {}
    n = 0
    while len(names) < partitions:
        names.setdefault(partition_for(f"co-{n}".encode(), partitions), f"co-{n}")
        n += 1
    companies = [env.add_company(names[p]) for p in range(partitions)]
    bookers = [f"b{i}@buyer-m.example" for i in range(count)]
    for i, company in enumerate(companies):
        env.seed_bookers(company, bookers[i::partitions])
    env.configure(*companies)
    worker = env.start_worker()
    pid = worker.proc.pid if worker.proc else None
    topics = env.config.topics
    codec = Codec()
    sent: dict[tuple[str, int, int], dict[str, Any]] = {}
    producer = Producer({"bootstrap.servers": ctx.broker.bootstrap, "acks": "all", "linger.ms": 5, "message.max.bytes": 2_000_000})

    def on_delivery(meta: dict[str, Any]):
        def done(err: Any, msg: Any) -> None:
            if err is None:
                sent[(msg.topic(), msg.partition(), msg.offset())] = {**meta, "at_ms": msg.timestamp()[1]}
            else:
                log(f"m: produce failed ({meta['kind']}): {err}")
        return done

    client = registry_client(reg["SCHEMA_REGISTRY_URL"], basic_auth_user_info=reg["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"]) if isinstance(reg, dict) else None
    for attr in ("meetings", "research", "surveys"):
        topic = getattr(topics, attr)
        ids = {kind: register(client, f"{topic}-value", with_field(SCHEMA_NAMES[attr], field))
               for kind, field in (("recursive_schema", RECURSIVE_FIELD), ("null_array_schema", NULL_ARRAY_FIELD))} if client else {}
        for partition, company in enumerate(companies):
            _, value = base_records(codec, company.id)[attr][0]
            bads = [("oversized", oversized(value)), ("absurd_count", absurd_count(value))]
            if ids:
                body = value[10:]  # the single-object frame's header off: the body a Confluent frame carries
                bads += [("recursive_schema", frame(ids["recursive_schema"], body + recursive_tail())),
                         ("null_array_schema", frame(ids["null_array_schema"], body + null_array_tail(0, 0)))]
            for kind, bad in bads:
                producer.produce(topic, key=company.id.encode(), value=bad, partition=partition,
                                 on_delivery=on_delivery({"kind": kind, "size": len(bad)}))
                producer.poll(0)
    left = producer.flush(60)
    bad_total = 3 * (4 if client else 2) * partitions
    log(f"m: {len(sent)}/{bad_total} hostile records on the broker ({left} unconfirmed)")

    feeder = Feeder(env, count, 20.0 if ctx.quick else 40.0,
                    lambda i: env.booking(companies[i % partitions], str(i), bookers[i]))
    feeder.start()

    def letters() -> dict[tuple[str, int, int], dict[str, Any]]:
        return {k: f.record for f in env.dead_letters()
                if (k := (f.record["source_topic"], f.record["source_partition"], f.record["source_offset"])) in sent}

    wait_until(lambda: len(letters()) >= len(sent), 120.0, "m: a dead letter for every hostile record", 2.0)
    feeder.join(300)
    result = env.settle(total_timeout=300.0, quiet=5.0)
    got = letters()
    waits = sorted((got[k]["created_at"] - m["at_ms"]) / 1000 for k, m in sent.items() if k in got)
    slowest = max(waits) if waits else float("nan")
    missing = [sent[k]["kind"] for k in sent if k not in got]
    # The hostile schemas must be refused for their shape, not for some other decode failure.
    misread = [sent[k]["kind"] for k, r in got.items() if sent[k]["kind"].endswith("_schema") and r["error_code"] != "unsafe_schema"]
    alive = worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid and len(env.workers) == 1

    row = Row("m", events=count + len(sent), lost=result.lost, dup_sf=result.dup_sf, dup_hs=result.dup_hs,
              dead_letters=len(got), max_late=max(result.lateness) if result.lateness else None)
    sizes = sorted({m["size"] for m in sent.values() if m["kind"] == "oversized"})
    row.note(f"{len(sent)} hostile records ({bad_total} planned: 1.01 MB, a 2**62 array count"
             f"{', a 20,000-deep recursive and a 4e18 array<null> writer schema (Apicurio)' if client else ''} on each of"
             f" {partitions} partitions x 3 input topics; oversized sizes {sizes[0] if sizes else '-'}..{sizes[-1] if sizes else '-'} B);"
             f" dead-lettered {len(got)}, slowest {slowest:.2f} s after reaching the broker (goal <= {DEAD_LETTER_GOAL_S:.0f} s);"
             f" by kind: {dict(Counter((sent[k]['kind'], r['stage'], r['error_code']) for k, r in got.items()))}")
    if missing:
        row.note(f"no dead letter for {len(missing)}: {missing[:6]}")
    if misread:
        row.note(f"hostile schemas refused for another reason than unsafe_schema: {Counter(misread)}")
    row.note(f"bookings: {count} published, feeder error {feeder.error!r}; same worker process throughout: {alive}"
             + ("" if client else f"; NOT covered: hostile writer schemas (no registry: {reg})"))
    row.goal_met = (
        len(sent) == bad_total and not missing and not misread and slowest <= DEAD_LETTER_GOAL_S and row.lost == 0
        and row.dup_sf == 0 and row.dup_hs == 0 and feeder.error is None and feeder.sent == count and alive and client is not None
    )
    env.stop()
    return row
