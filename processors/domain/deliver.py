"""Delivery decisions, pure: the CRM fields of an action, the outcome of each action, and where an
outcome goes next (`route`: the ledger, the retry topic with a new due time, or the dead-letter
topic), plus the small state machines the deliverer keeps (owner cache, auth circuit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from processors.domain.model import Action, ObjectType

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
    error: Any = None  # a connectors.errors.CrmError: code, message, retry_after
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
class Circuit:
    """Consecutive failures per (CRM, company); open after `threshold`, for a growing cool-down.
    One kind per instance: authentication failures, or a CRM running out the company's budget."""

    cooldown: Callable[[int], float]  # n-th opening in a row (1, 2, …) → seconds: the one retry policy
    threshold: int = 3
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
        self._open_until[key] = self.clock() + self.cooldown(count - self.threshold + 1)
        return True

    def failing(self, key: tuple[str, str]) -> bool:
        """The last call failed (the next one after the cool-down is a probe)."""
        return key in self._failures

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)
        self._open_until.pop(key, None)

    def open_count(self) -> int:
        now = self.clock()
        return sum(1 for until in self._open_until.values() if until > now)


# ---- API quota (SPEC §11: a tenant near its daily quota is deferred, not failed) ------------------

QUOTA_ALERT_RATIO = 0.8  # tenants at or above this share are counted (the dashboard and the alert)


def usage_ratio(used: int, limit: int) -> float | None:
    """used/limit as the CRM reports it (``Sforce-Limit-Info``, HubSpot's daily headers); None when
    the limit is unknown. May exceed 1 (Salesforce lets an org run over briefly)."""
    if limit <= 0 or used < 0:
        return None
    return used / limit


@dataclass
class QuotaBook:
    """The last quota reading per (CRM, company), and whether a company must wait for it.

    A company at or above `defer_ratio` is deferred until `probe_after` seconds after its reading;
    then one batch goes through, which reads the quota again (the allocation is a rolling 24 h).
    """

    defer_ratio: float = 0.95
    probe_after: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _readings: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # ratio, read at

    def record(self, key: tuple[str, str], used: int, limit: int) -> None:
        ratio = usage_ratio(used, limit)
        if ratio is not None:
            self._readings[key] = (ratio, self.clock())

    def ratio(self, key: tuple[str, str]) -> float | None:
        reading = self._readings.get(key)
        return reading[0] if reading else None

    def wait(self, key: tuple[str, str]) -> float:
        """Seconds this company's actions should wait for quota (0: go ahead)."""
        reading = self._readings.get(key)
        if reading is None or reading[0] < self.defer_ratio:
            return 0.0
        return max(0.0, reading[1] + self.probe_after - self.clock())

    def worst(self, crm: str) -> float:
        """The highest used/limit among this CRM's tenants (0 when none was read)."""
        return max((ratio for (c, _), (ratio, _) in self._readings.items() if c == crm), default=0.0)

    def above(self, crm: str, threshold: float = QUOTA_ALERT_RATIO) -> int:
        """How many of this CRM's tenants are at or above `threshold`."""
        return sum(1 for (c, _), (ratio, _) in self._readings.items() if c == crm and ratio >= threshold)


# ---- reconciliation after a crash (exactly once without an external-id field) --------------------

SALESFORCE_MATCH = ("WhoId", "Subject", "ActivityDate", "Description")
HUBSPOT_MATCH = {
    ObjectType.MEETING: ("hs_meeting_title", "hs_meeting_body", "hs_meeting_start_time", "hs_meeting_end_time", "hs_timestamp"),
    ObjectType.NOTE: ("hs_note_body", "hs_timestamp"),
}
TIME_FIELDS = frozenset({"hs_timestamp", "hs_meeting_start_time", "hs_meeting_end_time"})


def _same(name: str, sent: Any, found: Any) -> bool:
    """Equal as the CRM stores it: times compared as instants (a CRM may add milliseconds)."""
    if name in TIME_FIELDS and sent and found:
        from datetime import datetime

        def instant(value: str) -> float:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()

        try:
            return instant(sent) == instant(found)
        except ValueError:
            return False
    return (sent or "") == (found or "")


