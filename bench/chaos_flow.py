"""Chaos scenarios of the delivery flow (docs/delivery-flow.md), run by bench/chaos.py:

    j  paused companies receive events already overdue, and DLQ re-ingests of overdue events:
       nothing is created until resume, then everything, exactly once
    l  contact re-checks an hour ahead for some companies, transient 503s for others, all on the
       same retry partitions: every transient retry is delivered within its backoff plus 5 s
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from confluent_kafka import Producer

from chaos_env import Env, Row, Tally, log, now_ms, percentile, wait_until
from connectors.sandbox import Fault
from processors.codec import Codec
from processors.domain import rules
from processors.domain.deadletter import Source, dead_letter
from processors.domain.model import Crm, EventType
from processors.kafka.producer import partition_for
from processors.ops.dlq import FailureAdmin, read_dead_letters

OVERDUE_MS = 15 * 60_000
BACKOFF_MAX_S = 5.0  # the first deferral's backoff (processors.stages.deliver, full jitter below it)


def _finish(row: Row, env: Env, result: Tally) -> Row:
    row.lost, row.dup_sf, row.dup_hs = result.lost, result.dup_sf, result.dup_hs
    row.dead_letters = len(env.dead_letters())
    row.max_late = max(result.lateness) if result.lateness else None
    if result.lost:
        row.note(f"missing: {result.lost_sf} Task(s), {result.lost_hs} meeting(s)")
    if result.leaked:
        row.note(f"{result.leaked} object(s) in a tenant other than their company's")
    return row


def _configure(env: Env, companies: list[Any], *, paused: bool = False, recheck: tuple[int, ...] = ()) -> None:
    """Env.configure, with the pause and the contact re-check set in the same documents."""
    t, by = now_ms(), f"chaos-{env.name}"
    docs: list[Any] = []
    for company in companies:
        doc = rules.new_company(company.id, t, by)
        mt = rules.new_meeting_type(company.id, "intro-30", t, by)
        for crm in Crm:
            doc = rules.set_connected(doc, crm, True, t, by)
            mt = rules.set_meeting_type_toggle(mt, crm, EventType.MEETING_BOOKED, True, t, by)
        if paused:
            doc = rules.set_paused(doc, True, t, by)
        if recheck:
            doc = replace(doc, contact_recheck_seconds=recheck)
        docs += [doc, mt]
    env.admin.publish(docs)


def scenario_j(ctx: Any) -> Row:
    """Paused companies, overdue events and DLQ re-ingests: nothing before resume, all once after."""
    companies_n, per_company = ctx.size(50, floor=6), ctx.size(8, floor=2)
    env = Env("j", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0, extra_env={"CRM_SYNC_PAUSED_REPARK_SECONDS": "20"})
    ctx.envs.append(env)
    companies = [env.add_company(f"paused-{i}") for i in range(companies_n)]
    bookers = {c.id: [f"b{n}@buyer-j-{c.id}.example" for n in range(per_company)] for c in companies}
    for company in companies:
        env.seed_bookers(company, bookers[company.id])
    _configure(env, companies, paused=True)
    env.start_worker()

    codec, pub = Codec(), env.publisher()
    reingest: list[dict[str, Any]] = []
    for company in companies:
        for n, booker in enumerate(bookers[company.id]):
            record = env.booking(company, f"{company.id}-{n}", booker)
            record["occurred_at"] -= OVERDUE_MS
            key = f"{company.id}-{n}"
            env.expected[key] = (company.tenant, record["occurred_at"] + int(env.deployment.delay_seconds * 1000))
            if n % 2:
                pub.publish_meeting_booked(record)  # a late event
            else:
                reingest.append(record)  # comes back through `dlq retry`
    pub.flush(60)
    # A failure from before planning whose original is an overdue booking, retried by an admin.
    letters_topic = env.config.topics.dead_letter
    producer = Producer({"bootstrap.servers": ctx.broker.bootstrap})
    for n, record in enumerate(reingest):
        value = codec.encode("MeetingBooked", record)
        source = Source(env.config.topics.meetings, 0, 1_000_000 + n, record["company_id"].encode(), value)
        letter = dead_letter(stage="decode", error_class="DecodeError", message="chaos j: stand-in failure", source=source,
                             now_ms=now_ms(), company_id=record["company_id"])
        producer.produce(letters_topic, key=record["company_id"].encode(), value=codec.encode("DeadLetter", letter))
    producer.flush(60)
    failures = [f for f in read_dead_letters(env.config, codec) if f.record["message"] == "chaos j: stand-in failure"]
    sent = FailureAdmin(env.config, codec, actor="chaos-j").retry(failures, lambda f, why: log(f"j: not retried: {why}"))
    row = Row("j", events=len(env.expected))
    row.note(f"{companies_n} paused companies; {len(env.expected) - len(reingest)} late events, {sent} DLQ re-ingests, all 15 min overdue")

    actions = 2 * len(env.expected)
    held = wait_until(lambda: env.metric("crm_sync_actions_held") >= actions, 120.0, "j: every action parked", 1.0)
    # Past one repark (20 s): the copies on the retry topic are parked again, still nothing created.
    time.sleep(25.0)
    before = env.tally()
    row.note(f"while paused: {before.objects} object(s) created (goal 0); {env.metric('crm_sync_actions_held'):.0f} actions held,"
             f" {env.metric('crm_sync_actions_reparked_total'):.0f} reparked")
    resumed = now_ms()
    _configure(env, companies, paused=False)  # every company resumed in one admin transaction
    result = env.settle(300.0, 5.0)
    after_resume = [(stamp - resumed) / 1000 for stamp, _ in result.created]
    row = _finish(row, env, result)
    row.max_late = None  # overdue by design: lateness from the due time means nothing here
    row.note(f"after resume: every object within {max(after_resume, default=float('nan')):.1f} s"
             f" (p99 {percentile(after_resume, 0.99):.1f} s)")
    row.goal_met = bool(held) and before.objects == 0 and row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and result.leaked == 0
    env.stop()
    return row


def scenario_l(ctx: Any) -> Row:
    """Re-checks an hour ahead beside transient retries on the same retry partitions."""
    pairs = ctx.size(30, floor=6)
    env = Env("l", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0, extra_env={"CRM_SYNC_SINK_INLINE_RETRY_SECONDS": "0"})
    ctx.envs.append(env)
    partitions = env.deployment.partitions
    names = [f"co-{n}" for n in range(20 * pairs)]
    by_partition: dict[int, list[str]] = {}
    for name in names:
        by_partition.setdefault(partition_for(name.encode(), partitions), []).append(name)
    recheck_ids, transient_ids = [], []
    for n in range(pairs):  # a re-check company and a transient one on each partition in turn
        group = by_partition[n % partitions]
        recheck_ids.append(group.pop())
        transient_ids.append(group.pop())
    recheckers = [env.add_company(c) for c in recheck_ids]
    transients = [env.add_company(c) for c in transient_ids]
    for company in transients:
        env.seed_bookers(company, [f"t@buyer-l-{company.id}.example"])
    _configure(env, recheckers, recheck=(3600,))
    _configure(env, transients)
    env.start_worker()

    pub = env.publisher()
    for company in recheckers:  # bookers not in the CRM: a re-check an hour ahead
        pub.publish_meeting_booked(env.booking(company, f"recheck-{company.id}", f"nobody@buyer-l-{company.id}.example"))
        env.expected.pop(f"recheck-{company.id}")
    pub.flush(60)
    wait_until(lambda: env.metric("crm_sync_actions_deferred_total") >= 2 * len(recheckers), 120.0, "l: every re-check scheduled", 1.0)
    for company in transients:
        for crm in ("salesforce", "hubspot"):
            ctx.sandbox.inject(Fault(crm, status=503, count=1, tenant=company.tenant))
    published = now_ms()
    for company in transients:
        pub.publish_meeting_booked(env.booking(company, f"transient-{company.id}", f"t@buyer-l-{company.id}.example"))
    pub.flush(60)
    result = _settle_transients(env)
    row = _finish(Row("l", events=len(env.expected) + len(recheckers)), env, result)
    # A transient retry is due at its first attempt (due time) + backoff (< 5 s): allow 5 s more.
    goal = BACKOFF_MAX_S + 5.0
    row.note(f"{len(recheckers)} re-checks an hour ahead and {len(transients)} companies with one 503 per CRM on the same"
             f" {min(partitions, pairs)} retry partitions; transient lateness p50 {percentile(result.lateness, 0.5):.1f} s,"
             f" p99 {percentile(result.lateness, 0.99):.1f} s, max {row.max_late or 0:.1f} s (goal <= {goal:.0f} s after due)")
    row.note(f"published {len(transients)} transient bookings {(now_ms() - published) / 1000:.0f} s before the end")
    row.goal_met = row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and result.leaked == 0 and (row.max_late or 0) <= goal
    ctx.sandbox.state.clear_faults()
    env.stop()
    return row


def _settle_transients(env: Env) -> Tally:
    """Every transient booking's objects, then a few quiet seconds (the re-checks stay parked an hour)."""
    wait_until(lambda: env.tally().lost == 0, 180.0, "l: every transient retry delivered", 1.0)
    time.sleep(5.0)
    return env.tally()
