"""The CRM calls of the deliver stage: one company's due actions for one CRM → one `Outcome` each.

A company's batch uses one batched lookup per kind (people, users, contacts, owners), an optional
external-id check, a reconciliation of actions that may have been created before a crash (their
ledger entry is an intent with no outcome), and one batched create — never an exception, so the
stage goes on. The decisions (fields, matching, outcomes) are pure, in `processors.domain.deliver`.

Containment (SPEC §11): each (CRM, company) has threads of its own (`TenantExecutors`) and there is
no worker-wide cap on calls under way, so a hung call holds a thread of its own tenant only, never
a thread or slot another tenant's calls wait for: the batch in which tenants first hang waits one
budget, however many they are. Each company's batch has a time budget; past it the company's actions are
deferred (the call goes on in its thread; whatever it created is found by reconciliation later),
and while a company's earlier call still runs its new actions are deferred at once, so a hung CRM
holds neither the batch nor more than one thread. A transient failure is retried inline for
a short while (the one retry policy); a retry re-runs the batch with reconciliation, since the
failed attempt may have created some objects. Repeated authentication failures open a
per-company circuit. A company that used `quota_defer_ratio` of its daily API quota (read from the
responses' headers) has its actions deferred until a later probe reads the quota again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import Counter
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from connectors.auth import TokenCache
from connectors.credentials import CredentialStore
from connectors.errors import AuthError, CrmError, Result, TransientError
from connectors.hubspot import HubSpotClient
from connectors.retry import RetryPolicy, TokenBuckets, call_with_retry
from connectors.salesforce import PASSWORD_FLOW_WARNING, SalesforceClient
from processors.domain.deliver import (
    CREATED,
    DEFERRED,
    DUPLICATE,
    FAILED,
    HUBSPOT_MATCH,
    HUBSPOT_OBJECTS,
    SALESFORCE_MATCH,
    SKIPPED,
    Circuit,
    Outcome,
    QuotaBook,
    TtlCache,
    CONFLICT_RESOLVED,
    Doubt,
    hubspot_properties,
    salesforce_task_fields,
)
from processors.domain.model import Action, Crm, ObjectType
from processors.kafka.clients import SESSION_TIMEOUT_S
from processors.metrics import Metrics
from processors.stages.reconcile import Claimant, Reconciler

log = logging.getLogger(__name__)

AUTH_COOLDOWN = RetryPolicy(base=30.0, cap=900.0, max_elapsed=None)
# A company whose CRM ran out its budget is "slow": its actions are deferred without a call for a
# growing cool-down, then one probe batch tries again with a short budget, so a hung CRM holds a
# sink batch for its full budget once, and afterwards for at most SLOW_PROBE_BUDGET_S now and then.
SLOW_COOLDOWN = RetryPolicy(base=20.0, cap=600.0, max_elapsed=None)
SLOW_PROBE_BUDGET_S = 0.5
# Threads per (CRM, company) at most (`CRM_SYNC_SINK_CONCURRENCY`): one call runs at a time (a
# busy company is deferred), so one is used; the cap only bounds what a bug could spawn.
TENANT_THREADS = 16
# A tenant's threads end after this long without a call (longer than any inline retry's pause).
TENANT_IDLE_SECONDS = 120.0
REAP_EVERY_SECONDS = 30.0
# The loop standing still for half a group session may have cost the session: creates wait for two
# sessions' length afterwards, by when the consumer knows whether it lost its partitions.


def from_result(result: Result) -> Outcome:
    """One record's answer inside a batch: created, deferred (transient) or failed (permanent)."""
    if result.ok:
        return Outcome(DUPLICATE if result.existing else CREATED, object_id=result.id)
    assert result.error is not None
    if isinstance(result.error, TransientError):
        return Outcome(DEFERRED, reason=result.error.code, error=result.error, retry_after=result.error.retry_after)
    return Outcome(FAILED, reason=result.error.code, error=result.error)