def match_existing(
    intended: Mapping[int, Mapping[str, Any]],
    candidates: list[tuple[str, Mapping[str, Any]]],
    fields: tuple[str, ...],
    claimed: set[str],
) -> dict[int, str]:
    """Pair actions whose create may have happened before a crash with objects the CRM holds.

    `intended`: slot → the fields the action creates with; `candidates`: (object id, its fields),
    oldest first; `claimed`: object ids already recorded for other actions (never matched, and
    updated with each match), so two actions with identical content never share one object.
    """
    found: dict[int, str] = {}
    for slot, sent in intended.items():
        for object_id, existing in candidates:
            if object_id in claimed:
                continue
            if all(_same(name, sent.get(name), existing.get(name)) for name in fields):
                found[slot] = object_id
                claimed.add(object_id)
                break
    return found


# Clock skew allowed between the worker and a CRM: an object counts as created after an intent when
# the CRM's creation time is at most this much before it. Larger than any sane NTP drift (a CRM
# clock 90 s behind still reconciles); small next to the delay between two bookings' deliveries.
RECONCILE_SKEW_MS = 5 * 60 * 1000

# Every reconciliation outcome (`crm_sync_reconcile_total{crm,outcome}`), one per doubtful action
# unless said otherwise.
MATCHED = "matched"  # an object found and recorded for the action: nothing created
NOT_FOUND = "not_found"  # nothing of the action's: it is created
READ_FAILED = "read_failed"  # the CRM read failed: the action is deferred, never failed
CONFLICT_RESOLVED = "conflict_resolved"  # a unique-value conflict: the existing object is recorded
REJECTED_CLAIMED = "rejected_claimed"  # per candidate: alike, but another action's ledger names it
REJECTED_EARLIER = "rejected_earlier"  # per candidate: alike, but created before the intent (- skew)
RECONCILE_OUTCOMES = (MATCHED, NOT_FOUND, READ_FAILED, CONFLICT_RESOLVED, REJECTED_CLAIMED, REJECTED_EARLIER)


@dataclass(frozen=True)
class Doubt:
    """An action whose create may have reached the CRM: what it creates with and when it may
    first have tried (its ledger intent)."""

    action_id: str
    fields: Mapping[str, Any]
    intent_ms: int


@dataclass(frozen=True)
class Candidate:
    """An object the CRM holds that an action may have created: its id, fields and creation time
    (epoch ms by the CRM's clock; None when the CRM did not say)."""

    object_id: str
    fields: Mapping[str, Any]
    created_ms: int | None


@dataclass(frozen=True)
class Reconciled:
    """`found`: slot → object id; `counts`: outcome → how many (the metric)."""

    found: dict[int, str]
    counts: dict[str, int]


def reconcile(
    doubts: Mapping[int, Doubt],
    candidates: Sequence[Candidate],
    fields: tuple[str, ...],
    claimant: Callable[[str], str | None],
    taken: set[str],
    skew_ms: int = RECONCILE_SKEW_MS,
) -> Reconciled:
    """The reconciliation rule: which doubtful actions already have their object.

    An object is an action's only if (1) it renders alike on `fields` (`match_existing`), (2) the
    CRM created it no earlier than the action's intent minus `skew_ms`, and (3) no other action's
    ledger entry names it (`claimant`: object id → the action id whose entry names it, or None)
    and no earlier match took it (`taken`, updated). Actions are paired oldest intent first, each
    with the oldest eligible object, so identical actions and identical objects pair one to one
    and as many as possible (an object eligible for a later intent is eligible for an earlier one).
    """
    found: dict[int, str] = {}
    counts: dict[str, int] = {}

    def count(outcome: str) -> None:
        counts[outcome] = counts.get(outcome, 0) + 1

    ordered = sorted(candidates, key=lambda c: (c.created_ms is None, c.created_ms or 0))
    for slot in sorted(doubts, key=lambda s: (doubts[s].intent_ms, s)):
        doubt = doubts[slot]
        eligible: list[tuple[str, Mapping[str, Any]]] = []
        for c in ordered:
            if c.object_id in taken or not all(_same(n, doubt.fields.get(n), c.fields.get(n)) for n in fields):
                continue
            owner = claimant(c.object_id)
            if owner is not None and owner != doubt.action_id:
                count(REJECTED_CLAIMED)
            elif c.created_ms is None or c.created_ms < doubt.intent_ms - skew_ms:
                count(REJECTED_EARLIER)
            else:
                eligible.append((c.object_id, c.fields))
        match = match_existing({slot: doubt.fields}, eligible, fields, taken)
        if match:
            found[slot] = match[slot]
        count(MATCHED if match else NOT_FOUND)
    return Reconciled(found, counts)


