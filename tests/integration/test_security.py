"""Least privilege against a real secured broker (`kafka.sh start --secure`, SPEC §7, §11): each role
connects with its own SCRAM principal over TLS and the ACLs of `crm-sync acls apply` decide."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer

from connectors.sandbox.server import CrmSandbox
from processors.config import Config
from processors.kafka import clients
from processors.kafka.read import read_to_end
from processors.kafka.topics import create_missing
from processors.ops import acls
from processors.ops.publisher import EventPublisher
from tests.conftest import SecureBroker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, unique_topics, wait_for, write_default_secrets
from tests.integration.test_end_to_end import booking, seed_people

pytestmark = pytest.mark.integration

ROLES = {"worker": ["worker"], "admin": ["admin"], "publisher": ["publisher"], "sre": ["sre"]}


@pytest.fixture
def secured(secure_kafka: SecureBroker, sandbox: CrmSandbox, tmp_path: Path) -> Deployment:
    """A deployment on the secured broker, with the worker's principal and the ACLs applied."""
    info = sandbox.info()
    secrets = tmp_path / "secrets"
    write_default_secrets(
        secrets, sf_instance=info["salesforce_instance"], session_id=info["session_id"],
        hs_url=info["hubspot_url"], hs_token=info["hubspot_token"],
    )
    deployment = Deployment(
        bootstrap=secure_kafka.bootstrap, topics=unique_topics("sec"), secrets_dir=secrets, ca_file=info["ca_file"],
        extra_env=secure_kafka.env("worker"),
    )
    acls.apply(as_user(deployment, secure_kafka, "broker"), ROLES)
    return deployment


def as_user(deployment: Deployment, broker: SecureBroker, user: str, password: str | None = None) -> Config:
    return Config.from_env({**deployment.env(), **broker.env(user, password)})