class Stalled(Exception):
    """Creates are refused for a while after the worker's event loop stood still (`StallGuard`)."""


class StallGuard:
    """Notices that the worker's event loop stood still (the process was frozen: SIGSTOP, a VM or
    container pause, swapping) and refuses CRM creates for a session's length afterwards.

    Why: while frozen, the group session may have expired and another worker taken the partitions,
    read the intents and created the actions itself. The frozen worker's batch goes on where it
    stood when it wakes (its CRM threads first of all), before its consumer learns that it lost
    them: its creates would be duplicates. Refused, its actions are deferred (their intents stay,
    so the next attempt reconciles first). A false alarm (the session had not expired) costs one
    deferral. A create already under way when the freeze began cannot be taken back.
    """

    def __init__(self, threshold: float, hold: float, tick: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._hold = hold
        self._tick = tick
        self._clock = clock
        self._last = clock()
        self._until = 0.0
        self._task: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """Start ticking in the running loop (once)."""
        if self._task is None:
            self._last = self._clock()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="crm-stall-guard")

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self._tick)

    def tick(self) -> None:
        now = self._clock()
        if now - self._last > self._threshold:
            self._until = now + self._hold
            log.warning("the worker stood still: CRM creates are deferred for a while", extra={"stood_s": round(now - self._last, 1), "hold_s": self._hold})
        self._last = now

    def remaining(self) -> float:
        """Seconds creates are still refused (0: allowed). Called from the CRM threads too: a
        thread that wakes before the loop does sees the stale tick."""
        now = self._clock()
        if now - self._last > self._threshold:
            return self._hold
        return max(0.0, self._until - now)

    def check(self) -> None:
        if self.remaining() > 0:
            raise Stalled()


class TenantPool(Executor):
    """One (CRM, company)'s threads, counting the calls under way (a pool with one is never reaped)."""

    def __init__(self, name: str, threads: int, clock: Callable[[], float]) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle_since = clock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self._inflight += 1
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future[Any] | None) -> None:
        with self._lock:
            self._inflight -= 1
            self._idle_since = self._clock()

    def touch(self) -> None:
        with self._lock:
            self._idle_since = max(self._idle_since, self._clock())

    def idle_for(self) -> float | None:
        """Seconds without a call, None while one runs."""
        with self._lock:
            return None if self._inflight else self._clock() - self._idle_since

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)