def epoch_ms(value: Any) -> int | None:
    """A CRM's creation time (ISO 8601, Salesforce's ``+0000`` too, or epoch ms) → epoch ms."""
    from datetime import datetime

    text = str(value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    text = text.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return None


# ---- routing: outcome → ledger entry | defer(due) | dead letter | give up -------------------------

LEDGER = "ledger"
DEFER = "defer"
DEAD_LETTER = "dead_letter"
GIVE_UP = "give_up"

HISTORY_OF = {CREATED: "created", DUPLICATE: "created", SKIPPED: "skipped", FAILED: "failed"}
CONTACT_NOT_FOUND = "contact_not_found"
RECHECKED = "rechecked"


@dataclass(frozen=True)
class Route:
    """Where one action's outcome goes. `history` is the sync-history outcome it counts as, if any
    (a DUPLICATE is an object created earlier, possibly before a crash: counting is idempotent per
    action, so it is counted as created once)."""

    kind: str
    ledger_value: str | None = None
    retry: Action | None = None
    history: str | None = None
    reason: str | None = None
    recheck: int | None = None  # which contact re-check (1, 2, …) a RECHECKED route schedules


@dataclass(frozen=True)
class RetryRules:
    """When to try a transiently failing action again, and when to stop."""

    give_up_ms: int  # measured from the action's first due time (`Action.give_up_clock`)
    backoff: Callable[[int], float]  # attempt (1, 2, …) → seconds: the one retry policy
    retry_after_cap: float  # a CRM's Retry-After longer than this is capped


def next_recheck(action: Action, now_ms: int, recheck_seconds: Sequence[int]) -> tuple[int, int] | None:
    """(number, due time) of the next contact re-check: the first delay after the first due time
    that lies after both now and the action's own due time (a re-check released a little early
    never schedules itself again), or None when they are all past (or the re-check is off)."""
    base = action.give_up_clock
    after = max(now_ms, action.due_at)
    for number, delay in enumerate(recheck_seconds, start=1):
        if base + delay * 1000 > after:
            return number, base + delay * 1000
    return None


def route(
    action: Action, outcome: Outcome, now_ms: int, rules: RetryRules, recheck_seconds: Sequence[int] = ()
) -> Route:
    """`recheck_seconds`: the company's contact re-check delays (CompanySettings), empty when off.

    A re-check is a reschedule at first due time + delay through the retry topic, like a deferral,
    but keeps the attempt count: a missing contact is not a failure of the CRM.
    """
    if outcome.status in (CREATED, DUPLICATE):
        return Route(LEDGER, ledger_value=outcome.object_id or "", history="created")
    if outcome.status == SKIPPED and outcome.reason == CONTACT_NOT_FOUND:
        upcoming = next_recheck(action, now_ms, recheck_seconds)
        if upcoming is not None:
            number, due = upcoming
            again = replace(action, due_at=due, first_due_at=action.give_up_clock)
            return Route(DEFER, retry=again, history=RECHECKED, reason=CONTACT_NOT_FOUND, recheck=number)
    if outcome.status == SKIPPED:
        return Route(LEDGER, ledger_value=f"skipped:{outcome.reason}", history="skipped", reason=outcome.reason)
    if outcome.status == DEFERRED:
        if now_ms - action.give_up_clock > rules.give_up_ms:
            return Route(GIVE_UP, history="failed", reason=outcome.reason)
        attempt = action.attempt + 1
        wait = rules.backoff(attempt) if outcome.retry_after is None else min(outcome.retry_after, rules.retry_after_cap)
        retried = replace(action, attempt=attempt, due_at=now_ms + int(wait * 1000), first_due_at=action.give_up_clock)
        return Route(DEFER, retry=retried, reason=outcome.reason)
    return Route(DEAD_LETTER, history="failed", reason=outcome.reason)


def outcome_fields(outcome: Outcome) -> Mapping[str, Any]:
    """Log context for an outcome; carries no personal data."""
    return {
        "outcome": outcome.status,
        "reason": outcome.reason,
        "attempts": outcome.attempts,
        "error_code": outcome.error.code if outcome.error else None,
    }
