"""Scenarios e and g of bench/chaos.py: fuzzed records on every input topic and on the settings
topic, and an admin transaction left open on the settings topic while the worker starts."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from chaos_env import MEETING_TYPE, Env, Feeder, Row, fetch, log, now_ms, rng_for, wait_until
from processors.codec import Codec
from processors.domain import rules
from processors.domain.deadletter import Source
from processors.domain.ingest import ingest
from processors.domain.model import CompanySettings, Crm, EventType, ValidationError
from processors.domain.records import company_to_record
from processors.domain.audit import Stamp
from processors.state.settings import parse_settings_record
from processors.codec import DecodeError

INPUT_STAGES = {"decode", "validate", "plan"}


# ---- mutations -----------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    """Avro's zig-zag varint of n (any size: absurd lengths are the point)."""
    z = (n << 1) ^ (n >> 63) if -(2**63) <= n < 2**63 else n << 1
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _person(email: str) -> dict[str, Any]:
    return {"email": email, "name": "Fuzz Person", "company_name": "Fuzz Inc.", "phone": None}


STRING_MARK, ARRAY_MARK = "S7sentinelS7", "Q7sentinelQ7"


def base_records(codec: Codec, company: str) -> dict[str, list[tuple[str, bytes]]]:
    """Valid encoded records per input kind; STRING_MARK is a string and ARRAY_MARK the first
    question of a one-item array, whose length prefixes the absurd-length mutations rewrite."""
    now = now_ms()
    common = lambda: {"event_id": f"evt-fuzz-{uuid.uuid4().hex[:8]}", "occurred_at": now, "company_id": company,  # noqa: E731
                      "meeting_type_id": MEETING_TYPE}
    qa = [{"question": ARRAY_MARK, "answer": "yes"}]
    sentinel = STRING_MARK
    meeting = {**common(), "meeting_id": "m-1", "meeting_type_name": sentinel, "host": _person("host@seller.example"),
               "booker": _person("fuzz.booker@buyer.example"), "start_at": now + 86_400_000, "end_at": now + 88_200_000,
               "timezone": "Asia/Tokyo", "meeting_url": "https://meet.example.com/fuzz", "form_answers": qa}
    research = {**common(), "research_kind": "COMPANY", "target": _person("fuzz.target@buyer.example"), "form_answers": qa,
                "result": sentinel}
    pre_meeting = {**common(), "survey_kind": "PRE_MEETING", "respondent": _person("fuzz.resp@buyer.example"),
                   "host": _person("host@seller.example"), "meeting_start_at": now + 86_400_000, "timezone": "Asia/Tokyo", "answers": qa}
    pre_exit = {**common(), "survey_kind": "PRE_EXIT", "respondent": _person("fuzz.resp@buyer.example"), "host": None,
                "meeting_start_at": None, "timezone": None, "answers": qa}
    return {
        "meetings": [("MeetingBooked", codec.encode("MeetingBooked", meeting))],
        "research": [("ResearchCompleted", codec.encode("ResearchCompleted", research))],
        "surveys": [("SurveyAnswered", codec.encode("SurveyAnswered", pre_meeting)), ("SurveyAnswered", codec.encode("SurveyAnswered", pre_exit))],
    }


def mutate(rng: random.Random, value: bytes, other: bytes) -> tuple[str, bytes | None]:
    """One mutation of a valid single-object record: (kind, bytes or None for a tombstone)."""
    kind = rng.choice(["bitflip", "bitflip", "bitflip_body", "bitflip_body", "truncate", "truncate", "garbage", "garbage_magic",
                       "unknown_fingerprint", "absurd_string", "absurd_array", "negative_length", "trailing", "empty",
                       "tombstone", "confluent", "wrong_schema", "huge_string", "splice"])
    data = bytearray(value)
    if kind in ("bitflip", "bitflip_body"):
        lo = 10 if kind == "bitflip_body" else 0
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(lo, len(data))
            data[i] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "truncate":
        return kind, bytes(data[: rng.randrange(0, len(data))])
    if kind == "garbage":
        return kind, rng.randbytes(rng.randint(1, 400))
    if kind == "garbage_magic":
        return kind, bytes(data[:10]) + rng.randbytes(rng.randint(0, 400))
    if kind == "unknown_fingerprint":
        return kind, b"\xc3\x01" + rng.randbytes(8) + bytes(data[10:])
    at, qat = value.find(STRING_MARK.encode()), value.find(ARRAY_MARK.encode())
    if kind in ("absurd_string", "negative_length") and at > 2:
        # A short string's length varint is the one byte before it.
        n = rng.choice([2**31, 2**40, 2**62, 2**63 - 1]) if kind == "absurd_string" else rng.choice([-1, -2, -(2**40)])
        return kind, value[: at - 1] + _varint(n) + value[at:]
    if kind == "absurd_array" and qat > 2:
        # The array's block count precedes its first item (whose first field is the question).
        n = rng.choice([2**31, 2**40, 2**62, -(2**40)])
        return kind, value[: qat - 2] + _varint(n) + value[qat - 1:]
    if kind == "trailing":
        return kind, value + rng.randbytes(rng.randint(1, 16))
    if kind == "empty":
        return kind, b""
    if kind == "tombstone":
        return kind, None
    if kind == "confluent":
        return kind, b"\x00" + rng.randbytes(4) + value[10:]
    if kind == "wrong_schema":
        return kind, other
    if kind == "huge_string":
        return kind, value[: at - 1] + _varint(300_000) + b"x" * 300_000 + value[at + len(STRING_MARK):] if at > 2 else value
    # splice: the header of one record with a random slice of itself
    i, j = sorted(rng.sample(range(10, len(data)), 2))
    return kind, bytes(data[:i] + data[j:] + data[i:j])


