"""Outcome routing (`route`), crash reconciliation (`match_existing`) and the sync-history
idempotency keys (`HistoryRecord.key` / `fold`), as tables of cases."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from processors.domain.deliver import (
    CREATED,
    DEAD_LETTER,
    DEFER,
    DEFERRED,
    DUPLICATE,
    FAILED,
    GIVE_UP,
    HUBSPOT_MATCH,
    LEDGER,
    SALESFORCE_MATCH,
    SKIPPED,
    Outcome,
    RetryRules,
    route,
)
from processors.domain.deliver import match_existing
from processors.domain.history import HistoryRecord, fold
from processors.domain.model import Action, Crm, EventType, ObjectType, Origin

MIN = 60_000
HOUR = 60 * MIN
FIRST_DUE = 1_800_000_000_000  # the action's first due time
GIVE_UP_MS = 2 * HOUR
CAP_S = 900.0


def backoff(attempt: int) -> float:
    """Deterministic: 10 s, 20 s, 30 s, …"""
    return 10.0 * attempt


RULES = RetryRules(give_up_ms=GIVE_UP_MS, backoff=backoff, retry_after_cap=CAP_S)


def action(*, due_at: int = FIRST_DUE, first_due_at: int | None = FIRST_DUE, attempt: int = 0) -> Action:
    return Action(
        action_id="act-1",
        event_id="evt-1",
        event_type=EventType.MEETING_BOOKED,
        company_id="acme",
        meeting_type_id="mt-1",
        crm=Crm.SALESFORCE,
        object_type=ObjectType.TASK,
        origin=Origin.MEETING_TYPE,
        occurred_at=FIRST_DUE - 10 * MIN,
        due_at=due_at,
        planned_at=FIRST_DUE - 10 * MIN,
        contact_email="someone@example.com",
        owner_email=None,
        properties={"Subject": "Meeting"},
        attempt=attempt,
        first_due_at=first_due_at,
    )


# ---- route: where an outcome goes ----------------------------------------------------------------

TERMINAL_CASES = [
    # id, outcome, kind, ledger_value, history, reason
    ("created", Outcome(CREATED, object_id="00T1"), LEDGER, "00T1", "created", None),
    ("created-without-id", Outcome(CREATED), LEDGER, "", "created", None),
    ("duplicate-counts-as-created", Outcome(DUPLICATE, object_id="00T9"), LEDGER, "00T9", "created", None),
    ("skipped", Outcome(SKIPPED, reason="contact_not_found"), LEDGER, "skipped:contact_not_found", "skipped", "contact_not_found"),
    ("skipped-other-reason", Outcome(SKIPPED, reason="owner_not_found"), LEDGER, "skipped:owner_not_found", "skipped", "owner_not_found"),
    ("failed", Outcome(FAILED, reason="INVALID_FIELD"), DEAD_LETTER, None, "failed", "INVALID_FIELD"),
    ("unknown-status-is-dead-lettered", Outcome("weird", reason="?"), DEAD_LETTER, None, "failed", "?"),
]


@pytest.mark.parametrize(
    "outcome, kind, ledger_value, history, reason",
    [case[1:] for case in TERMINAL_CASES],
    ids=[case[0] for case in TERMINAL_CASES],
)
def test_terminal_outcomes(outcome: Outcome, kind: str, ledger_value: str | None, history: str, reason: str | None) -> None:
    # Long past the give-up time: only a deferral looks at it.
    routed = route(action(), outcome, FIRST_DUE + 100 * HOUR, RULES)
    assert (routed.kind, routed.ledger_value, routed.history, routed.reason) == (kind, ledger_value, history, reason)
    assert routed.retry is None


NOW = FIRST_DUE + 30 * MIN

DEFER_CASES = [
    # id, retry_after (s), attempt before, expected wait (ms)
    ("backoff-first-retry", None, 0, 10_000),
    ("backoff-grows-with-the-attempt", None, 4, 50_000),
    ("retry-after-honoured", 30.0, 0, 30_000),
    ("retry-after-overrides-backoff", 1.5, 7, 1_500),
    ("retry-after-zero-is-not-backoff", 0.0, 2, 0),
    ("retry-after-at-the-cap", CAP_S, 0, int(CAP_S * 1000)),
    ("retry-after-capped", 5_000.0, 0, int(CAP_S * 1000)),
]


@pytest.mark.parametrize(
    "retry_after, attempt, wait_ms",
    [case[1:] for case in DEFER_CASES],
    ids=[case[0] for case in DEFER_CASES],
)
def test_deferrals(retry_after: float | None, attempt: int, wait_ms: int) -> None:
    before = action(due_at=NOW - MIN, attempt=attempt)
    routed = route(before, Outcome(DEFERRED, reason="rate_limited", retry_after=retry_after), NOW, RULES)
    assert routed.kind == DEFER
    assert routed.history is None  # a deferral is not an outcome yet
    assert routed.reason == "rate_limited"
    assert routed.retry is not None
    assert routed.retry.due_at == NOW + wait_ms
    assert routed.retry.attempt == attempt + 1
    assert routed.retry.first_due_at == FIRST_DUE
    # Everything else is the same action.
    assert replace(routed.retry, due_at=before.due_at, attempt=before.attempt) == before


GIVE_UP_CASES = [
    # id, due_at, first_due_at, now, expected kind
    ("young", FIRST_DUE, FIRST_DUE, FIRST_DUE + MIN, DEFER),
    ("exactly-give-up-ms-still-retries", FIRST_DUE, FIRST_DUE, FIRST_DUE + GIVE_UP_MS, DEFER),
    ("one-ms-past-gives-up", FIRST_DUE, FIRST_DUE, FIRST_DUE + GIVE_UP_MS + 1, GIVE_UP),
    # Deferred many times: due_at moved on with each retry, but the clock is the first due time.
    ("moved-due-at-still-gives-up", FIRST_DUE + GIVE_UP_MS, FIRST_DUE, FIRST_DUE + GIVE_UP_MS + MIN, GIVE_UP),
    ("moved-due-at-young-first-due", FIRST_DUE + 5 * MIN, FIRST_DUE, FIRST_DUE + 10 * MIN, DEFER),
    # Records written before first_due_at existed: their due time is the clock.
    ("legacy-recent-due-at", FIRST_DUE, None, FIRST_DUE + MIN, DEFER),
    ("legacy-old-due-at", FIRST_DUE, None, FIRST_DUE + GIVE_UP_MS + 1, GIVE_UP),
    ("legacy-boundary", FIRST_DUE, None, FIRST_DUE + GIVE_UP_MS, DEFER),
]


@pytest.mark.parametrize(
    "due_at, first_due_at, now, kind",
    [case[1:] for case in GIVE_UP_CASES],
    ids=[case[0] for case in GIVE_UP_CASES],
)
def test_give_up_is_measured_from_the_first_due_time(due_at: int, first_due_at: int | None, now: int, kind: str) -> None:
    routed = route(action(due_at=due_at, first_due_at=first_due_at, attempt=3), Outcome(DEFERRED, reason="timeout"), now, RULES)
    assert routed.kind == kind
    if kind == GIVE_UP:
        assert (routed.history, routed.reason, routed.retry) == ("failed", "timeout", None)
    else:
        assert routed.retry is not None
        assert routed.retry.first_due_at == (first_due_at if first_due_at is not None else due_at)
        assert routed.retry.attempt == 4


def test_a_legacy_action_gets_its_due_time_as_first_due_at_on_its_first_retry() -> None:
    legacy = action(due_at=FIRST_DUE, first_due_at=None)
    retried = route(legacy, Outcome(DEFERRED), FIRST_DUE + MIN, RULES).retry
    assert retried is not None
    assert retried.first_due_at == FIRST_DUE
    assert retried.due_at == FIRST_DUE + MIN + 10_000
    # From then on the clock no longer moves with due_at.
    again = route(retried, Outcome(DEFERRED), retried.due_at, RULES).retry
    assert again is not None and again.first_due_at == FIRST_DUE and again.attempt == 2


def test_an_action_deferred_over_and_over_gives_up_once_past_give_up_ms_from_its_first_due_time() -> None:
    """Each deferral moves due_at; a give-up measured from due_at would retry for ever."""
    rules = RetryRules(give_up_ms=GIVE_UP_MS, backoff=lambda attempt: 600.0, retry_after_cap=CAP_S)  # 10 min each
    current = action(due_at=FIRST_DUE, first_due_at=None)  # even a legacy record
    now = FIRST_DUE
    attempts = 0
    while True:
        routed = route(current, Outcome(DEFERRED, reason="timeout"), now, rules)
        if routed.kind == GIVE_UP:
            break
        assert routed.kind == DEFER and routed.retry is not None
        current = routed.retry
        attempts += 1
        assert current.attempt == attempts
        assert current.first_due_at == FIRST_DUE
        now = current.due_at  # the retry releaser delivers it when due
        assert attempts < 100, "never gave up"
    assert now - FIRST_DUE > GIVE_UP_MS
    assert now - FIRST_DUE <= GIVE_UP_MS + 10 * MIN
    # Deferred at 0, 10, …, 120 min (exactly give_up_ms is still retried): 13 times; gives up at 130 min.
    assert attempts == 13
    assert now - FIRST_DUE == GIVE_UP_MS + 10 * MIN


# ---- contact re-check -------------------------------------------------------------------------

NOT_FOUND = Outcome(SKIPPED, reason="contact_not_found")
RECHECK = (20 * 60, 60 * 60)

RECHECK_CASES = [
    # id, action due_at, now, delays, expected (kind, new due_at, recheck number)
    ("off-skips-at-once", FIRST_DUE, FIRST_DUE + 1_000, (), (LEDGER, None, None)),
    ("first-check-schedules-the-first-recheck", FIRST_DUE, FIRST_DUE + 1_000, RECHECK, (DEFER, FIRST_DUE + 20 * MIN, 1)),
    ("first-recheck-schedules-the-second", FIRST_DUE + 20 * MIN, FIRST_DUE + 20 * MIN + 500, RECHECK, (DEFER, FIRST_DUE + HOUR, 2)),
    ("last-recheck-skips", FIRST_DUE + HOUR, FIRST_DUE + HOUR + 500, RECHECK, (LEDGER, None, None)),
    ("released-a-little-early-still-moves-on", FIRST_DUE + 20 * MIN, FIRST_DUE + 20 * MIN - 300, RECHECK, (DEFER, FIRST_DUE + HOUR, 2)),
    ("a-late-delivery-skips-past-rechecks", FIRST_DUE, FIRST_DUE + 30 * MIN, RECHECK, (DEFER, FIRST_DUE + HOUR, 2)),
    ("long-after-all-rechecks", FIRST_DUE, FIRST_DUE + 2 * HOUR, RECHECK, (LEDGER, None, None)),
    ("after-a-transient-retry", FIRST_DUE + 40, FIRST_DUE + 50, (30,), (DEFER, FIRST_DUE + 30_000, 1)),
]


@pytest.mark.parametrize("due_at, now, delays, expected", [c[1:] for c in RECHECK_CASES], ids=[c[0] for c in RECHECK_CASES])
def test_contact_recheck(due_at: int, now: int, delays: tuple[int, ...], expected: tuple[str, int | None, int | None]) -> None:
    act = action(due_at=due_at, attempt=2)
    got = route(act, NOT_FOUND, now, RULES, delays)
    kind, due, number = expected
    assert (got.kind, got.retry.due_at if got.retry else None, got.recheck) == expected
    if kind == DEFER:
        assert got.history == "rechecked" and got.reason == "contact_not_found"
        assert got.retry is not None and got.retry.attempt == 2  # the failure retry budget is not used
        assert got.retry.first_due_at == FIRST_DUE and got.ledger_value is None
    else:
        assert (got.history, got.ledger_value) == ("skipped", "skipped:contact_not_found")


def test_recheck_keeps_a_legacy_actions_due_time_as_its_first() -> None:
    got = route(action(first_due_at=None), NOT_FOUND, FIRST_DUE + 1, RULES, (60,))
    assert got.retry is not None and got.retry.first_due_at == FIRST_DUE and got.retry.due_at == FIRST_DUE + MIN


@pytest.mark.parametrize("outcome", [Outcome(SKIPPED, reason="owner_not_found"), Outcome(CREATED, object_id="00T1")])
def test_only_a_missing_contact_is_rechecked(outcome: Outcome) -> None:
    assert route(action(), outcome, FIRST_DUE + 1, RULES, RECHECK).kind == LEDGER


# ---- match_existing: reconciliation after a crash ------------------------------------------------

SF = SALESFORCE_MATCH
NOTE = HUBSPOT_MATCH[ObjectType.NOTE]
MEETING = HUBSPOT_MATCH[ObjectType.MEETING]


def sf(subject: str = "Meeting", who: str = "003A", date: str = "2026-12-01", desc: str = "d") -> dict[str, Any]:
    return {"WhoId": who, "Subject": subject, "ActivityDate": date, "Description": desc}


def note(ts: str, body: str = "b") -> dict[str, Any]:
    return {"hs_timestamp": ts, "hs_note_body": body}


MATCH_CASES = [
    # id, intended, candidates, fields, claimed, expected
    ("one-match", {0: sf()}, [("00T1", sf())], SF, set(), {0: "00T1"}),
    ("no-match-different-subject", {0: sf()}, [("00T1", sf(subject="Other"))], SF, set(), {}),
    ("no-candidates", {0: sf()}, [], SF, set(), {}),
    (
        "identical-content-never-shares-an-object",
        {0: sf(), 1: sf()},
        [("00T1", sf()), ("00T2", sf())],
        SF,
        set(),
        {0: "00T1", 1: "00T2"},
    ),
    ("identical-content-one-object-matches-one-action", {0: sf(), 1: sf()}, [("00T1", sf())], SF, set(), {0: "00T1"}),
    ("claimed-is-skipped", {0: sf()}, [("00T1", sf()), ("00T2", sf())], SF, {"00T1"}, {0: "00T2"}),
    ("all-claimed-no-match", {0: sf()}, [("00T1", sf())], SF, {"00T1"}, {}),
    ("oldest-unclaimed-first", {0: sf()}, [("00T1", sf(subject="x")), ("00T2", sf()), ("00T3", sf())], SF, set(), {0: "00T2"}),
    ("pairs-by-content", {0: sf(subject="A"), 1: sf(subject="B")}, [("00TB", sf(subject="B")), ("00TA", sf(subject="A"))], SF, set(), {0: "00TA", 1: "00TB"}),
    ("missing-and-empty-are-the-same", {0: {**sf(), "Description": None}}, [("00T1", {**sf(), "Description": ""})], SF, set(), {0: "00T1"}),
    ("missing-field-on-the-candidate", {0: {**sf(), "Description": None}}, [("00T1", {k: v for k, v in sf().items() if k != "Description"})], SF, set(), {0: "00T1"}),
    ("extra-fields-are-ignored", {0: {**sf(), "OwnerId": "005A"}}, [("00T1", {**sf(), "OwnerId": "005B"})], SF, set(), {0: "00T1"}),
    ("times-as-instants-milliseconds", {0: note("2026-12-01T10:00:00Z")}, [("n1", note("2026-12-01T10:00:00.000Z"))], NOTE, set(), {0: "n1"}),
    ("times-as-instants-offset", {0: note("2026-12-01T10:00:00Z")}, [("n1", note("2026-12-01T19:00:00+09:00"))], NOTE, set(), {0: "n1"}),
    ("times-differ-by-a-millisecond", {0: note("2026-12-01T10:00:00Z")}, [("n1", note("2026-12-01T10:00:00.001Z"))], NOTE, set(), {}),
    ("unparseable-time-never-matches", {0: note("2026-12-01T10:00:00Z")}, [("n1", note("not a time"))], NOTE, set(), {}),
    ("body-is-compared-exactly", {0: note("2026-12-01T10:00:00Z", body="b")}, [("n1", note("2026-12-01T10:00:00Z", body="b "))], NOTE, set(), {}),
    # A non-time field is compared as text even when it looks like a time.
    ("non-time-field-compared-as-text", {0: sf(subject="2026-12-01T10:00:00Z")}, [("00T1", sf(subject="2026-12-01T10:00:00.000Z"))], SF, set(), {}),
    (
        "meeting-all-three-times-as-instants",
        {0: {"hs_meeting_title": "t", "hs_meeting_body": "b", "hs_meeting_start_time": "2026-12-01T10:00:00Z", "hs_meeting_end_time": "2026-12-01T11:00:00Z", "hs_timestamp": "2026-12-01T10:00:00Z"}},
        [("m1", {"hs_meeting_title": "t", "hs_meeting_body": "b", "hs_meeting_start_time": "2026-12-01T10:00:00.000Z", "hs_meeting_end_time": "2026-12-01T11:00:00.000Z", "hs_timestamp": "2026-12-01T10:00:00.000Z"})],
        MEETING,
        set(),
        {0: "m1"},
    ),
]


@pytest.mark.parametrize(
    "intended, candidates, fields, claimed, expected",
    [case[1:] for case in MATCH_CASES],
    ids=[case[0] for case in MATCH_CASES],
)
def test_match_existing(
    intended: dict[int, dict[str, Any]], candidates: list[tuple[str, dict[str, Any]]], fields: tuple[str, ...], claimed: set[str], expected: dict[int, str]
) -> None:
    before = set(claimed)
    found = match_existing(intended, candidates, fields, claimed)
    assert found == expected
    assert len(set(found.values())) == len(found)  # never one object for two actions
    assert claimed == before | set(found.values())  # the matches are claimed for the next call
    assert not before & set(found.values())


def test_claims_carry_over_between_calls() -> None:
    claimed: set[str] = set()
    candidates = [("00T1", sf()), ("00T2", sf())]
    assert match_existing({0: sf()}, candidates, SF, claimed) == {0: "00T1"}
    assert match_existing({0: sf()}, candidates, SF, claimed) == {0: "00T2"}
    assert match_existing({0: sf()}, candidates, SF, claimed) == {}
    assert claimed == {"00T1", "00T2"}


# ---- history: each outcome counted once, however often recorded -----------------------------------

DAY = "2026-12-01"


def hist(outcome: str, *, action_id: str | None = "act-1", event_id: str = "evt-1", crm: str = "salesforce",
         reason: str | None = None, at_ms: int = 1, ref: str | None = None, day: str = DAY) -> HistoryRecord:
    return HistoryRecord("acme", day, "Asia/Tokyo", crm, "meeting_booked", outcome, reason, at_ms, event_id, action_id, ref)


def counts(records: list[HistoryRecord]) -> dict[str, Any]:
    state = fold(records)
    return state.get(DAY, {}).get("salesforce", {}).get("meeting_booked", {})


FOLD_CASES = [
    # id, records, expected counts (created, failed, retried, resolved, skipped)
    ("one-created", [hist("created")], (1, 0, 0, 0, {})),
    ("created-recorded-twice-counts-once", [hist("created"), hist("created", at_ms=99)], (1, 0, 0, 0, {})),
    ("created-recorded-twice-even-on-a-later-day-counts-once", [hist("created"), hist("created", day="2026-12-02")], (1, 0, 0, 0, {})),
    ("created-of-two-actions-count-twice", [hist("created"), hist("created", action_id="act-2")], (2, 0, 0, 0, {})),
    ("created-and-failed-of-one-action-both-count", [hist("created"), hist("failed")], (1, 1, 0, 0, {})),
    ("failed-twice-counts-once", [hist("failed", reason="X"), hist("failed", reason="X", at_ms=7)], (0, 1, 0, 0, {})),
    ("skipped-twice-counts-once", [hist("skipped", reason="contact_not_found")] * 2, (0, 0, 0, 0, {"contact_not_found": 1})),
    (
        "without-an-action-id-keyed-by-event-and-crm",
        [hist("skipped", action_id=None, reason="r"), hist("skipped", action_id=None, reason="r")],
        (0, 0, 0, 0, {"r": 1}),
    ),
    ("each-retry-counts", [hist("retried", ref="dl-1", at_ms=1), hist("retried", ref="dl-1", at_ms=2)], (0, 0, 2, 0, {})),
    ("the-same-retry-recorded-twice-counts-once", [hist("retried", ref="dl-1", at_ms=5)] * 2, (0, 0, 1, 0, {})),
    ("resolved-once-per-dead-letter", [hist("resolved", ref="dl-1", at_ms=1), hist("resolved", ref="dl-1", at_ms=2)], (0, 0, 0, 1, {})),
    ("resolved-of-two-dead-letters", [hist("resolved", ref="dl-1"), hist("resolved", ref="dl-2")], (0, 0, 0, 2, {})),
]

RECHECK_FOLD_CASES = [
    # id, records, expected (rechecked, skipped)
    ("each-recheck-counts", [hist("rechecked", ref="1"), hist("rechecked", ref="2")], (2, {})),
    ("a-recheck-recorded-twice-counts-once", [hist("rechecked", ref="1", at_ms=1), hist("rechecked", ref="1", at_ms=9)], (1, {})),
    ("rechecks-of-two-actions", [hist("rechecked", ref="1"), hist("rechecked", ref="1", action_id="act-2")], (2, {})),
    (
        "rechecked-then-skipped",
        [hist("rechecked", ref="1", reason="contact_not_found"), hist("skipped", reason="contact_not_found")],
        (1, {"contact_not_found": 1}),
    ),
]


@pytest.mark.parametrize("records, expected", [c[1:] for c in RECHECK_FOLD_CASES], ids=[c[0] for c in RECHECK_FOLD_CASES])
def test_fold_counts_each_recheck_once(records: list[HistoryRecord], expected: tuple[int, dict[str, int]]) -> None:
    got = counts(records)
    assert (got["rechecked"], got["skipped"]) == expected


@pytest.mark.parametrize("records, expected", [case[1:] for case in FOLD_CASES], ids=[case[0] for case in FOLD_CASES])
def test_fold_counts_each_key_once(records: list[HistoryRecord], expected: tuple[int, int, int, int, dict[str, int]]) -> None:
    got = counts(records)
    assert (got["created"], got["failed"], got["retried"], got["resolved"], got["skipped"]) == expected


KEY_CASES = [
    ("created", hist("created"), "acme/act-1/created"),
    ("failed", hist("failed"), "acme/act-1/failed"),
    ("skipped-reason-not-in-key", hist("skipped", reason="r"), "acme/act-1/skipped"),
    ("no-action-id", hist("created", action_id=None, crm="hubspot"), "acme/evt-1/hubspot/created"),
    ("retried-by-ref-and-time", hist("retried", ref="dl-1", at_ms=42), "acme/dl-1/42/retried"),
    ("resolved-by-ref", hist("resolved", ref="dl-1", at_ms=42), "acme/dl-1/resolved"),
    ("rechecked-by-action-and-number", hist("rechecked", ref="2", at_ms=42), "acme/act-1/2/rechecked"),
]


@pytest.mark.parametrize("record, key", [case[1:] for case in KEY_CASES], ids=[case[0] for case in KEY_CASES])
def test_history_keys(record: HistoryRecord, key: str) -> None:
    assert record.key == key


def test_the_first_occurrence_of_a_key_is_the_one_counted() -> None:
    state = fold([hist("created", day="2026-12-01"), hist("created", day="2026-12-02")])
    assert state["2026-12-01"]["salesforce"]["meeting_booked"]["created"] == 1
    assert "2026-12-02" not in state


def test_a_duplicate_after_a_crash_counts_as_the_one_created() -> None:
    """route: CREATED then, after a crash, DUPLICATE for the same action → one "created"."""
    first = route(action(), Outcome(CREATED, object_id="00T1"), FIRST_DUE, RULES)
    again = route(action(), Outcome(DUPLICATE, object_id="00T1"), FIRST_DUE + MIN, RULES)
    assert first.history == again.history == "created"
    records = [hist(first.history, at_ms=FIRST_DUE), hist(again.history, at_ms=FIRST_DUE + MIN)]
    assert counts(records)["created"] == 1
