"""Scenarios h, i, o of bench/chaos.py: reconciliation under doubt. Both ToDos of each booking through
15 s of 503s; contacts rebooking a slot they hold with a 503 on every second create; kill -9 with a
lagging HubSpot search and a CRM clock 90 s behind the worker's."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

from chaos_crash import _one_company, crash
from chaos_env import Env, Feeder, Row, log, scan_tenant, wait_until
from connectors.sandbox import Fault, records
from connectors.sandbox.tenant import SEARCH_LAG_ENV
from processors.domain.model import EventType

CREATES = {"salesforce": "composite", "hubspot": "batch/create"}


def _counts(env: Env, tenant: str) -> dict[str, Counter[str]]:
    """Objects per booking key and CRM in the tenant (keys: the bookings' meeting urls)."""
    found = scan_tenant(env.sandbox, tenant, env.name)
    return {crm: Counter({key: len(stamps) for key, stamps in by_key.items()}) for crm, by_key in found.items()}


def _score(row: Row, counts: dict[str, Counter[str]], keys: list[str], want: dict[str, int]) -> None:
    """Lost and duplicates against `want` objects per key and CRM."""
    for crm, n in want.items():
        short = "sf" if crm == "salesforce" else "hs"
        lost = sum(max(0, n - counts[crm].get(k, 0)) for k in keys)
        dup = sum(max(0, counts[crm].get(k, 0) - n) for k in keys)
        row.lost += lost
        setattr(row, f"dup_{short}", getattr(row, f"dup_{short}") + dup)
        if lost:
            row.note(f"{lost} {crm} object(s) missing")


def _settle(env: Env, tenant: str, keys: list[str], want: dict[str, int], timeout: float, quiet: float = 10.0) -> dict[str, Counter[str]]:
    """Until every key has its objects, then until nothing new appeared for `quiet` s and the stages are drained."""
    def complete() -> bool:
        counts = _counts(env, tenant)
        return all(counts[crm].get(k, 0) >= n for crm, n in want.items() for k in keys)

    deadline = time.monotonic() + timeout
    wait_until(complete, timeout, f"{env.name}: every object", 2.0)
    last, calm = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(sum(c.values()) for c in _counts(env, tenant).values())
        if total != last:
            last, calm = total, time.monotonic()
        elif time.monotonic() - calm >= quiet and env.lag() == 0:
            break
        time.sleep(1.0)
    return _counts(env, tenant)


def scenario_h(ctx: Any) -> Row:
    """Both ToDos on, 15 s of 503s on every create, then recovery: 2 Tasks and 1 meeting per booking."""
    count = ctx.size(200, floor=25)
    row = Row("h", events=count)
    env = Env("h", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0)
    ctx.envs.append(env)
    company, bookers = _one_company(env, count)
    env.admin.set_company_todo(company.id, EventType.MEETING_BOOKED, True)
    env.start_worker()
    for crm, path in CREATES.items():
        ctx.sandbox.inject(Fault(crm, 503, count=10_000_000, path_contains=path, tenant=company.tenant))
    feeder = Feeder(env, count, 5.0, lambda i: env.booking(company, str(i), bookers[i]))
    feeder.start()
    feeder.join(120)
    time.sleep(max(0.0, 15.0 - 5.0 + env.deployment.delay_seconds))  # 15 s of 503s once the first are due
    ctx.sandbox.state.clear_faults()
    log("h: 503s over; the CRMs answer again")
    keys = [str(i) for i in range(count)]
    want = {"salesforce": 2, "hubspot": 1}
    counts = _settle(env, company.tenant, keys, want, timeout=600.0)
    _score(row, counts, keys, want)
    row.dead_letters = len(env.dead_letters())
    deferred = env.metric("crm_sync_actions_deferred_total")
    claimed = env.metric("crm_sync_reconcile_total", outcome="rejected_claimed")
    row.note(f"{sum(counts['salesforce'].values())} Tasks and {sum(counts['hubspot'].values())} meetings for {count} bookings "
             f"(want {2 * count} and {count}); {deferred:.0f} deferrals; {claimed:.0f} alike candidates refused as another action's")
    row.goal_met = row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and row.dead_letters == 0 and feeder.error is None
    env.stop()
    return row


def _every_second_create_fails(ctx: Any, tenant: str, stop: threading.Event) -> threading.Thread:
    """Keeps one 503 queued per CRM: each create after a failed one succeeds, the next fails."""
    def run() -> None:
        while not stop.is_set():
            with ctx.sandbox.state.lock:
                pending = {f.crm for f in ctx.sandbox.state.faults}
                for crm, path in CREATES.items():
                    if crm not in pending:
                        ctx.sandbox.state.faults.append(Fault(crm, 503, path_contains=path, tenant=tenant))
            stop.wait(0.5)

    thread = threading.Thread(target=run, name="every-second-create", daemon=True)
    thread.start()
    return thread


def scenario_i(ctx: Any) -> Row:
    """Each contact books a slot it already holds, with a 503 on every second create while the
    rebookings are delivered (about 20 s): 2 meetings and 2 Tasks each."""
    count = ctx.size(100, floor=13)
    row = Row("i", events=2 * count)
    env = Env("i", ctx.broker, ctx.sandbox, ctx.workdir, delay=3.0)
    ctx.envs.append(env)
    company, bookers = _one_company(env, count)
    env.start_worker()
    slot = int(time.time() * 1000) + 86_400_000

    def same_slot(i: int) -> dict[str, Any]:
        return {**env.booking(company, str(i), bookers[i]), "start_at": slot, "end_at": slot + 1_800_000}

    keys = [str(i) for i in range(count)]
    first = Feeder(env, count, 5.0, same_slot)
    first.start()
    first.join(120)
    _settle(env, company.tenant, keys, {"salesforce": 1, "hubspot": 1}, timeout=300.0, quiet=3.0)
    log("i: first bookings delivered; rebooking the same slots with a 503 on every second create")
    stop = threading.Event()
    faults = _every_second_create_fails(ctx, company.tenant, stop)
    second = Feeder(env, count, 5.0, same_slot)
    second.start()
    second.join(120)
    # While the rebookings are first delivered (and retried inline); their later retries, on the
    # retry topic's growing backoff, would otherwise meet a 503 half the time for minutes.
    time.sleep(env.deployment.delay_seconds + 15.0)
    stop.set()
    faults.join(5)
    ctx.sandbox.state.clear_faults()
    log("i: 503s over")
    want = {"salesforce": 2, "hubspot": 2}
    counts = _settle(env, company.tenant, keys, want, timeout=600.0)
    _score(row, counts, keys, want)
    row.dead_letters = len(env.dead_letters())
    claimed = env.metric("crm_sync_reconcile_total", outcome="rejected_claimed")
    row.note(f"{sum(counts['hubspot'].values())} meetings and {sum(counts['salesforce'].values())} Tasks for {count} contacts "
             f"booking one slot twice (want {2 * count} each); {claimed:.0f} alike candidates refused as the first booking's")
    row.goal_met = (row.lost == 0 and row.dup_sf == 0 and row.dup_hs == 0 and row.dead_letters == 0
                    and first.error is None and second.error is None)
    env.stop()
    return row


def scenario_o(ctx: Any) -> Row:
    """kill -9 x5 with HubSpot search lagging 5 s and the CRMs' clock 90 s behind, without (o) and
    with (p) the external-id field/property; one row for both."""
    os.environ[SEARCH_LAG_ENV] = "5"
    records.clock_skew_seconds = -90.0
    try:
        plain = crash(ctx, "o", id_field=False)
        ext = crash(ctx, "p", id_field=True)
    finally:
        os.environ.pop(SEARCH_LAG_ENV, None)
        records.clock_skew_seconds = 0.0
    row = Row("o", events=plain.events + ext.events)
    row.lost, row.dup_sf, row.dup_hs = plain.lost + ext.lost, plain.dup_sf + ext.dup_sf, plain.dup_hs + ext.dup_hs
    row.dead_letters = plain.dead_letters + ext.dead_letters
    lates = [r.max_late + 90.0 for r in (plain, ext) if r.max_late is not None]  # stamps are on the CRM's clock
    row.max_late = max(lates) if lates else None
    row.notes = [f"without external id: {n}" for n in plain.notes] + [f"with external id: {n}" for n in ext.notes]
    row.note("lateness corrected for the CRM clock running 90 s behind")
    row.goal_met = plain.goal_met and ext.goal_met
    return row