# ---- e. fuzz --------------------------------------------------------------------------------------


class LivenessProbe(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(name="liveness", daemon=True)
        self.url = f"http://127.0.0.1:{port}/health/live"
        self.stop = threading.Event()
        self.answers = self.failures = 0
        self.slowest = 0.0

    def run(self) -> None:
        while not self.stop.wait(0.25):
            status, took = fetch(self.url, timeout=2.0)
            self.slowest = max(self.slowest, took)
            if status == 200:
                self.answers += 1
            else:
                self.failures += 1


def scenario_e(ctx: Any) -> Row:
    per_topic, settings_count = ctx.size(1_000, floor=50), ctx.size(200, floor=25)
    env = Env("e", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0)
    ctx.envs.append(env)
    row = Row("e", events=3 * per_topic + settings_count)
    rng = rng_for(ctx.seed, "e")
    company = env.add_company("fuzz-co")
    env.seed_bookers(company, ["canary@buyer-e.example"])
    env.configure(company)
    before = env.admin.show(company.id)
    worker = env.start_worker()
    pid = worker.proc.pid if worker.proc else None
    probe = LivenessProbe(worker.port)
    probe.start()

    codec = Codec()
    bases = base_records(codec, company.id)
    other = codec.encode("CompanySettings", company_to_record(CompanySettings(company.id, updated_at=now_ms())))
    store = env.admin.load()  # the settings the worker plans with, for the oracle
    topics = env.config.topics
    sent: list[dict[str, Any]] = []
    producer = Producer({"bootstrap.servers": ctx.broker.bootstrap, "acks": "all", "linger.ms": 5, "message.max.bytes": 2_000_000})

    def on_delivery(meta: dict[str, Any]):
        def done(err: Any, msg: Any) -> None:
            if err is None:
                meta.update(partition=msg.partition(), offset=msg.offset())
                sent.append(meta)
            else:
                log(f"e: produce failed ({meta['kind']}): {err}")
        return done

    kinds: Counter[str] = Counter()
    for attr in ("meetings", "research", "surveys"):
        topic = getattr(topics, attr)
        for i in range(per_topic):
            _, value = rng.choice(bases[attr])
            kind, mutated = mutate(rng, value, other)
            key = company.id.encode() if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 40))
            src = Source(topic, 0, 0, key, mutated)
            try:
                verdict = ingest(codec.decode, src, store, now_ms(), 3000)
                expect = verdict.dead_letter["stage"] if verdict.dead_letter else None
            except Exception as exc:  # the worker dead-letters an exception from planning as stage plan
                expect = "plan"
                kinds[f"oracle raised {type(exc).__name__}"] += 1
            kinds[f"{kind}:{expect or 'valid'}"] += 1
            producer.produce(topic, key=key, value=mutated, on_delivery=on_delivery({"topic": topic, "kind": kind, "expect": expect}))
            producer.poll(0)

    s_bases = [env.admin.encode(doc, Stamp(0, None)) for doc in (before[0], *before[1])]  # mutated, then dead-lettered
    odd = 0
    made = 0
    while made < settings_count:
        key, value = rng.choice(s_bases)
        kind, mutated = mutate(rng, value, other)
        roll = rng.random()
        if roll < 0.15:
            key, kind = rng.randbytes(rng.randint(0, 30)), kind + "+garbage_key"
        elif roll < 0.25:
            key, kind = rng.choice(s_bases)[0] if rng.random() < 0.5 else b"company/someone-else", kind + "+other_key"
        elif roll < 0.30:
            key, kind = b"\xff\xfe" + key, kind + "+bad_utf8_key"
        try:
            parse_settings_record(codec, key, mutated)
            continue  # a mutation the table would accept is a real change, not a bad record: skip
        except (rules.SettingsError, DecodeError, ValidationError, UnicodeDecodeError):
            expect = "settings"
        except Exception as exc:  # the settings reader does not expect these
            expect = "settings"
            odd += 1
            kinds[f"settings parser raised {type(exc).__name__}"] += 1
        made += 1
        kinds[f"settings {kind}"] += 1
        producer.produce(topics.settings, key=key, value=mutated, on_delivery=on_delivery({"topic": topics.settings, "kind": kind, "expect": expect}))
        producer.poll(0)
    left = producer.flush(60)
    log(f"e: {len(sent)} fuzz records on the broker ({left} unconfirmed); mutations: {dict(sorted(kinds.items()))}")

    expected = {(m["topic"], m["partition"], m["offset"]): m for m in sent if m["expect"]}
    fuzz_topics = {*topics.inputs, topics.settings}

    def letters() -> dict[tuple[str, int, int], Any]:
        return {(f.record["source_topic"], f.record["source_partition"], f.record["source_offset"]): f.record
                for f in env.dead_letters() if f.record["source_topic"] in fuzz_topics}

    wait_until(lambda: len(letters()) >= len(expected), 300.0, "e: a dead letter for every undecodable record", 2.0)
    time.sleep(3.0)
    got = letters()
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong_stage = [k for k, m in expected.items() if k in got and got[k]["stage"] != m["expect"]]
    no_reason = [k for k, r in got.items() if not (r.get("message") and r.get("error_class"))]
    stages = Counter(r["stage"] for r in got.values())

    # The worker still works with the settings it had: a canary booking reaches both CRMs.
    pub = env.publisher()
    pub.publish_meeting_booked(env.booking(company, "canary", "canary@buyer-e.example"))
    pub.flush(30)
    canary = env.settle(total_timeout=120.0, quiet=3.0)
    probe.stop.set()
    probe.join(5)
    after = env.admin.show(company.id)
    alive = worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid and len(env.workers) == 1
    row.dead_letters = len(env.dead_letters())
    row.lost, row.dup_sf, row.dup_hs = canary.lost, canary.dup_sf, canary.dup_hs
    row.max_late = max(canary.lateness) if canary.lateness else None
    row.note(f"dead letters by stage: {dict(stages)}; expected {len(expected)} (oracle: the product's own decode/validate/plan),"
             f" missing {len(missing)}, unexpected {len(unexpected)}, wrong stage {len(wrong_stage)}, without reason {len(no_reason)}")
    if missing:
        row.note(f"no dead letter for e.g. {[expected[k]['kind'] for k in missing[:5]]} at {missing[:3]}")
    if unexpected:
        row.note(f"dead letters for records the oracle accepts, e.g. {[(got[k]['stage'], got[k]['message'][:120]) for k in unexpected[:3]]}")
    if wrong_stage:
        row.note(f"wrong stage e.g. {[(expected[k]['expect'], got[k]['stage'], got[k]['message'][:80]) for k in wrong_stage[:3]]}")
    row.note(f"/health/live: {probe.answers} answers, {probe.failures} failures, slowest {probe.slowest:.2f} s; "
             f"same process throughout: {alive}; settings table unchanged: {after == before}; canary delivered: {canary.lost == 0}")
    if odd:
        row.note(f"{odd} settings record(s) made the parser raise an unexpected exception type")
    text = env.worker.log_text()
    if "settings reader failed" in text:
        row.note("worker log: 'settings reader failed; restarting it' (the settings table stopped following its topic)")
    row.goal_met = (not missing and not unexpected and not wrong_stage and not no_reason and probe.failures == 0 and alive
                    and after == before and canary.lost == 0 and canary.dup_sf == 0 and canary.dup_hs == 0 and probe.answers > 0)
    env.stop()
    return row


