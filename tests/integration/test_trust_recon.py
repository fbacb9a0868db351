"""Reconciliation that never takes another action's object, never trusts a lagging search and never
fails an action for good on a read error: each through the real broker, worker and CRM sandbox."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from connectors.sandbox import Fault, records
from connectors.sandbox.server import CrmSandbox
from processors.domain.model import Crm, EventType, Origin
from processors.domain.planner import action_id
from processors.kafka.producer import partition_for
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, wait_for
from tests.integration.test_sinks import booking, configure, dead_letters, publish, seed
from tests.integration.test_trust import cli, count_of, metric

pytestmark = pytest.mark.integration

ACTION_ID_PROPERTY = "crm_sync_action_id"


def meetings(sandbox: CrmSandbox) -> int:
    return len(sandbox.hubspot.list_meetings())


def tasks(sandbox: CrmSandbox) -> int:
    return len(sandbox.salesforce.list_tasks())


def settle(seconds: float = 3.0) -> None:
    """Give a wrong extra create the time to happen before asserting it did not (never a pass condition)."""
    time.sleep(seconds)


def test_a_rebooked_slot_with_one_503_gets_its_own_meeting(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """The same contact books the same slot twice; the second create meets one 503. Its retry
    reconciles and must not take the first booking's meeting (alike, and linked to the contact)."""
    seed(sandbox, ["rebook@buyer.example"])
    configure(deployment, "acme")
    worker = start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", "rebook@buyer.example")])
    wait_for(lambda: meetings(sandbox) == 1 and tasks(sandbox) == 1, 40, what="the first booking's meeting and Task")

    sandbox.inject(Fault(crm="hubspot", status=503, path_contains="batch/create"))
    publish(deployment, [booking("acme", "rebook@buyer.example")])
    wait_for(lambda: tasks(sandbox) == 2, 40, what="the second booking's Task")
    wait_for(lambda: meetings(sandbox) == 2 or None, 40, what="the second booking's own meeting")
    assert metric(worker, "crm_sync_reconcile_total", crm="hubspot", outcome="rejected_claimed") >= 1
    assert dead_letters(deployment) == []


def _event_with_todos_on_two_partitions(company: str, partitions: int) -> str:
    """An event id whose two Salesforce ToDos have action ids on different due partitions when
    the due topic is keyed by action id."""
    for n in range(1000):
        event_id = f"evt-split-{n}"
        ids = [action_id(company, event_id, Crm.SALESFORCE, origin) for origin in Origin]
        if len({partition_for(a.encode(), partitions) for a in ids}) == 2:
            return event_id
    raise AssertionError("no event id splits the ToDos")