def cli(deployment: Deployment, broker: SecureBroker, user: str, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**deployment.env(), **broker.env(user, password)}
    return subprocess.run([sys.executable, "-m", "processors.ops.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_worker_delivers_a_booking_end_to_end_with_its_own_principal(
    secured: Deployment, secure_kafka: SecureBroker, sandbox: CrmSandbox, tmp_path: Path
) -> None:
    booker, host = "sec.booker@buyer.example", "sec.host@seller.example"
    seed_people(sandbox, booker=booker, host=host)
    for command in (("connect", "--crm", "salesforce"), ("connect", "--crm", "hubspot")):
        assert cli(secured, secure_kafka, "admin", "settings", command[0], "--company", "acme", *command[1:]).returncode == 0
    toggle = ("settings", "set", "--company", "acme", "--meeting-type", "intro-30", "--event", "meeting_booked", "--on")
    assert cli(secured, secure_kafka, "admin", *toggle, "--crm", "salesforce").returncode == 0
    assert cli(secured, secure_kafka, "admin", *toggle, "--crm", "hubspot").returncode == 0

    worker = WorkerProcess(secured, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(90)
        publisher = EventPublisher(clients.librdkafka(as_user(secured, secure_kafka, "publisher")), secured.topics)
        publisher.publish_meeting_booked(booking(booker=booker, host=host, start=datetime(2026, 12, 2, 1, 0, tzinfo=timezone.utc)))
        publisher.flush()
        wait_for(sandbox.salesforce.list_tasks, 60, what="the Salesforce Task")
        wait_for(sandbox.hubspot.list_meetings, 60, what="the HubSpot meeting")
        assert "AUTHORIZATION_FAILED" not in worker.log_text()
    finally:
        worker.stop()


def test_settings_work_as_admin_and_are_refused_to_worker_and_publisher(secured: Deployment, secure_kafka: SecureBroker) -> None:
    ok = cli(secured, secure_kafka, "admin", "settings", "connect", "--company", "acme", "--crm", "hubspot")
    assert ok.returncode == 0, ok.stderr
    assert cli(secured, secure_kafka, "admin", "settings", "show", "--company", "acme").returncode == 0
    for user in ("worker", "publisher"):
        refused = cli(secured, secure_kafka, user, "settings", "pause", "--company", "acme")
        assert refused.returncode != 0
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        [line] = refused.stderr.splitlines()
        assert line.startswith(f"crm-sync: error: the broker refused User:{user}: "), line
    log = cli(secured, secure_kafka, "admin", "settings", "log", "--company", "acme")
    assert log.returncode == 0, log.stderr
    assert log.stdout.splitlines()[-1].endswith("  User:admin  company/acme  hubspot_connected: null → true")


def test_a_publisher_cannot_write_the_settings_topic(secured: Deployment, secure_kafka: SecureBroker) -> None:
    cli(secured, secure_kafka, "admin", "settings", "connect", "--company", "acme", "--crm", "hubspot")
    outcome: list[object] = []
    producer = Producer(clients.librdkafka(as_user(secured, secure_kafka, "publisher")))
    producer.produce(secured.topics.settings, key=b"company/acme", value=b"forged", on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(30)
    [error] = outcome
    assert error is not None and error.name() == "TOPIC_AUTHORIZATION_FAILED"


def test_an_unknown_principal_cannot_connect_and_the_sre_reads_no_personal_data(
    secured: Deployment, secure_kafka: SecureBroker
) -> None:
    t = secured.topics
    private = (t.dead_letter, t.delay, t.due_salesforce, t.due_hubspot, t.retry, t.meetings)
    broker = as_user(secured, secure_kafka, "broker")
    create_missing(broker)
    producer = Producer(clients.librdkafka(broker))
    for topic in private:
        producer.produce(topic, key=b"acme", value=b"personal data")
    assert producer.flush(30) == 0

    mallory = as_user(secured, secure_kafka, "mallory", "guess")
    with pytest.raises(clients.BrokerRefused, match="authentication failed"):
        clients.check_credentials(mallory)
    sre = as_user(secured, secure_kafka, "sre")
    clients.check_credentials(sre)  # a known principal connects…
    for topic in (t.dead_letter, t.delay, t.due_salesforce):
        with pytest.raises(KafkaException):
            read_to_end(clients.librdkafka(mallory), topic, lambda msg: None, timeout=5)
    for topic in private:
        with pytest.raises(KafkaException, match="AUTHORIZATION_FAILED"):
            read_to_end(clients.librdkafka(sre), topic, lambda msg: None, timeout=10)  # …but reads nothing personal


def test_a_wrong_password_is_one_clear_line_at_once(secured: Deployment, secure_kafka: SecureBroker, tmp_path: Path) -> None:
    for args in (("settings", "show", "--company", "acme"), ("worker",)):
        started = time.monotonic()
        run = cli(secured, secure_kafka, "worker", *args, password="wrong")
        assert run.returncode != 0
        [line] = run.stderr.splitlines()
        assert line.startswith("crm-sync: error: the broker refused User:worker: authentication failed"), line
        assert time.monotonic() - started < 20



def test_no_secret_of_any_kind_reaches_the_log_or_metrics(
    secured: Deployment, secure_kafka: SecureBroker, sandbox: CrmSandbox, tmp_path: Path
) -> None:
    """The worker runs with a SASL password, an HTTP token and CRM credentials of every kind (a
    session, a password + security token, client credentials, a HubSpot token); companies whose
    logins cannot succeed here make the worker log their failures. No secret value may appear."""
    secrets = {
        "sasl": secure_kafka.passwords["worker"],
        "http": "http-token-Zq81",
        "session": json.loads((secured.secrets_dir / "_default" / "salesforce.json").read_text())["session_id"],
        "hubspot": json.loads((secured.secrets_dir / "_default" / "hubspot.json").read_text())["access_token"],
        "password": "pw-Xk29-secret",
        "security_token": "st-Lm47-secret",
        "consumer_secret": "cs-Rt63-secret",
    }
    for company, creds in {
        "pw-co": {"username": "u@pw.example", "password": secrets["password"], "security_token": secrets["security_token"], "domain": "127.0.0.1:9"},
        "cc-co": {"consumer_key": "ck-1", "consumer_secret": secrets["consumer_secret"], "domain": "127.0.0.1:9"},
    }.items():
        (secured.secrets_dir / company).mkdir()
        (secured.secrets_dir / company / "salesforce.json").write_text(json.dumps(creds))
    seed_people(sandbox, booker="leak.booker@buyer.example", host="leak.host@seller.example")
    for company in ("acme", "pw-co", "cc-co"):
        assert cli(secured, secure_kafka, "admin", "settings", "connect", "--company", company, "--crm", "salesforce").returncode == 0
        assert cli(secured, secure_kafka, "admin", "settings", "set", "--company", company, "--meeting-type", "intro-30",
                   "--crm", "salesforce", "--event", "meeting_booked", "--on").returncode == 0
    secured.extra_env.update(CRM_SYNC_HTTP_BIND="0.0.0.0", CRM_SYNC_HTTP_TOKEN=secrets["http"], CRM_SYNC_LOG_LEVEL="DEBUG")

    worker = WorkerProcess(secured, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(90)
        publisher = EventPublisher(clients.librdkafka(as_user(secured, secure_kafka, "publisher")), secured.topics)
        for company in ("acme", "pw-co", "cc-co"):
            event = booking(booker="leak.booker@buyer.example", host="leak.host@seller.example", start=datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc))
            publisher.publish_meeting_booked({**event, "company_id": company})
        publisher.flush()
        wait_for(sandbox.salesforce.list_tasks, 60, what="the Salesforce Task")
        wait_for(lambda: "pw-co" in worker.log_text() and "cc-co" in worker.log_text(), 60, what="the failed logins in the log")
        text = worker.log_text() + worker.metrics()
    finally:
        worker.stop()
    text += worker.log_text()
    for kind, value in secrets.items():
        assert value not in text, f"the {kind} secret is in the log or /metrics"
    assert "leak.booker@buyer.example" not in text