# ---- g. an admin transaction left open ---------------------------------------------------------------


def _end_offsets(bootstrap: str, topics: list[str]) -> int:
    """Records on `topics` now; -1 when the broker cannot say yet (a topic just created)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4().hex}"})
    try:
        total = 0
        for topic in topics:
            meta = c.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            total += sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions)
        return total
    except KafkaException as exc:
        log(f"g: end offsets not known yet ({exc})")
        return -1
    finally:
        c.close()


def _topic_ready(bootstrap: str, topic: str, partitions: int) -> bool:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4().hex}"})
    try:
        meta = c.list_topics(topic, timeout=5).topics.get(topic)
        return meta is not None and meta.error is None and len(meta.partitions) == partitions
    except KafkaException:
        return False
    finally:
        c.close()


def scenario_g(ctx: Any) -> Row:
    count, hold = ctx.size(400, floor=50), 20.0
    env = Env("g", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0)
    ctx.envs.append(env)
    row = Row("g", events=count)
    a = env.add_company("known-co")
    b = env.add_company("pending-co")  # its only settings are in the open transaction
    bookers = {c.id: [f"{c.id}-{i}@buyer-g.example" for i in range(count)] for c in (a, b)}
    env.seed_bookers(a, bookers[a.id])
    env.seed_bookers(b, bookers[b.id])
    env.configure(a)  # committed before anything else; creates the settings topic compacted
    t = now_ms()
    company = rules.new_company(b.id, t, "chaos-g")
    for crm in Crm:
        company = rules.set_connected(company, crm, True, t, "chaos-g")
    mt = rules.new_meeting_type(b.id, MEETING_TYPE, t, "chaos-g")
    for crm in Crm:
        mt = rules.set_meeting_type_toggle(mt, crm, EventType.MEETING_BOOKED, True, t, "chaos-g")
    records = env.admin.records(env.admin.load(), [company, mt])  # the change and its audit entries

    txn = Producer({"bootstrap.servers": ctx.broker.bootstrap, "transactional.id": f"crm-sync-admin-chaos-{uuid.uuid4().hex}",
                    "enable.idempotence": True, "acks": "all", "transaction.timeout.ms": 120_000})
    txn.init_transactions(30)
    txn.begin_transaction()
    for topic, key, value in records:
        txn.produce(topic, key=key, value=value)
    txn.flush(30)
    opened = time.monotonic()
    log("g: admin transaction open on the settings topic (2 records, neither committed nor aborted)")
    worker = env.start_worker(wait=False)
    wait_until(lambda: _topic_ready(ctx.broker.bootstrap, env.config.topics.meetings, 6), 60.0, "g: the worker's topics")
    feeder = Feeder(env, count, 5.0, lambda i: env.booking(a if i % 2 == 0 else b, str(i), bookers[(a if i % 2 == 0 else b).id][i]))
    feeder.start()
    ready_seen, planned_seen, polls, statuses = 0, 0, 0, Counter()
    internal = [env.config.topics.delay, env.config.topics.due_salesforce, env.config.topics.due_hubspot]
    while time.monotonic() - opened < hold:
        status, _ = fetch(f"http://127.0.0.1:{worker.port}/health/ready", timeout=1.0)
        statuses[status] += 1
        polls += 1
        ready_seen += status == 200
        planned_seen = max(planned_seen, _end_offsets(ctx.broker.bootstrap, internal))
        time.sleep(0.5)
    published_during_hold = feeder.sent
    txn.commit_transaction(30)
    log(f"g: committed after {time.monotonic() - opened:.1f}s; /health/ready meanwhile {dict(statuses)}; "
        f"{published_during_hold} bookings published during the hold; actions on delay/due topics meanwhile: {planned_seen}")
    became_ready = wait_until(env.ready, 60.0, "g: ready after the commit", 0.2)
    feeder.join(120)
    result = env.settle(total_timeout=240.0, quiet=5.0)
    no_settings = env.metric("crm_sync_actions_skipped_total", reason="no_settings")
    planned = env.metric("crm_sync_actions_planned_total")
    row.lost, row.dup_sf, row.dup_hs = result.lost, result.dup_sf, result.dup_hs
    row.dead_letters = len(env.dead_letters())
    row.max_late = max(result.lateness) if result.lateness else None
    row.note(f"hold {hold:.0f} s: /health/ready answers {dict(statuses)} (200 = ready: {ready_seen}), actions planned meanwhile {planned_seen}; "
             f"after commit: ready {bool(became_ready)}, planned {planned:.0f}, skipped no_settings {no_settings:.0f}")
    row.note("max lateness here is the hold itself: bookings wait for the transaction to end")
    row.goal_met = (ready_seen == 0 and planned_seen == 0 and bool(became_ready) and no_settings == 0 and result.lost == 0
                    and result.dup_sf == 0 and result.dup_hs == 0 and published_during_hold > 0 and feeder.error is None)
    env.stop()
    return row