class TenantExecutors:
    """A small thread pool per (CRM, company), made on first use and ended when idle.

    Why not one shared pool: a call past its budget keeps its thread (Python cannot stop it), so
    with one pool of N threads, N hung (CRM, company) pairs starve every healthy company. Here a
    hung call holds a thread of its own tenant only; others get threads of their own at once.
    Threads alive ≈ tenants called within `idle_seconds`, at most `threads` each. Used from the
    event loop only (the calls' completions, in their threads, only count).
    """

    def __init__(self, threads: int = TENANT_THREADS, idle_seconds: float = TENANT_IDLE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._threads = threads
        self._idle = idle_seconds
        self._clock = clock
        self._pools: dict[tuple[str, str], TenantPool] = {}
        self._next_reap = clock() + REAP_EVERY_SECONDS

    def get(self, key: tuple[str, str]) -> TenantPool:
        """The tenant's pool (touched, so a reap before its call is submitted keeps it); reaps
        idle pools now and then."""
        if self._clock() >= self._next_reap:
            self.reap()
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = TenantPool(f"crm-{key[0]}", self._threads, self._clock)
        pool.touch()
        return pool

    def reap(self) -> int:
        """End the pools idle longer than `idle_seconds`; returns how many."""
        self._next_reap = self._clock() + REAP_EVERY_SECONDS
        idle = [key for key, pool in self._pools.items() if (pool.idle_for() or 0.0) > self._idle]
        for key in idle:
            self._pools.pop(key).shutdown(wait=False)
        return len(idle)

    def __len__(self) -> int:
        return len(self._pools)


class Deliverer:
    """One per worker: CRM clients per company, caches, rate budgets and the auth circuit."""

    def __init__(
        self,
        credentials: CredentialStore,
        ca_bundle: str | None,
        policy: RetryPolicy,
        metrics: Metrics,
        *,
        rates: Mapping[Crm, float] | None = None,
        action_id_fields: Mapping[Crm, str | None] | None = None,
        threads_per_tenant: int = TENANT_THREADS,
        company_budget_seconds: float = 5.0,
        cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
        quota_defer_ratio: float = 0.95,
        quota_defer_seconds: float = 900.0,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self._credentials = credentials
        self._ca_bundle = ca_bundle
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._budget = company_budget_seconds
        rates = rates or {}
        self._buckets = {crm: TokenBuckets(rate=rates.get(crm, 10.0), burst=max(1.0, rates.get(crm, 10.0))) for crm in Crm}
        self._id_fields = dict(action_id_fields or {})
        self._cache = TtlCache(cache_ttl)
        self.circuit = Circuit(cooldown=AUTH_COOLDOWN.backoff)
        self.slow = Circuit(cooldown=SLOW_COOLDOWN.backoff, threshold=1)
        self.quota = QuotaBook(defer_ratio=quota_defer_ratio, probe_after=quota_defer_seconds)
        # Access tokens per (CRM, company), shared by the clients rebuilt when a file changes.
        self.tokens = TokenCache()
        self._clients: dict[tuple[Crm, str], tuple[Any, Any]] = {}
        # No worker-wide cap on calls under way: N hung tenants would fill any N slots while their
        # budgets run, and the batch would wait one budget per N. A (CRM, company) runs one call at
        # a time (busy ones are deferred), so the calls under way are at most the companies of the
        # sinks' current batches (`CRM_SYNC_SINK_BATCH_SIZE`).
        self._executors = TenantExecutors(threads=threads_per_tenant)
        self._stall_hold = 2 * session_timeout_s
        self.stalls = StallGuard(threshold=session_timeout_s / 2, hold=self._stall_hold)
        self._running: Counter[tuple[str, str]] = Counter()
        self._running_lock = threading.Lock()
        self._reconciler = Reconciler(metrics, self._timed)

    def _client(self, crm: Crm, company_id: str) -> Any:
        throttle = functools.partial(self._buckets[crm].get(company_id).acquire_blocking, 1.0)
        if crm is Crm.SALESFORCE:
            creds: Any = self._credentials.salesforce(company_id)
            make: Callable[[], Any] = lambda: SalesforceClient(  # noqa: E731
                creds, self._ca_bundle, reload=functools.partial(self._credentials.salesforce, company_id, fresh=True),
                throttle=throttle, tokens=self.tokens, token_key=(crm.value, company_id),
            )
        else:
            creds = self._credentials.hubspot(company_id)
            make = lambda: HubSpotClient(  # noqa: E731
                creds, self._ca_bundle, reload=functools.partial(self._credentials.hubspot, company_id, fresh=True),
                throttle=throttle, tokens=self.tokens, token_key=(crm.value, company_id),
                persist=lambda changes: self._credentials.rotate(company_id, "hubspot", changes),
                lease=lambda: self._credentials.refresh_lease(company_id, "hubspot"),
            )
        cached = self._clients.get((crm, company_id))
        if cached is None or cached[0] != creds:
            cached = (creds, make())
            self._clients[(crm, company_id)] = cached
        return cached[1]

    def _id_field(self, crm: Crm, company_id: str) -> str | None:
        """The company's own external-id field (its credentials file), else the worker-wide one."""
        creds = self._credentials.salesforce(company_id) if crm is Crm.SALESFORCE else self._credentials.hubspot(company_id)
        own = getattr(creds, "action_id_field", None) if crm is Crm.SALESFORCE else getattr(creds, "action_id_property", None)
        return own or self._id_fields.get(crm)

    def _timed(self, crm: Crm, operation: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        status = "ok"
        try:
            return fn(*args)
        except CrmError as exc:
            status = exc.code
            raise
        finally:
            self._metrics.crm_latency.labels(crm.value, operation).observe(time.perf_counter() - started)
            self._metrics.crm_requests.labels(crm.value, operation, status).inc()

    # -- blocking batch bodies (executor threads) --

    def _owner_ids(self, crm: Crm, company_id: str, emails: set[str], lookup: Callable[[list[str]], Mapping[str, str | None]]) -> dict[str, str | None]:
        known: dict[str, str | None] = {}
        missing = []
        for email in emails:
            hit, value = self._cache.get((f"{crm.value}/{company_id}", email))
            if hit:
                known[email] = value
            else:
                missing.append(email)
        if missing:
            found = lookup(missing)
            for email in missing:
                known[email] = found.get(email)
                self._cache.put((f"{crm.value}/{company_id}", email), found.get(email))
        return known

    def _salesforce_batch(self, company_id: str, actions: Sequence[Action], reconcile: Mapping[str, int], claimed: Claimant) -> list[Outcome]:
        crm = Crm.SALESFORCE
        client = self._client(crm, company_id)
        people = self._timed(crm, "find_people", client.find_people, [a.contact_email for a in actions])
        hosts = {a.owner_email.lower() for a in actions if a.owner_email and a.contact_email.lower() in people}
        users = self._owner_ids(crm, company_id, hosts, lambda emails: self._timed(crm, "find_users", client.find_users, emails))
        id_field = self._id_field(crm, company_id)
        existing, unread = (
            self._reconciler.by_id(crm, company_id, range(len(actions)), "find_tasks", client.find_tasks, id_field, [a.action_id for a in actions])
            if id_field else ({}, {})
        )
        if unread:
            return [unread[i] for i in range(len(actions))]
        outcomes: dict[int, Outcome] = {}
        intended: dict[int, dict[str, str]] = {}
        for i, action in enumerate(actions):
            if action.action_id in existing:
                outcomes[i] = Outcome(DUPLICATE, object_id=existing[action.action_id])
                continue
            owner = users.get(action.owner_email.lower()) if action.owner_email else None
            resolved = salesforce_task_fields(action, people.get(action.contact_email.lower()), owner)
            if resolved.fields is None:
                outcomes[i] = Outcome(SKIPPED, reason=resolved.skip_reason)
                continue
            if id_field:
                resolved.fields[id_field] = action.action_id
            intended[i] = resolved.fields
        doubts = {
            i: Doubt(actions[i].action_id, f, reconcile[actions[i].action_id])
            for i, f in intended.items() if not id_field and actions[i].action_id in reconcile
        }
        for i, outcome in self._reconciler.salesforce(client, company_id, doubts, SALESFORCE_MATCH, claimed).items():
            outcomes[i] = outcome
            del intended[i]
        if intended:
            slots = list(intended)
            self.stalls.check()
            results = self._timed(crm, "create_tasks", client.create_tasks, [intended[i] for i in slots])
            for i, result in zip(slots, results):
                outcomes[i] = from_result(result)
        return [outcomes[i] for i in range(len(actions))]

    def _hubspot_batch(self, company_id: str, actions: Sequence[Action], reconcile: Mapping[str, int], claimed: Claimant) -> list[Outcome]:
        crm = Crm.HUBSPOT
        client = self._client(crm, company_id)
        contacts = self._timed(crm, "find_contacts", client.find_contacts, [a.contact_email for a in actions])
        hosts = {a.owner_email.lower() for a in actions if a.owner_email and a.contact_email.lower() in contacts}
        owners = self._owner_ids(
            crm, company_id, hosts,
            lambda emails: {e: self._timed(crm, "find_owner", client.find_owner, e) for e in emails},
        )
        prop = self._id_field(crm, company_id)
        outcomes: dict[int, Outcome] = {}
        for object_type, hs_type in HUBSPOT_OBJECTS.items():
            group = [i for i, a in enumerate(actions) if a.object_type is object_type]
            if not group:
                continue
            existing, unread = (
                self._reconciler.by_id(crm, company_id, group, f"find_{hs_type}", client.find_by_property, hs_type, prop, [actions[i].action_id for i in group])
                if prop else ({}, {})
            )
            if unread:
                outcomes.update(unread)
                continue
            intended: dict[int, tuple[dict[str, str], str]] = {}
            for i in group:
                action = actions[i]
                if action.action_id in existing:
                    outcomes[i] = Outcome(DUPLICATE, object_id=existing[action.action_id])
                    continue
                contact_id = contacts.get(action.contact_email.lower())
                if contact_id is None:
                    outcomes[i] = Outcome(SKIPPED, reason="contact_not_found")
                    continue
                props = hubspot_properties(action, owners.get(action.owner_email.lower()) if action.owner_email else None)
                if prop:
                    props[prop] = action.action_id
                intended[i] = (props, contact_id)
            doubts = {
                i: (Doubt(actions[i].action_id, props, reconcile[actions[i].action_id]), contact)
                for i, (props, contact) in intended.items() if not prop and actions[i].action_id in reconcile
            }
            for i, outcome in self._reconciler.hubspot(client, company_id, hs_type, doubts, HUBSPOT_MATCH[object_type], claimed).items():
                outcomes[i] = outcome
                del intended[i]
            if intended:
                slots = list(intended)
                create = client.create_meetings if object_type is ObjectType.MEETING else client.create_notes
                self.stalls.check()
                results = self._timed(crm, f"create_{hs_type}", create, [intended[i] for i in slots])
                for i, result in zip(slots, results):
                    outcomes[i] = from_result(result)
                    if result.existing:
                        self._metrics.reconcile.labels(crm.value, CONFLICT_RESOLVED).inc()
        return [outcomes[i] for i in range(len(actions))]

    def warn_retiring_logins(self) -> None:
        """At start-up: name the companies still on the username-password flow Salesforce retires,
        and those whose credentials are refused (an endpoint off the CRM's domains, a foreign key file)."""
        for company_id in self._credentials.salesforce_password_companies():
            log.warning(PASSWORD_FLOW_WARNING, extra={"crm": "salesforce", "company_id": company_id})
        for company_id, crm, error in self._credentials.refused():
            log.error("credentials refused: this company's deliveries will be dead-lettered until the file is fixed",
                      extra={"crm": crm, "company_id": company_id, "error_code": error.code, "reason": error.message})

    def _read_quota(self, crm: Crm, company_id: str) -> None:
        """The usage the company's last responses reported → the quota book and its two gauges."""
        cached = self._clients.get((crm, company_id))
        usage = getattr(cached[1], "api_usage", None) if cached is not None else None
        if usage is None:
            return
        self.quota.record((crm.value, company_id), *usage)
        self._metrics.api_usage_ratio.labels(crm.value).set(self.quota.worst(crm.value))
        self._metrics.tenants_near_quota.labels(crm.value).set(self.quota.above(crm.value))

    # -- the async entry point --

    def busy(self, crm: Crm, company_id: str) -> bool:
        """An earlier call for this company still runs in a thread (a hung CRM)."""
        with self._running_lock:
            return self._running[(crm.value, company_id)] > 0

    async def deliver_batch(
        self,
        crm: Crm,
        company_id: str,
        actions: Sequence[Action],
        reconcile: Mapping[str, int] | None = None,
        claimed: Claimant | None = None,
    ) -> list[Outcome]:
        """One company's due actions for one CRM → one outcome each, in order.

        `reconcile`: action id → when its earlier, unfinished attempt began (its ledger intent);
        those are looked for in the CRM before anything is created. `claimed`: object id → the
        action whose ledger entry names it (`processors.stages.reconcile`).
        """
        first = int(self._clock() * 1000)
        key = (crm.value, company_id)
        n = len(actions)
        self.stalls.watch()
        stalled = self.stalls.remaining()
        if stalled > 0:
            return [Outcome(DEFERRED, reason="worker_stalled", retry_after=stalled, first_attempt_at=first)] * n
        cooling = self.circuit.remaining(key)
        if cooling > 0:
            return [Outcome(DEFERRED, reason="auth_circuit_open", retry_after=cooling, first_attempt_at=first)] * n
        quota_wait = self.quota.wait(key)
        if quota_wait > 0:
            return [Outcome(DEFERRED, reason="quota_near_limit", retry_after=quota_wait, first_attempt_at=first)] * n
        slow_wait = self.slow.remaining(key)
        if slow_wait > 0:
            # Back when the cool-down ends, not at the next short backoff: bouncing through the
            # retry topic every second spends the give-up window without asking the CRM once.
            return [Outcome(DEFERRED, reason="crm_slow", retry_after=slow_wait, first_attempt_at=first)] * n
        if self.busy(crm, company_id):
            return [Outcome(DEFERRED, reason="crm_slow", first_attempt_at=first)] * n
        budget = min(self._budget, SLOW_PROBE_BUDGET_S) if self.slow.failing(key) else self._budget
        attempts = 1
        doubtful = dict(reconcile or {})
        claims: Claimant = claimed or (lambda object_id: None)

        def on_retry(attempt: int, error: TransientError, delay: float) -> None:
            nonlocal attempts, doubtful
            attempts = attempt + 1
            # The failed attempt may have created some of them: look before creating again.
            doubtful = {**{a.action_id: first for a in actions}, **doubtful}
            self._metrics.retries.labels(crm.value, error.code).inc()

        body = self._salesforce_batch if crm is Crm.SALESFORCE else self._hubspot_batch

        def counted() -> list[Outcome]:
            with self._running_lock:
                self._running[key] += 1
            try:
                return body(company_id, list(actions), doubtful, claims)
            finally:
                with self._running_lock:
                    self._running[key] -= 1

        try:
            outcomes = await asyncio.wait_for(
                call_with_retry(counted, policy=self._policy, on_retry=on_retry, executor=self._executors.get(key)), budget
            )
            self.circuit.succeeded(key)
            self.slow.succeeded(key)
        except asyncio.TimeoutError:
            self.slow.failed(key)
            log.warning(
                "CRM too slow: this company's actions are deferred",
                extra={"crm": crm.value, "company_id": company_id, "budget_s": budget, "cooldown_s": round(self.slow.remaining(key), 1)},
            )
            outcomes = [Outcome(DEFERRED, reason="crm_timeout")] * n
        except Stalled:
            outcomes = [Outcome(DEFERRED, reason="worker_stalled", retry_after=self.stalls.remaining() or self._stall_hold)] * n
        except TransientError as exc:
            outcomes = [Outcome(DEFERRED, reason=exc.code, error=exc, retry_after=exc.retry_after)] * n
        except AuthError as exc:
            self._credentials.invalidate(company_id, crm.value)
            if self.circuit.failed(key):
                log.warning(
                    "authentication keeps failing: delivery paused for this company",
                    extra={"crm": crm.value, "company_id": company_id, "cooldown": round(self.circuit.remaining(key), 1)},
                )
            self._metrics.paused_targets.set(self.circuit.open_count())
            outcomes = [Outcome(FAILED, reason=exc.code, error=exc)] * n
        except CrmError as exc:
            outcomes = [Outcome(FAILED, reason=exc.code, error=exc)] * n
        self._read_quota(crm, company_id)
        now = int(self._clock() * 1000)
        return [replace(o, attempts=attempts, first_attempt_at=first, last_attempt_at=now) for o in outcomes]
