"""The CRM reads of reconciliation: which doubtful actions already have their object in the CRM.

An action is doubtful when an earlier attempt may have reached the CRM (its ledger entry is an
intent or a failure, or it comes back from the retry topic). Before anything is created, the
objects the CRM holds on the same people are read and paired with the doubtful actions by the
pure rule `processors.domain.deliver.reconcile` (content alike, created after the intent minus
the clock-skew margin, named by no other action's ledger entry, one to one).

In external-id mode the check by id before each create is that read. A failed read never fails
an action; it counts as `read_failed` (the alert `CrmSyncReconcileReadsFailing` fires when that
persists). A transient error goes on as one: the one retry policy retries the batch inline, then
defers it. Any other error defers the actions the read was for to the retry topic at once. Only
an authentication error goes on as one (the create would meet it as well): the auth circuit and
the dead letter tell the operator, and a retry of the dead letter reconciles again.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

from connectors.errors import AuthError, CrmError, TransientError
from processors.domain.deliver import (
    DEFERRED,
    DUPLICATE,
    READ_FAILED,
    RECONCILE_SKEW_MS,
    Candidate,
    Doubt,
    Outcome,
    epoch_ms,
    reconcile,
)
from processors.domain.model import Crm
from processors.metrics import Metrics

log = logging.getLogger(__name__)

Claimant = Callable[[str], str | None]  # object id → the action id whose ledger entry names it
Timed = Callable[..., Any]  # the deliverer's `_timed(crm, operation, fn, *args)`
READ_FAILED_REASON = "reconcile_read_failed"


class Reconciler:
    """One per deliverer: the reads, the rule and the `crm_sync_reconcile_total` counts."""

    def __init__(self, metrics: Metrics, timed: Timed, skew_ms: int = RECONCILE_SKEW_MS) -> None:
        self._metrics = metrics
        self._timed = timed
        self._skew_ms = skew_ms

    def _count(self, crm: Crm, counts: Mapping[str, int]) -> None:
        for outcome, n in counts.items():
            self._metrics.reconcile.labels(crm.value, outcome).inc(n)

    def _failed(self, crm: Crm, company_id: str, doubts: Mapping[int, Doubt | None], exc: CrmError) -> dict[int, Outcome]:
        """The read failed: defer every action it was for (never a permanent failure); a
        transient error is raised again for the inline retry."""
        self._count(crm, {READ_FAILED: len(doubts)})
        log.warning(
            "reconciliation read failed; its actions are deferred",
            extra={"crm": crm.value, "company_id": company_id, "error_code": exc.code, "actions": len(doubts)},
        )
        if isinstance(exc, TransientError):
            raise exc
        return {i: Outcome(DEFERRED, reason=READ_FAILED_REASON, error=exc) for i in doubts}

    def by_id(self, crm: Crm, company_id: str, slots: Iterable[int], operation: str, read: Callable[..., dict[str, str]],
              *args: Any) -> tuple[dict[str, str], dict[int, Outcome]]:
        """The external-id check (action id → object id), or, when that read fails, nothing found
        and every slot deferred: this read is the reconciliation of external-id mode."""
        try:
            return self._timed(crm, operation, read, *args), {}
        except AuthError:
            raise
        except CrmError as exc:
            return {}, self._failed(crm, company_id, {i: None for i in slots}, exc)

    def _pair(self, crm: Crm, doubts: Mapping[int, Doubt], candidates: Sequence[Candidate], fields: tuple[str, ...],
              claimant: Claimant, taken: set[str]) -> dict[int, Outcome]:
        result = reconcile(doubts, candidates, fields, claimant, taken, self._skew_ms)
        self._count(crm, result.counts)
        return {i: Outcome(DUPLICATE, object_id=object_id) for i, object_id in result.found.items()}

    def salesforce(self, client: Any, company_id: str, doubts: Mapping[int, Doubt], fields: tuple[str, ...],
                   claimant: Claimant) -> dict[int, Outcome]:
        """Slot → outcome for the doubtful Tasks that exist (DUPLICATE) or cannot be checked now
        (DEFERRED); the others are to be created."""
        if not doubts:
            return {}
        since = min(d.intent_ms for d in doubts.values()) - self._skew_ms
        people = sorted({str(d.fields["WhoId"]) for d in doubts.values()})
        try:
            tasks = self._timed(Crm.SALESFORCE, "reconcile_tasks", client.find_tasks_for, people, since)
        except AuthError:
            raise
        except CrmError as exc:
            return self._failed(Crm.SALESFORCE, company_id, doubts, exc)
        candidates = [Candidate(str(t["Id"]), t, epoch_ms(t.get("CreatedDate"))) for t in tasks]
        return self._pair(Crm.SALESFORCE, doubts, candidates, fields, claimant, set())

    def hubspot(self, client: Any, company_id: str, hs_type: str, doubts: Mapping[int, tuple[Doubt, str]],
                fields: tuple[str, ...], claimant: Claimant) -> dict[int, Outcome]:
        """As `salesforce`, for meetings or notes; `doubts`: slot → (doubt, contact id). Only the
        contact's objects created after the intent (minus the skew margin) are compared."""
        if not doubts:
            return {}
        contacts = sorted({c for _, c in doubts.values()})
        try:
            by_contact = self._timed(Crm.HUBSPOT, f"reconcile_{hs_type}", client.associated_objects, hs_type, contacts, list(fields))
        except AuthError:
            raise
        except CrmError as exc:
            return self._failed(Crm.HUBSPOT, company_id, {i: d for i, (d, _) in doubts.items()}, exc)
        taken: set[str] = set()
        found: dict[int, Outcome] = {}
        for contact in contacts:
            mine = {i: d for i, (d, c) in doubts.items() if c == contact}
            candidates = [
                Candidate(str(o["id"]), o.get("properties") or {}, epoch_ms((o.get("properties") or {}).get("hs_createdate")))
                for o in by_contact.get(contact, [])
            ]
            found.update(self._pair(Crm.HUBSPOT, mine, candidates, fields, claimant, taken))
        return found
