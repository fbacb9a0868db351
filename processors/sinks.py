"""Delivering a due action to its CRM: resolve people, create the object, report the outcome.

`salesforce_task_fields` and `hubspot_properties` decide (pure); `Deliverer` does the calls through
`connectors/`, with the one retry policy, and turns every failure into an `Outcome` (never an
exception), so the sink agent can go on with the next action.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from connectors.credentials import CredentialStore
from connectors.errors import CrmError, TransientError
from connectors.hubspot import HubSpotClient
from connectors.retry import RetryPolicy, call_with_retry
from connectors.salesforce import SalesforceClient
from processors.metrics import Metrics
from processors.model import Action, Crm, ObjectType

log = logging.getLogger(__name__)

CREATED = "created"
SKIPPED = "skipped"
FAILED = "failed"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Outcome:
    status: str
    object_id: str | None = None
    reason: str | None = None
    error: CrmError | None = None
    attempts: int = 1
    first_attempt_at: int = 0
    last_attempt_at: int = 0


@dataclass(frozen=True)
class Resolved:
    """The result of a resolution step: fields to create with, or the reason there are none."""

    fields: dict[str, str] | None = None
    skip_reason: str | None = None


def salesforce_task_fields(
    action: Action, who: Any | None, owner_user_id: str | None
) -> Resolved:
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


class Deliverer:
    """One per worker; clients are cached per company and rebuilt after a credentials reload."""

    def __init__(
        self,
        credentials: CredentialStore,
        ca_bundle: str | None,
        policy: RetryPolicy,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._ca_bundle = ca_bundle
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._sf: dict[str, tuple[Any, SalesforceClient]] = {}
        self._hs: dict[str, tuple[Any, HubSpotClient]] = {}

    def _salesforce(self, company_id: str) -> SalesforceClient:
        creds = self._credentials.salesforce(company_id)
        cached = self._sf.get(company_id)
        if cached is None or cached[0] != creds:
            reload = functools.partial(self._credentials.salesforce, company_id, fresh=True)
            cached = (creds, SalesforceClient(creds, self._ca_bundle, reload=reload))
            self._sf[company_id] = cached
        return cached[1]

    def _hubspot(self, company_id: str) -> HubSpotClient:
        creds = self._credentials.hubspot(company_id)
        cached = self._hs.get(company_id)
        if cached is None or cached[0] != creds:
            reload = functools.partial(self._credentials.hubspot, company_id, fresh=True)
            cached = (creds, HubSpotClient(creds, self._ca_bundle, reload=reload))
            self._hs[company_id] = cached
        return cached[1]

    def _deliver_salesforce(self, action: Action) -> Outcome:
        client = self._salesforce(action.company_id)
        email = action.contact_email.lower()
        emails = [action.contact_email]
        who = self._timed(Crm.SALESFORCE, "find_people", client.find_people, emails).get(email)
        owner_user = None
        if action.owner_email and who is not None:
            users = self._timed(Crm.SALESFORCE, "find_users", client.find_users, [action.owner_email])
            owner_user = users.get(action.owner_email.lower())
        resolved = salesforce_task_fields(action, who, owner_user)
        if resolved.fields is None:
            return Outcome(SKIPPED, reason=resolved.skip_reason)
        task_id = self._timed(Crm.SALESFORCE, "create_task", client.create_task, resolved.fields)
        return Outcome(CREATED, object_id=task_id)

    def _deliver_hubspot(self, action: Action) -> Outcome:
        client = self._hubspot(action.company_id)
        contacts = self._timed(Crm.HUBSPOT, "find_contacts", client.find_contacts, [action.contact_email])
        contact_id = contacts.get(action.contact_email.lower())
        if contact_id is None:
            return Outcome(SKIPPED, reason="contact_not_found")
        owner_id = None
        if action.owner_email:
            owner_id = self._timed(Crm.HUBSPOT, "find_owner", client.find_owner, action.owner_email)
        props = hubspot_properties(action, owner_id)
        if action.object_type is ObjectType.MEETING:
            object_id = self._timed(Crm.HUBSPOT, "create_meeting", client.create_meeting, props, contact_id)
        else:
            object_id = self._timed(Crm.HUBSPOT, "create_note", client.create_note, props, contact_id)
        return Outcome(CREATED, object_id=object_id)

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
            self._metrics.crm_requests.labels(crm.value, operation, status if status == "ok" else "error").inc()

    async def deliver(self, action: Action) -> Outcome:
        first = int(self._clock() * 1000)
        attempts = 1

        def on_retry(attempt: int, error: TransientError, delay: float) -> None:
            nonlocal attempts
            attempts = attempt + 1
            self._metrics.retries.labels(action.crm.value, error.code).inc()

        fn = self._deliver_salesforce if action.crm is Crm.SALESFORCE else self._deliver_hubspot
        try:
            outcome = await call_with_retry(fn, action, policy=self._policy, on_retry=on_retry)
        except CrmError as exc:
            if not isinstance(exc, TransientError):
                self._credentials.invalidate(action.company_id, action.crm.value)
            outcome = Outcome(FAILED, reason=exc.code, error=exc)
        now = int(self._clock() * 1000)
        return Outcome(
            outcome.status,
            object_id=outcome.object_id,
            reason=outcome.reason,
            error=outcome.error,
            attempts=attempts,
            first_attempt_at=first,
            last_attempt_at=now,
        )


def outcome_fields(outcome: Outcome) -> Mapping[str, Any]:
    """Log context for an outcome; carries no personal data."""
    return {
        "outcome": outcome.status,
        "reason": outcome.reason,
        "attempts": outcome.attempts,
        "error_code": outcome.error.code if outcome.error else None,
    }
