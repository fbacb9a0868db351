"""Every settings change says who made it (`updated_by`) and leaves an audit record, written in the
same transaction as the change; `crm-sync settings log` shows them. The workers apply only the
audited next version of a document: records the admin principal writes beside the tool are refused,
dead-lettered and counted. Two admins at once never overwrite each other silently."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
from confluent_kafka import Producer

from connectors.sandbox.server import CrmSandbox
from processors.codec import Codec
from processors.domain.audit import SettingsConflict
from processors.domain.model import CompanySettings, Crm, EventType
from processors.domain.records import company_to_record
from processors.domain.rules import company_key
from processors.kafka import clients
from processors.kafka.read import read_to_end
from processors.kafka.topics import topic_specs
from processors.ops.admin import SettingsAdmin
from processors.state.settings import SettingsStore
from tests.conftest import SecureBroker
from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, wait_for
from tests.integration.test_security import as_user, secured  # noqa: F401 - the secured deployment fixture
from tests.integration.test_security import cli as secure_cli
from tests.integration.test_sinks import booking, configure, dead_letters, publish, seed
from tests.integration.test_trust import count_of, metric

pytestmark = pytest.mark.integration


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "processors.ops.cli", *args], cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run


def test_changes_are_audited_with_their_author_and_shown_by_settings_log(deployment: Deployment) -> None:
    cli(deployment, "settings", "connect", "--company", "acme", "--crm", "salesforce", "--actor", "alice")
    cli(deployment, "settings", "set", "--company", "acme", "--meeting-type", "intro-30", "--crm", "salesforce", "--event", "meeting_booked", "--on")
    cli(deployment, "settings", "apply", "--company", "acme", "--from", "intro-30", "--to", "demo-60,sales-45", "--crm", "salesforce", "--event", "meeting_booked")
    cli(deployment, "settings", "pause", "--company", "acme", "--actor", "bob")
    cli(deployment, "settings", "connect", "--company", "other", "--crm", "hubspot")

    shown = json.loads(cli(deployment, "settings", "show", "--company", "acme", "--json").stdout)
    assert shown["company"]["updated_by"] == "bob"
    assert {m["meeting_type_id"]: m["updated_by"] for m in shown["meeting_types"]} == {
        "intro-30": getpass.getuser(), "demo-60": getpass.getuser(), "sales-45": getpass.getuser(),
    }

    lines = cli(deployment, "settings", "log", "--company", "acme", "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["actor"], r["key"]) for r in records] == [
        ("alice", "company/acme"),
        (getpass.getuser(), "meeting-type/acme/intro-30"),
        (getpass.getuser(), "meeting-type/acme/demo-60"),  # one apply: both targets, one transaction
        (getpass.getuser(), "meeting-type/acme/sales-45"),
        ("bob", "company/acme"),
    ]
    assert records[0]["changes"]["salesforce_connected"] == {"old": None, "new": True}
    assert records[-1]["changes"] == {"paused": {"old": False, "new": True}}
    text = cli(deployment, "settings", "log", "--company", "acme").stdout.splitlines()
    assert text[-1].endswith("  bob  company/acme  paused: false → true")

    last = records[-1]["at"]
    since = cli(deployment, "settings", "log", "--company", "acme", "--since", _iso(last), "--json").stdout.splitlines()
    assert [json.loads(line)["actor"] for line in since] == ["bob"]


def test_the_audit_topic_is_append_only_and_kept_long(deployment: Deployment) -> None:
    cli(deployment, "settings", "connect", "--company", "acme", "--crm", "hubspot")
    spec = topic_specs(deployment.config())[deployment.topics.audit]
    assert spec["cleanup.policy"] == "delete" and int(spec["retention.ms"]) >= 365 * 24 * 3600 * 1000
    committed: list[bytes] = []
    read_to_end({"bootstrap.servers": deployment.bootstrap}, deployment.topics.audit, lambda msg: committed.append(msg.value()))
    assert len(committed) == 1  # visible to read_committed readers: written in the change's transaction
    settings: list[object] = []
    read_to_end({"bootstrap.servers": deployment.bootstrap}, deployment.topics.settings, lambda msg: settings.append(Codec().decode(msg.value())))
    assert len(settings) == 1


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


# ---- only audited next versions are applied -------------------------------------------------------


def gauge(worker: WorkerProcess, name: str) -> float:
    """An unlabelled metric's value."""
    [line] = [line for line in worker.metrics().splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


def forged_records(deployment: Deployment, company: CompanySettings) -> list[tuple[str, bytes, bytes | None]]:
    """What the admin principal can write beside the admin tool: (reason refused, key, value)."""
    codec = Codec()
    key = company_key(company.company_id).encode()
    legit: list[bytes] = []
    read_to_end(
        {"bootstrap.servers": deployment.bootstrap}, deployment.topics.settings, lambda msg: legit.append(msg.value()) if msg.key() == key else None
    )
    paused = company_to_record(replace(company, paused=True))
    return [
        ("unversioned", key, codec.encode("CompanySettings", paused)),  # kafka-console-producer, the old format
        ("audit_missing", key, codec.encode("CompanySettings", {**paused, "version": 99, "audit_id": "made-up"})),
        ("version_repeated", key, legit[-1]),  # a replay of the admin tool's own last record
        ("tombstone", key, None),
    ]


def test_records_written_beside_the_admin_tool_are_refused_dead_lettered_and_counted(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    seed(sandbox, ["audited@buyer.example"])
    admin = configure(deployment, "acme")
    company, _ = admin.show("acme")
    worker = start_worker(deployment, workers, tmp_path)
    forged = forged_records(deployment, company)
    raw = Producer({"bootstrap.servers": deployment.bootstrap})  # plain, not transactional
    for _, key, value in forged:
        raw.produce(deployment.topics.settings, key=key, value=value)
    assert raw.flush(10) == 0

    letters = wait_for(lambda: [r for r in dead_letters(deployment) if r["stage"] == "settings"] or None, 60, what="settings dead letters")
    letters = wait_for(lambda: count_of([r for r in dead_letters(deployment) if r["stage"] == "settings"], len(forged)), 60, what="all of them")
    assert sorted(r["error_code"] for r in letters) == sorted(reason for reason, _, _ in forged)
    assert all(r["error_class"] == "SettingsError" and "company/acme" in r["message"] for r in letters)
    for reason, _, _ in forged:
        assert metric(worker, "crm_sync_settings_refused_total", reason=reason) == 1
    assert "settings record refused" in worker.log_text()

    # The worker still plans with the audited document (not paused), and the admin tool sees it too.
    assert admin.show("acme")[0] == company
    publish(deployment, [booking("acme", "audited@buyer.example")])
    wait_for(lambda: len(sandbox.salesforce.list_tasks()) == 1, 60, what="the Task under the audited settings")
    # The next change through the tool follows the audited version, and is applied.
    cli(deployment, "settings", "pause", "--company", "acme")
    wait_for(lambda: gauge(worker, "crm_sync_paused_tenants") == 1, 30, what="the audited pause applied by the worker")


def test_the_admin_principal_writing_raw_records_on_the_secured_broker_is_refused(
    secured: Deployment, secure_kafka: SecureBroker, tmp_path: Path
) -> None:
    assert secure_cli(secured, secure_kafka, "admin", "settings", "connect", "--company", "acme", "--crm", "hubspot").returncode == 0
    admin_config = as_user(secured, secure_kafka, "admin")
    company, _ = SettingsAdmin(admin_config).show("acme")
    worker = WorkerProcess(secured, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(90)
        raw = Producer(clients.librdkafka(admin_config))  # the admin's own credentials, no transaction
        record = {**company_to_record(replace(company, paused=True)), "version": 2, "audit_id": "made-up"}
        raw.produce(secured.topics.settings, key=company_key("acme").encode(), value=Codec().encode("CompanySettings", record))
        assert raw.flush(30) == 0
        wait_for(lambda: metric(worker, "crm_sync_settings_refused_total", reason="audit_missing") == 1, 60, what="the refusal counted")
        letters: list[dict[str, object]] = []
        broker = clients.librdkafka(as_user(secured, secure_kafka, "broker"))
        read_to_end(broker, secured.topics.dead_letter, lambda msg: letters.append(Codec().decode(msg.value()).value))
        assert [(r["stage"], r["error_code"]) for r in letters if "stage" in r] == [("settings", "audit_missing")]
        assert gauge(worker, "crm_sync_paused_tenants") == 0
        assert "AUTHORIZATION_FAILED" not in worker.log_text()
    finally:
        worker.stop()
    assert SettingsAdmin(admin_config).show("acme")[0] == company


# ---- two admins at once ----------------------------------------------------------------------------


def test_two_admins_editing_different_settings_at_once_both_land_and_are_audited(deployment: Deployment) -> None:
    alice, bob = SettingsAdmin(deployment.config(), actor="alice"), SettingsAdmin(deployment.config(), actor="bob")
    alice.set_connected("acme", Crm.SALESFORCE, True)
    zones = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/Berlin"]
    errors: list[BaseException] = []

    def run(work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(lambda: [alice.set_timezone("acme", zone) for zone in zones],)),
        threading.Thread(target=run, args=(lambda: [bob.set_paused("acme", i % 2 == 0) for i in range(len(zones))],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    store = alice.load()
    final = store.company("acme")
    assert final is not None and final.timezone == zones[-1] and final.paused is False  # bob's last: i = 3
    stamp = store.stamp("company/acme")
    assert stamp is not None and stamp.version == 1 + 2 * len(zones)  # every change applied, none lost
    log = alice.audit_log("acme")
    assert sorted(r.version for r in log if r.version) == list(range(1, 2 + 2 * len(zones)))
    assert [r.id for r in log if r.version == stamp.version] == [stamp.audit_id]


def test_a_change_that_loses_the_race_is_made_again_on_the_fresh_document_or_reported(deployment: Deployment) -> None:
    alice, bob = SettingsAdmin(deployment.config(), actor="alice"), SettingsAdmin(deployment.config(), actor="bob")
    alice.set_connected("acme", Crm.SALESFORCE, True)
    attempts: list[int] = []

    def alice_sets_timezone_while_bob_changes(zone: str, bob_change: Callable[[], object]) -> Callable[[SettingsStore], list[CompanySettings]]:
        def make(store: SettingsStore) -> list[CompanySettings]:
            if not attempts:
                bob_change()  # committed after alice loaded, before she publishes
            attempts.append(1)
            current = store.company("acme")
            assert current is not None
            return [replace(current, timezone=zone, updated_by="alice")]

        return make

    # Another setting: made again on bob's document, both kept.
    alice.change(alice_sets_timezone_while_bob_changes("Europe/Paris", lambda: bob.set_paused("acme", True)))
    assert len(attempts) == 2
    company = alice.show("acme")[0]
    assert (company.timezone, company.paused) == ("Europe/Paris", True)

    # The same setting: reported, nothing written, bob's value stays.
    attempts.clear()
    with pytest.raises(SettingsConflict, match="timezone changed meanwhile"):
        alice.change(alice_sets_timezone_while_bob_changes("Asia/Seoul", lambda: bob.set_timezone("acme", "America/New_York")))
    assert alice.show("acme")[0].timezone == "America/New_York"
    # A form names the version it was rendered from: saving over a newer one is a conflict.
    with pytest.raises(SettingsConflict, match="changed meanwhile"):
        alice.set_company_todos("acme", {EventType.MEETING_BOOKED: True}, expected_version=1)
    assert [r.actor for r in alice.audit_log("acme")] == ["alice", "bob", "alice", "bob"]


def test_the_cli_reports_a_conflict_with_its_own_exit_code(deployment: Deployment) -> None:
    """Two CLI runs at once on one setting cannot be timed from outside; the exit code and message
    are those of the conflict `change` raises (tested above), seen through the CLI's error path."""
    SettingsAdmin(deployment.config(), actor="alice").set_connected("acme", Crm.SALESFORCE, True)
    env = {**deployment.env()}
    code = (
        "import sys\n"
        "from processors.ops import admin, cli\n"
        "def stale(self, *a, **k):\n"
        "    raise admin.SettingsConflict('company/acme: paused changed meanwhile (by bob): nothing saved')\n"
        "admin.SettingsAdmin.set_paused = stale\n"
        "sys.exit(cli.main(['settings', 'pause', '--company', 'acme']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 4, run.stderr
    assert run.stderr.splitlines()[-1] == "crm-sync: conflict: company/acme: paused changed meanwhile (by bob): nothing saved"


def test_two_cli_runs_at_once_on_different_settings_both_land(deployment: Deployment) -> None:
    cli(deployment, "settings", "connect", "--company", "acme", "--crm", "salesforce")
    commands = [
        ["settings", "timezone", "--company", "acme", "--tz", "Europe/Paris", "--actor", "alice"],
        ["settings", "pause", "--company", "acme", "--actor", "bob"],
        ["settings", "company-todo", "--company", "acme", "--event", "meeting_booked", "--on", "--actor", "carol"],
    ]
    runs = [
        subprocess.Popen([sys.executable, "-m", "processors.ops.cli", *args], cwd=ROOT, env=deployment.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in commands
    ]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    company = SettingsAdmin(deployment.config()).show("acme")[0]
    assert (company.timezone, company.paused, company.salesforce_company_todo.meeting_booked) == ("Europe/Paris", True, True)
    log = json_lines(cli(deployment, "settings", "log", "--company", "acme", "--json").stdout)
    assert sorted(r["actor"] for r in log[1:]) == ["alice", "bob", "carol"]
    assert sorted(r["version"] for r in log) == [1, 2, 3, 4]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]
