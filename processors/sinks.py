"""Delivering due actions to a CRM in batches, one company at a time, never failing a neighbour.

`salesforce_task_fields` and `hubspot_properties` decide (pure). `Deliverer.deliver_batch` does the
calls for one company's batch through `connectors/`: one batched lookup per kind (people, users,
contacts, owners), an optional external-id check that finds objects created before a crash, one
batched create, and one `Outcome` per action — never an exception, so the sink stage goes on.

A transient failure is retried inline for a short while (the one retry policy); after that the
actions come back DEFERRED, and the sink parks them on the retry topic so the partition moves on
(no head-of-line blocking of other companies). Repeated authentication failures open a per-company
circuit: that company's actions are deferred, not sent, until it cools down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from connectors.credentials import CredentialStore
from connectors.errors import AuthError, CrmError, Result, TransientError
from connectors.hubspot import HubSpotClient
from connectors.retry import RetryPolicy, TokenBuckets, call_with_retry
from connectors.salesforce import SalesforceClient
from processors.metrics import Metrics
from processors.model import Action, Crm, ObjectType

log = logging.getLogger(__name__)

CREATED = "created"
SKIPPED = "skipped"
FAILED = "failed"
DUPLICATE = "duplicate"
DEFERRED = "deferred"

HUBSPOT_OBJECTS = {ObjectType.MEETING: "meetings", ObjectType.NOTE: "notes"}


@dataclass(frozen=True)
class Outcome:
    status: str
    object_id: str | None = None
    reason: str | None = None
    error: CrmError | None = None
    retry_after: float | None = None
    attempts: int = 1
    first_attempt_at: int = 0
    last_attempt_at: int = 0


@dataclass(frozen=True)
class Resolved:
    """The result of a resolution step: fields to create with, or the reason there are none."""

    fields: dict[str, str] | None = None
    skip_reason: str | None = None


def salesforce_task_fields(action: Action, who: Any | None, owner_user_id: str | None) -> Resolved:
    """SPEC §5: WhoId is the matched Contact/Lead; OwnerId the host's User, else the record owner."""
    if who is None:
        return Resolved(skip_reason="contact_not_found")
    fields = dict(action.properties)
    fields["WhoId"] = who.id
    owner = owner_user_id or who.owner_id
    if owner:
        fields["OwnerId"] = owner
    return Resolved(fields=fields)


def hubspot_properties(action: Action, owner_id: str | None) -> dict[str, str]:
    props = dict(action.properties)
    if owner_id:
        props["hubspot_owner_id"] = owner_id
    return props


def deferral_backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before a deferred action is tried again: 5 s doubling to 15 min, with jitter."""
    ceiling = min(900.0, 5.0 * 2 ** max(0, attempt - 1))
    return ceiling / 2 + rng() * ceiling / 2


def from_result(result: Result) -> Outcome:
    """One record's answer inside a batch: created, deferred (transient) or failed (permanent)."""
    if result.ok:
        return Outcome(CREATED, object_id=result.id)
    assert result.error is not None
    if isinstance(result.error, TransientError):
        return Outcome(DEFERRED, reason=result.error.code, error=result.error, retry_after=result.error.retry_after)
    return Outcome(FAILED, reason=result.error.code, error=result.error)


@dataclass
class TtlCache:
    """Owner/user resolutions change rarely; a short memory saves a lookup per action."""

    ttl: float
    clock: Callable[[], float] = time.monotonic
    _data: dict[tuple[str, str], tuple[float, str | None]] = field(default_factory=dict)

    def get(self, key: tuple[str, str]) -> tuple[bool, str | None]:
        hit = self._data.get(key)
        if hit is None or hit[0] < self.clock():
            return False, None
        return True, hit[1]

    def put(self, key: tuple[str, str], value: str | None) -> None:
        self._data[key] = (self.clock() + self.ttl, value)


