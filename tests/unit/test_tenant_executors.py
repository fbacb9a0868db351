"""Per-tenant CRM threads (`TenantExecutors`): a hung (CRM, company) holds threads of its own
only, so however many tenants hang, a healthy one is delivered; idle pools end. And a worker
whose loop stood still (frozen past its session) creates nothing for a while (`StallGuard`)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from connectors.retry import RetryPolicy
from processors.domain.deliver import CREATED
from processors.domain.model import Crm, ObjectType
from processors.metrics import Metrics
from processors.stages import deliverer as deliverer_module
from processors.stages.deliverer import Stalled, StallGuard, TenantExecutors
from tests.unit.test_resolution import WHO, FakeCredentials, FakeHubSpot, FakeSalesforce, action

HUNG = [f"hung-{n}" for n in range(20)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_twenty_hung_tenants_do_not_starve_a_healthy_one_on_either_crm(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one shared pool of 16 threads, 16 hung calls left the healthy company's calls queued
    past their budget (deferred as crm_timeout, then cooled down as slow)."""
    release = threading.Event()

    class Clients:
        def __init__(self) -> None:
            self.sf = FakeSalesforce(people={"lead@example.org": WHO}, users={})
            self.hs = FakeHubSpot(contacts={"lead@example.org": "c1"}, owners={})

    healthy = Clients()

    class HungHubSpot(FakeHubSpot):
        def find_contacts(self, emails):  # type: ignore[no-untyped-def]
            release.wait(20)
            return super().find_contacts(emails)

    hung = HungHubSpot(contacts={}, owners={})
    monkeypatch.setattr(
        deliverer_module, "SalesforceClient", lambda creds, ca, reload=None, throttle=None, **kw: healthy.sf
    )
    monkeypatch.setattr(
        deliverer_module, "HubSpotClient",
        lambda creds, ca, reload=None, throttle=None, **kw: hung if creds[1].startswith("hung-") else healthy.hs,
    )
    deliverer = deliverer_module.Deliverer(
        FakeCredentials(), None, RetryPolicy(base=0.0, cap=0.0, max_elapsed=0.0), Metrics.create(), company_budget_seconds=1.0
    )

    async def scenario() -> tuple[list, list]:
        hung_calls = [
            deliverer.deliver_batch(Crm.HUBSPOT, company, [action(crm=Crm.HUBSPOT, object_type=ObjectType.MEETING, company_id=company, action_id=f"a-{company}")])
            for company in HUNG
        ]
        first = await asyncio.gather(*hung_calls)
        # Every hung tenant still holds its thread; now the healthy company's batches on both CRMs.
        healthy_calls = [
            deliverer.deliver_batch(Crm.HUBSPOT, "fine", [action(crm=Crm.HUBSPOT, object_type=ObjectType.MEETING, company_id="fine", action_id="h1")]),
            deliverer.deliver_batch(Crm.SALESFORCE, "fine", [action(company_id="fine", action_id="s1")]),
        ]
        return first, await asyncio.gather(*healthy_calls)

    try:
        first, second = asyncio.run(scenario())
    finally:
        release.set()
    assert {o[0].reason for o in first} == {"crm_timeout"}
    assert [o[0].status for o in second] == [CREATED, CREATED]
    assert len(healthy.hs.created) == 1 and len(healthy.sf.created) == 1


def test_a_tenants_pool_has_at_most_its_threads_and_others_get_their_own() -> None:
    executors = TenantExecutors(threads=2)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def hang() -> None:
        started.release()
        gate.wait(10)

    try:
        pool = executors.get(("hubspot", "a"))
        futures = [pool.submit(hang) for _ in range(3)]
        assert started.acquire(timeout=5) and started.acquire(timeout=5)
        assert not started.acquire(timeout=0.2)  # the third waits for one of the tenant's two threads
        other = executors.get(("hubspot", "b")).submit(lambda: "b ran")
        assert other.result(timeout=5) == "b ran"
    finally:
        gate.set()
    assert [f.result(timeout=5) for f in futures] == [None, None, None]


def test_idle_pools_are_reaped_busy_ones_never() -> None:
    clock = Clock()
    executors = TenantExecutors(threads=1, idle_seconds=60.0, clock=clock)
    gate = threading.Event()
    busy = executors.get(("salesforce", "busy"))
    running = busy.submit(gate.wait, 10)
    idle = executors.get(("salesforce", "idle"))
    assert idle.submit(lambda: 1).result(timeout=5) == 1
    clock.now += 30
    assert executors.reap() == 0  # idle for 30 s only
    clock.now += 31
    assert executors.reap() == 1  # "idle" went; "busy" has a call under way
    assert len(executors) == 1
    assert executors.get(("salesforce", "busy")) is busy
    gate.set()
    assert running.result(timeout=5) is True
    fresh = executors.get(("salesforce", "idle"))  # made again on its next call
    assert fresh is not idle and fresh.submit(lambda: 2).result(timeout=5) == 2
    deadline = time.monotonic() + 5
    while busy.idle_for() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    clock.now += 61
    assert executors.reap() == 2


# ---- a worker that stood still creates nothing for a while (`StallGuard`) -------------------------


def test_creates_are_refused_after_the_loop_stood_still_and_allowed_again_a_hold_later() -> None:
    clock = Clock()
    guard = StallGuard(threshold=5.0, hold=20.0, clock=clock)
    guard.tick()
    clock.now += 1.0
    guard.tick()
    assert guard.remaining() == 0.0
    guard.check()  # allowed
    clock.now += 30.0  # frozen (SIGSTOP): no tick for 30 s
    # A CRM thread waking before the loop does sees the stale tick and is refused.
    assert guard.remaining() == 20.0
    with pytest.raises(Stalled):
        guard.check()
    guard.tick()  # the loop wakes: refused for the hold from now
    for _ in range(19):
        clock.now += 1.0
        guard.tick()
    assert guard.remaining() == pytest.approx(1.0)
    clock.now += 1.5
    guard.tick()
    assert guard.remaining() == 0.0


def test_a_frozen_worker_defers_instead_of_creating(fakes_stalled: tuple) -> None:
    deliverer, sf, clock = fakes_stalled

    async def scenario() -> list:
        deliverer.stalls.watch()
        clock.now += 60.0  # the worker was frozen: the loop has not ticked since
        return await deliverer.deliver_batch(Crm.SALESFORCE, "acme", [action()])

    [outcome] = asyncio.run(scenario())
    assert outcome.status == "deferred" and outcome.reason == "worker_stalled"
    assert sf.created == []


@pytest.fixture
def fakes_stalled(monkeypatch: pytest.MonkeyPatch) -> tuple:
    clock = Clock()
    sf = FakeSalesforce(people={"lead@example.org": WHO}, users={})
    monkeypatch.setattr(deliverer_module, "SalesforceClient", lambda creds, ca, reload=None, throttle=None, **kw: sf)
    deliverer = deliverer_module.Deliverer(FakeCredentials(), None, RetryPolicy(base=0.0, cap=0.0, max_elapsed=0.0), Metrics.create())
    deliverer.stalls = StallGuard(threshold=5.0, hold=20.0, clock=clock)
    return deliverer, sf, clock
