"""Scenario k of bench/chaos.py: twenty tenants whose CRMs hang 60 s per request, beside a healthy
tenant booking meetings. Each (CRM, company) has CRM threads of its own, so the healthy tenant's
p99 lateness stays within 5 s however many tenants hang (docs/consumer-state.md)."""

from __future__ import annotations

import time
from typing import Any

from chaos_crash import _finish
from chaos_env import Env, Feeder, Row, Tally, percentile, tally, wait_until
from connectors.sandbox import Fault

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
    row.note(f"the worker logged {budget_hits} 'CRM too slow' warnings (hung tenants hitting CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS)")
    row.goal_met = row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and p99 <= 5.0 and fast_t.leaked == 0
    ctx.sandbox.state.clear_faults()
    env.stop()
    return row