@dataclass
class AuthCircuit:
    """Consecutive auth failures per (CRM, company); open after `threshold`, for a growing cool-down."""

    threshold: int = 3
    base_cooldown: float = 30.0
    max_cooldown: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)
    _open_until: dict[tuple[str, str], float] = field(default_factory=dict)

    def remaining(self, key: tuple[str, str]) -> float:
        return max(0.0, self._open_until.get(key, 0.0) - self.clock())

    def failed(self, key: tuple[str, str]) -> bool:
        """Count a failure; True when this one opened the circuit."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if count < self.threshold:
            return False
        cooldown = min(self.max_cooldown, self.base_cooldown * 2 ** (count - self.threshold))
        self._open_until[key] = self.clock() + cooldown
        return True

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)
        self._open_until.pop(key, None)

    def open_count(self) -> int:
        now = self.clock()
        return sum(1 for until in self._open_until.values() if until > now)


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
        concurrency: int = 16,
        cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._ca_bundle = ca_bundle
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        rates = rates or {}
        self._buckets = {crm: TokenBuckets(rate=rates.get(crm, 10.0), burst=max(1.0, rates.get(crm, 10.0))) for crm in Crm}
        self._id_fields = dict(action_id_fields or {})
        self._cache = TtlCache(cache_ttl)
        self.circuit = AuthCircuit()
        self._clients: dict[tuple[Crm, str], tuple[Any, Any]] = {}
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="crm")
        self._slots = asyncio.Semaphore(concurrency)

    def _client(self, crm: Crm, company_id: str) -> Any:
        throttle = functools.partial(self._buckets[crm].get(company_id).acquire_blocking, 1.0)
        if crm is Crm.SALESFORCE:
            creds = self._credentials.salesforce(company_id)
            make: Callable[[], Any] = lambda: SalesforceClient(  # noqa: E731
                creds, self._ca_bundle, reload=functools.partial(self._credentials.salesforce, company_id, fresh=True),
                throttle=throttle,
            )
        else:
            creds = self._credentials.hubspot(company_id)
            make = lambda: HubSpotClient(  # noqa: E731
                creds, self._ca_bundle, reload=functools.partial(self._credentials.hubspot, company_id, fresh=True),
                throttle=throttle,
            )
        cached = self._clients.get((crm, company_id))
        if cached is None or cached[0] != creds:
            cached = (creds, make())
            self._clients[(crm, company_id)] = cached
        return cached[1]

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

    def _salesforce_batch(self, company_id: str, actions: Sequence[Action]) -> list[Outcome]:
        crm = Crm.SALESFORCE
        client = self._client(crm, company_id)
        people = self._timed(crm, "find_people", client.find_people, [a.contact_email for a in actions])
        hosts = {a.owner_email.lower() for a in actions if a.owner_email and a.contact_email.lower() in people}
        users = self._owner_ids(crm, company_id, hosts, lambda emails: self._timed(crm, "find_users", client.find_users, emails))
        id_field = self._id_fields.get(crm)
        existing = (
            self._timed(crm, "find_tasks", client.find_tasks, id_field, [a.action_id for a in actions]) if id_field else {}
        )
        outcomes: list[Outcome | None] = [None] * len(actions)
        records, slots = [], []
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
            records.append(resolved.fields)
            slots.append(i)
        if records:
            results = self._timed(crm, "create_tasks", client.create_tasks, records)
            for i, result in zip(slots, results):
                outcomes[i] = from_result(result)
        return [o for o in outcomes if o is not None]

    def _hubspot_batch(self, company_id: str, actions: Sequence[Action]) -> list[Outcome]:
        crm = Crm.HUBSPOT
        client = self._client(crm, company_id)
        contacts = self._timed(crm, "find_contacts", client.find_contacts, [a.contact_email for a in actions])
        hosts = {a.owner_email.lower() for a in actions if a.owner_email and a.contact_email.lower() in contacts}
        owners = self._owner_ids(
            crm, company_id, hosts,
            lambda emails: {e: self._timed(crm, "find_owner", client.find_owner, e) for e in emails},
        )
        prop = self._id_fields.get(crm)
        outcomes: list[Outcome | None] = [None] * len(actions)
        for object_type, hs_type in HUBSPOT_OBJECTS.items():
            group = [i for i, a in enumerate(actions) if a.object_type is object_type]
            if not group:
                continue
            existing = (
                self._timed(crm, f"find_{hs_type}", client.find_by_property, hs_type, prop, [actions[i].action_id for i in group])
                if prop else {}
            )
            items, slots = [], []
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
                items.append((props, contact_id))
                slots.append(i)
            if items:
                create = client.create_meetings if object_type is ObjectType.MEETING else client.create_notes
                results = self._timed(crm, f"create_{hs_type}", create, items)
                for i, result in zip(slots, results):
                    outcomes[i] = from_result(result)
        return [o for o in outcomes if o is not None]

    # -- the async entry point --

    async def deliver_batch(self, crm: Crm, company_id: str, actions: Sequence[Action]) -> list[Outcome]:
        """One company's due actions for one CRM → one outcome each, in order."""
        first = int(self._clock() * 1000)
        key = (crm.value, company_id)
        cooling = self.circuit.remaining(key)
        if cooling > 0:
            return [Outcome(DEFERRED, reason="auth_circuit_open", retry_after=cooling, first_attempt_at=first)] * len(actions)
        attempts = 1

        def on_retry(attempt: int, error: TransientError, delay: float) -> None:
            nonlocal attempts
            attempts = attempt + 1
            self._metrics.retries.labels(crm.value, error.code).inc()

        body = self._salesforce_batch if crm is Crm.SALESFORCE else self._hubspot_batch
        async with self._slots:
            try:
                outcomes = await call_with_retry(
                    body, company_id, list(actions), policy=self._policy, on_retry=on_retry, executor=self._executor
                )
                self.circuit.succeeded(key)
            except TransientError as exc:
                outcomes = [Outcome(DEFERRED, reason=exc.code, error=exc, retry_after=exc.retry_after)] * len(actions)
            except AuthError as exc:
                self._credentials.invalidate(company_id, crm.value)
                if self.circuit.failed(key):
                    log.warning(
                        "authentication keeps failing: delivery paused for this company",
                        extra={"crm": crm.value, "company_id": company_id, "cooldown": round(self.circuit.remaining(key), 1)},
                    )
                self._metrics.paused_targets.set(self.circuit.open_count())
                outcomes = [Outcome(FAILED, reason=exc.code, error=exc)] * len(actions)
            except CrmError as exc:
                outcomes = [Outcome(FAILED, reason=exc.code, error=exc)] * len(actions)
        now = int(self._clock() * 1000)
        return [replace(o, attempts=attempts, first_attempt_at=first, last_attempt_at=now) for o in outcomes]


def outcome_fields(outcome: Outcome) -> Mapping[str, Any]:
    """Log context for an outcome; carries no personal data."""
    return {
        "outcome": outcome.status,
        "reason": outcome.reason,
        "attempts": outcome.attempts,
        "error_code": outcome.error.code if outcome.error else None,
    }