def test_the_two_todos_of_a_booking_retried_in_different_batches_get_two_tasks(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """The company-level and meeting-type ToDos render alike. Both fail with 503s, then are
    retried one per batch: the second one's reconciliation must not take the first one's Task."""
    deployment.extra_env["CRM_SYNC_SINK_BATCH_SIZE"] = "1"
    seed(sandbox, ["todos@buyer.example"])
    admin = configure(deployment, "acme")
    admin.set_company_todo("acme", EventType.MEETING_BOOKED, True)
    sandbox.inject(Fault(crm="salesforce", status=503, path_contains="composite", count=10_000))
    worker = start_worker(deployment, workers, tmp_path)
    event = {**booking("acme", "todos@buyer.example"), "event_id": _event_with_todos_on_two_partitions("acme", deployment.partitions)}
    publish(deployment, [event])

    wait_for(lambda: metric(worker, "crm_sync_actions_deferred_total", crm="salesforce") >= 2 or None, 60, what="both ToDos deferred")
    sandbox.state.clear_faults()
    wait_for(lambda: tasks(sandbox) >= 1 and meetings(sandbox) == 1, 60, what="the first ToDo's Task")
    wait_for(lambda: tasks(sandbox) == 2 or None, 40, what="the second ToDo's own Task")
    settle()
    assert tasks(sandbox) == 2
    history = json.loads(cli(deployment, "history", "--company", "acme", "--json").stdout)
    assert history["totals"]["created"] == 3


def test_a_failed_reconciliation_read_defers_the_action_and_never_dead_letters_it(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A 503 makes the booking doubtful; the associations read then answers 404: defer, count, deliver later."""
    seed(sandbox, ["readfail@buyer.example"])
    configure(deployment, "acme")
    sandbox.inject(Fault(crm="hubspot", status=503, path_contains="batch/create"))
    sandbox.inject(Fault(crm="hubspot", status=404, path_contains="associations"))
    worker = start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", "readfail@buyer.example")])

    wait_for(lambda: meetings(sandbox) == 1 or None, 60, what="the meeting after the failed read")
    assert dead_letters(deployment) == []
    assert metric(worker, "crm_sync_reconcile_total", crm="hubspot", outcome="read_failed") >= 1
    settle()
    assert meetings(sandbox) == 1


@pytest.mark.parametrize("crm", list(Crm), ids=lambda c: c.value)
def test_a_create_answered_without_outcomes_is_reconciled_before_a_dlq_retry_creates(
    crm: Crm, deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """The CRM creates, then answers with no outcome per record (a count mismatch, an "unexpected
    response"): the action is dead-lettered, and its retry must find the object, not copy it."""
    seed(sandbox, ["garbled@buyer.example"])
    configure(deployment, "acme")
    path, ok = ("composite", 200) if crm is Crm.SALESFORCE else ("batch/create", 201)
    sandbox.inject(Fault(crm=crm.value, status=ok, commit=True, path_contains=path))
    start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", "garbled@buyer.example")])
    count = (lambda: tasks(sandbox)) if crm is Crm.SALESFORCE else (lambda: meetings(sandbox))

    letters = wait_for(lambda: dead_letters(deployment) or None, 40, what="the dead letter")
    assert [d["error_code"] for d in letters] == ["UNEXPECTED_RESPONSE"]
    assert count() == 1
    retried = cli(deployment, "dlq", "retry", "--company", "acme")
    assert retried.returncode == 0, retried.stderr
    history = lambda: json.loads(cli(deployment, "history", "--company", "acme", "--json").stdout)["totals"]  # noqa: E731
    wait_for(lambda: history().get("created") == 2 or None, 60, what="the retried action recorded")
    settle()
    assert count() == 1, "the retry created a second copy of an object that existed"


def test_external_id_mode_with_a_lagging_search_finds_the_object_a_503_hid(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """HubSpot created the meeting but answered 503; search lags 5 s. The retry's check must see
    the meeting (or resolve the unique-value conflict to it), never dead-letter or duplicate it."""
    deployment.extra_env["CRM_SYNC_HUBSPOT_ACTION_ID_PROPERTY"] = ACTION_ID_PROPERTY
    for object_type in ("meetings", "notes"):
        sandbox.hubspot.custom_properties.add(ACTION_ID_PROPERTY)
        sandbox.hubspot.unique_properties.setdefault(object_type, set()).add(ACTION_ID_PROPERTY)
    sandbox.hubspot.search_lag_seconds = 5.0
    seed(sandbox, ["lag@buyer.example"])
    configure(deployment, "acme")
    sandbox.inject(Fault(crm="hubspot", status=503, commit=True, path_contains="batch/create"))
    start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", "lag@buyer.example")])

    history = lambda: json.loads(cli(deployment, "history", "--company", "acme", "--json").stdout)["totals"]  # noqa: E731
    wait_for(lambda: history().get("created") == 2 or None, 60, what="both CRMs' objects recorded")
    assert dead_letters(deployment) == []
    assert meetings(sandbox) == 1


def test_a_crm_clock_90_seconds_behind_still_reconciles(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Created but answered 503, on a CRM whose clock is 90 s behind the worker's: found, not copied."""
    seed(sandbox, [f"skew{i}@buyer.example" for i in range(2)])
    configure(deployment, "acme")
    records.clock_skew_seconds = -90.0
    try:
        sandbox.inject(Fault(crm="salesforce", status=503, commit=True, path_contains="composite"))
        sandbox.inject(Fault(crm="hubspot", status=503, commit=True, path_contains="batch/create"))
        start_worker(deployment, workers, tmp_path)
        publish(deployment, [booking("acme", f"skew{i}@buyer.example") for i in range(2)])
        history = lambda: json.loads(cli(deployment, "history", "--company", "acme", "--json").stdout)["totals"]  # noqa: E731
        wait_for(lambda: history().get("created") == 4 or None, 60, what="all four objects recorded")
        settle()
        assert (tasks(sandbox), meetings(sandbox)) == (2, 2)
    finally:
        records.clock_skew_seconds = 0.0


def test_an_auth_error_on_the_second_chunk_is_reconciled_before_a_dlq_retry_creates(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """101 meetings in one batch: the first chunk of 100 is created, the second meets a 401 twice
    (re-authentication does not help). All 101 are dead-lettered as AuthError; their retry must
    find the 100 that exist and create only the last one."""
    deployment.extra_env["CRM_SYNC_SINK_BATCH_WINDOW_SECONDS"] = "3"
    bookers = [f"chunk{i}@buyer.example" for i in range(101)]
    seed(sandbox, bookers)
    configure(deployment, "acme")
    sandbox.inject(Fault(crm="hubspot", latency=3.0, path_contains="batch/create"))
    start_worker(deployment, workers, tmp_path)
    publish(deployment, [booking("acme", b) for b in bookers])

    wait_for(lambda: "hubspot POST /crm/v3/objects/meetings/batch/create" in sandbox.calls() or None, 60, what="the first chunk's create")
    sandbox.inject(Fault(crm="hubspot", status=401, count=2, path_contains="batch/create"))
    letters = wait_for(lambda: count_of(dead_letters(deployment), 101), 60, what="the batch's dead letters")
    assert {d["error_class"] for d in letters} == {"AuthError"}
    assert meetings(sandbox) == 100
    retried = cli(deployment, "dlq", "retry", "--company", "acme", "--yes")  # 101 failures: past 100 a bulk retry asks
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: meetings(sandbox) >= 101 or None, 60, what="the last meeting")
    history = lambda: json.loads(cli(deployment, "history", "--company", "acme", "--json").stdout)["totals"]  # noqa: E731
    wait_for(lambda: history().get("created") == 202 or None, 60, what="every retried action recorded")
    settle()
    assert meetings(sandbox) == 101, "the retry copied meetings the first chunk had created"
