"""The reconciliation rule (`reconcile`) as a table, and the small parsers around it."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.errors import AuthError, PermanentError, TransientError
from processors.domain.deliver import (
    DEFERRED,
    DUPLICATE,
    MATCHED,
    NOT_FOUND,
    REJECTED_CLAIMED,
    REJECTED_EARLIER,
    SALESFORCE_MATCH,
    Candidate,
    Doubt,
    epoch_ms,
    reconcile,
)
from processors.domain.model import Crm
from processors.metrics import Metrics
from processors.stages.deliver import failed_entry, intent_of
from processors.stages.reconcile import Reconciler
from tests.unit.test_routing import FIRST_DUE, action

SF = SALESFORCE_MATCH
SKEW = 300_000
T0 = 1_796_000_000_000  # an intent, epoch ms


def sf(subject: str = "Meeting") -> dict[str, Any]:
    return {"WhoId": "003A", "Subject": subject, "ActivityDate": "2026-12-01", "Description": "d"}


def doubt(action_id: str = "a1", at: int = T0, subject: str = "Meeting") -> Doubt:
    return Doubt(action_id, sf(subject), at)


def cand(object_id: str, created: int | None, subject: str = "Meeting") -> Candidate:
    return Candidate(object_id, sf(subject), created)


NOBODY: dict[str, str] = {}

CASES = [
    # id, doubts, candidates, claims (object → action), expected found, expected counts
    ("created-after-the-intent", {0: doubt()}, [cand("T1", T0 + 1)], NOBODY, {0: "T1"}, {MATCHED: 1}),
    ("created-within-the-skew-margin-before", {0: doubt()}, [cand("T1", T0 - SKEW)], NOBODY, {0: "T1"}, {MATCHED: 1}),
    ("a-crm-clock-90s-behind", {0: doubt()}, [cand("T1", T0 + 2_000 - 90_000)], NOBODY, {0: "T1"}, {MATCHED: 1}),
    ("created-before-the-margin", {0: doubt()}, [cand("T1", T0 - SKEW - 1)], NOBODY, {}, {REJECTED_EARLIER: 1, NOT_FOUND: 1}),
    ("no-creation-time-never-matches", {0: doubt()}, [cand("T1", None)], NOBODY, {}, {REJECTED_EARLIER: 1, NOT_FOUND: 1}),
    ("named-by-another-action", {0: doubt()}, [cand("T1", T0 + 1)], {"T1": "a2"}, {}, {REJECTED_CLAIMED: 1, NOT_FOUND: 1}),
    ("named-by-this-action", {0: doubt()}, [cand("T1", T0 + 1)], {"T1": "a1"}, {0: "T1"}, {MATCHED: 1}),
    (
        "the-other-booking-of-the-same-slot",  # rebooked: the first booking's object is claimed
        {0: doubt("rebook")},
        [cand("M1", T0 - 30_000), cand("M2", T0 + 1_000)],
        {"M1": "first"},
        {0: "M2"},
        {REJECTED_CLAIMED: 1, MATCHED: 1},
    ),
    (
        "the-other-booking-not-yet-created-again",
        {0: doubt("rebook")},
        [cand("M1", T0 - 30_000)],
        {"M1": "first"},
        {},
        {REJECTED_CLAIMED: 1, NOT_FOUND: 1},
    ),
    ("different-content", {0: doubt()}, [cand("T1", T0 + 1, subject="Other")], NOBODY, {}, {NOT_FOUND: 1}),
    (
        "two-identical-todos-two-identical-tasks",
        {0: doubt("company"), 1: doubt("meeting-type")},
        [cand("T1", T0 + 1), cand("T2", T0 + 2)],
        NOBODY,
        {0: "T1", 1: "T2"},
        {MATCHED: 2},
    ),
    (
        "two-identical-todos-one-task",
        {0: doubt("company"), 1: doubt("meeting-type")},
        [cand("T1", T0 + 1)],
        NOBODY,
        {0: "T1"},
        {MATCHED: 1, NOT_FOUND: 1},
    ),
    (
        "the-sibling-has-its-task-already",
        {1: doubt("meeting-type")},
        [cand("T1", T0 + 1)],
        {"T1": "company"},
        {},
        {REJECTED_CLAIMED: 1, NOT_FOUND: 1},
    ),
    (
        "oldest-intent-takes-the-oldest-object",  # so the later intent still finds its later one
        {0: doubt("late", T0 + 600_000), 1: doubt("early", T0)},
        [cand("T2", T0 + 601_000), cand("T1", T0 + 1_000)],
        NOBODY,
        {1: "T1", 0: "T2"},
        {MATCHED: 2},
    ),
    (
        "an-object-too-old-for-the-later-intent-goes-to-the-earlier",
        {0: doubt("late", T0 + 600_000), 1: doubt("early", T0)},
        [cand("T1", T0 + 1_000)],
        NOBODY,
        {1: "T1"},
        {MATCHED: 1, NOT_FOUND: 1},
    ),
    ("no-candidates", {0: doubt()}, [], NOBODY, {}, {NOT_FOUND: 1}),
]


@pytest.mark.parametrize("doubts, candidates, claims, found, counts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reconcile(
    doubts: dict[int, Doubt], candidates: list[Candidate], claims: dict[str, str], found: dict[int, str], counts: dict[str, int]
) -> None:
    taken: set[str] = set()
    result = reconcile(doubts, candidates, SF, claims.get, taken, SKEW)
    assert result.found == found
    assert result.counts == counts
    assert len(set(result.found.values())) == len(result.found)  # never one object for two actions
    assert taken == set(found.values())


def test_an_object_taken_by_an_earlier_call_is_not_matched_again() -> None:
    taken = {"T1"}
    result = reconcile({0: doubt()}, [cand("T1", T0 + 1), cand("T2", T0 + 2)], SF, NOBODY.get, taken, SKEW)
    assert result.found == {0: "T2"}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-12-01T09:00:00.000+0000", 1796115600000),  # Salesforce
        ("2026-12-01T09:00:00.250Z", 1796115600250),  # HubSpot
        ("2026-12-01T18:00:00+09:00", 1796115600000),
        ("1796115600000", 1796115600000),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_creation_times_are_read_in_both_crms_formats(value: Any, expected: int | None) -> None:
    assert epoch_ms(value) == expected


# ---- which actions are doubtful, and since when (the deliver stage's reading of its ledger) ----


@pytest.mark.parametrize(
    "entry, attempt, expected",
    [
        (None, 0, None),  # never tried: created without a read
        ("intent:1700", 0, 1700),  # a crash or timeout after the intent
        ("intent:", 0, 0),
        (failed_entry("UNEXPECTED_RESPONSE", 1800), 0, 1800),  # a dead letter being retried
        ("failed:INVALID_FIELD", 0, 0),  # written before failures kept their intent: any time
        (None, 1, FIRST_DUE),  # back from the retry topic without an entry here
        ("00T1", 0, None),  # done: not delivered at all
        ("skipped:contact_not_found", 0, None),
    ],
)
def test_doubtful_actions_and_since_when(entry: str | None, attempt: int, expected: int | None) -> None:
    assert intent_of(entry, action(attempt=attempt)) == expected


# ---- the reads around the rule: a failed read defers, never fails --------------------------------


class FakeClient:
    def __init__(self, error: Exception | None = None, tasks: list[dict[str, str]] | None = None) -> None:
        self.error, self.tasks = error, tasks or []

    def find_tasks_for(self, who_ids: list[str], since_ms: int) -> list[dict[str, str]]:
        if self.error is not None:
            raise self.error
        return self.tasks

    def find_tasks(self, field: str, values: list[str]) -> dict[str, str]:
        if self.error is not None:
            raise self.error
        return {}


def reconciler() -> tuple[Reconciler, Metrics]:
    metrics = Metrics.create()
    return Reconciler(metrics, lambda crm, operation, fn, *args: fn(*args)), metrics


def read_failed(metrics: Metrics) -> float:
    return metrics.reconcile.labels("salesforce", "read_failed")._value.get()


def test_a_permanent_read_error_defers_the_doubtful_actions() -> None:
    rec, metrics = reconciler()
    outcomes = rec.salesforce(FakeClient(PermanentError("salesforce", "NOT_FOUND", 404, "gone")), "acme", {0: doubt(), 3: doubt("a2")}, SF, NOBODY.get)
    assert {i: (o.status, o.reason) for i, o in outcomes.items()} == {0: (DEFERRED, "reconcile_read_failed"), 3: (DEFERRED, "reconcile_read_failed")}
    assert read_failed(metrics) == 2


def test_a_transient_read_error_goes_on_to_the_inline_retry_and_is_counted() -> None:
    rec, metrics = reconciler()
    with pytest.raises(TransientError):
        rec.salesforce(FakeClient(TransientError("salesforce", "HTTP_503", 503, "busy")), "acme", {0: doubt()}, SF, NOBODY.get)
    assert read_failed(metrics) == 1


def test_an_auth_error_is_not_a_read_failure() -> None:
    rec, metrics = reconciler()
    with pytest.raises(AuthError):
        rec.salesforce(FakeClient(AuthError("salesforce", "INVALID_SESSION_ID", 401, "no")), "acme", {0: doubt()}, SF, NOBODY.get)
    assert read_failed(metrics) == 0


def test_the_external_id_check_failing_defers_its_slots() -> None:
    rec, metrics = reconciler()
    found, deferred = rec.by_id(Crm.SALESFORCE, "acme", [0, 1], "find_tasks", FakeClient(PermanentError("salesforce", "INVALID_FIELD", 400, "x")).find_tasks, "F__c", ["a"])
    assert found == {} and sorted(deferred) == [0, 1] and read_failed(metrics) == 2


def test_a_match_is_a_duplicate_and_every_outcome_is_counted() -> None:
    rec, metrics = reconciler()
    task = {"Id": "T1", **sf(), "CreatedDate": "2030-01-01T00:00:00.000+0000"}
    outcomes = rec.salesforce(FakeClient(tasks=[task]), "acme", {0: doubt(), 1: doubt("a2")}, SF, NOBODY.get)
    assert {i: (o.status, o.object_id) for i, o in outcomes.items()} == {0: (DUPLICATE, "T1")}
    assert metrics.reconcile.labels("salesforce", MATCHED)._value.get() == 1
    assert metrics.reconcile.labels("salesforce", NOT_FOUND)._value.get() == 1
