"""Scenarios k and n of bench/chaos.py (docs/consumer-state.md):

- k: twenty tenants whose CRMs hang 60 s per request, beside a healthy tenant booking meetings.
  Each (CRM, company) has CRM threads of its own, so the healthy tenant's lateness stays low
  however many tenants hang.
- n: three workers under load restarted one after the other, the way a StatefulSet rollout does,
  then one frozen for longer than the session timeout: its partitions go to the others, which
  write their ledgers, and it comes back to a new assignment. Every assignment re-reads its
  ledger partitions, so nothing is lost or duplicated.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from chaos_crash import _finish, _one_company
from chaos_env import Env, Feeder, Row, Tally, log, percentile, tally, wait_until
from connectors.sandbox import Fault
from processors.kafka.clients import SESSION_TIMEOUT_S

HUNG_TENANTS = 20


def scenario_k(ctx: Any) -> Row:
    fast_count, per_hung = ctx.size(500, floor=100), ctx.size(8, floor=2)
    row = Row("k", events=fast_count + HUNG_TENANTS * per_hung)
    env = Env("k", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0)
    ctx.envs.append(env)
    fast = env.add_company("fast-co")
    hung = [env.add_company(f"hung-{n:02d}") for n in range(HUNG_TENANTS)]
    fast_bookers = [f"f{i}@buyer-k.example" for i in range(fast_count)]
    env.seed_bookers(fast, fast_bookers)
    for company in hung:
        env.seed_bookers(company, [f"{company.id}-{i}@buyer-k.example" for i in range(per_hung)])
    env.configure(fast, *hung)
    for company in hung:
        for crm in ("salesforce", "hubspot"):
            ctx.sandbox.inject(Fault(crm, latency=60.0, count=1_000_000, tenant=company.tenant))
    env.start_worker()
    # Every hung tenant books first (each hangs a call), then one in every few bookings is theirs.
    plan: list[tuple[int, int]] = [(h, 0) for h in range(HUNG_TENANTS)]
    later = [(h, i) for i in range(1, per_hung) for h in range(HUNG_TENANTS)]
    step = max(1, fast_count // max(1, len(later)))
    for i in range(fast_count):
        plan.append((-1, i))
        if i % step == 0 and later:
            plan.append(later.pop(0))
    plan += later

    def make(n: int) -> dict[str, Any]:
        who, i = plan[n]
        if who < 0:
            return env.booking(fast, f"fast-{i}", fast_bookers[i])
        company = hung[who]
        return env.booking(company, f"hung-{who:02d}-{i}", f"{company.id}-{i}@buyer-k.example")

    feeder = Feeder(env, len(plan), 20.0 if ctx.quick else 40.0, make)
    feeder.start()
    feeder.join(300)
    only_fast = {k: v for k, v in env.expected.items() if k.startswith("fast-")}

    def fast_tally() -> Tally:
        return tally(ctx.sandbox, "k", only_fast, [fast.tenant])

    wait_until(lambda: fast_tally().lost == 0, 300.0, "k: every fast-co object", 1.0)
    time.sleep(5.0)  # late duplicates
    fast_t = fast_tally()
    fast_t.leaked = env.tally([fast.tenant, *(c.tenant for c in hung)]).leaked
    row = _finish(row, env, fast_t, feeder)
    p50, p99 = percentile(fast_t.lateness, 0.50), percentile(fast_t.lateness, 0.99)
    row.note(
        f"fast-co lateness over {len(fast_t.lateness)} objects beside {HUNG_TENANTS} hung tenants (60 s per request, both CRMs):"
        f" p50 {p50:.2f} s, p99 {p99:.2f} s, max {row.max_late or 0:.2f} s (goal p99 <= 5 s)"
    )
    budget_hits = env.log_path.read_text(errors="replace").count("CRM too slow")
    budget = env.deployment.extra_env.get("CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS", "the default")
    row.note(f"the worker logged {budget_hits} 'CRM too slow' warnings (hung tenants hitting CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS,"
             f" {budget}): the first batch they hang in holds the others for one budget")
    row.goal_met = row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and p99 <= 5.0 and fast_t.leaked == 0
    ctx.sandbox.state.clear_faults()
    env.stop()
    return row


def scenario_n(ctx: Any) -> Row:
    count = ctx.size(4_000)
    row = Row("n", events=count)
    env = Env("n", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0)
    ctx.envs.append(env)
    company, bookers = _one_company(env, count)
    workers = [env.start_worker() for _ in range(3)]
    feed_seconds = 60.0 if ctx.quick else 120.0
    feeder = Feeder(env, count, feed_seconds, lambda i: env.booking(company, str(i), bookers[i]))
    feeder.start()
    began = time.monotonic()
    for n in range(3):  # the rollout: one at a time, each back and ready before the next goes
        time.sleep(max(0.0, began + (n + 1) * feed_seconds / 5 - time.monotonic()))
        workers[n].stop()
        log(f"n: worker {n} stopped (SIGTERM) and started again (published {feeder.sent}/{count})")
        workers[n] = env.start_worker()
    frozen = workers[0]
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    log(f"n: worker 0 frozen for {SESSION_TIMEOUT_S * 2:.0f} s (session timeout {SESSION_TIMEOUT_S:.0f} s)")
    time.sleep(SESSION_TIMEOUT_S * 2)
    frozen.proc.send_signal(signal.SIGCONT)
    feeder.join(600)
    result = env.settle(total_timeout=900.0, quiet=10.0)
    row = _finish(row, env, result, feeder)
    p99 = percentile(result.lateness, 0.99)
    not_ready = env.log_path.read_text(errors="replace").count("assigned partitions not ready")
    row.note(f"3 rolling restarts and one worker frozen past its session; p99 lateness {p99:.2f} s, max {row.max_late or 0:.2f} s;"
             f" {not_ready} assignment(s) not settled at once (retried)")
    row.goal_met = row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and feeder.error is None and feeder.sent == count
    env.stop()
    return row
