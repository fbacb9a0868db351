"""Least privilege against a real secured broker (`kafka.sh start --secure`, SPEC §7, §11): each role
connects with its own SCRAM principal over TLS and the ACLs of `crm-sync acls apply` decide."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

from connectors.sandbox.server import CrmSandbox
from processors.config import TOPIC_ENV, Config
from processors.kafka import clients
from processors.kafka.read import READER_GROUP_PREFIX, read_to_end
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
    # The upstream's topics are the upstream's: the platform (here the super user) creates them.
    create_missing(as_user(deployment, secure_kafka, "broker"), list(deployment.topics.inputs))
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


def test_faust_s_own_router_and_table_views_are_not_served(secured: Deployment, tmp_path: Path) -> None:
    """Faust is the runtime only: its built-in views would show internals to anyone on the port."""
    import urllib.error
    import urllib.request

    worker = WorkerProcess(secured, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(90)
        for path in ("/router/", "/table/", "/table/settings/", "/router/settings/acme/"):
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{worker.port}{path}", timeout=10)
            assert answer.value.code == 404, path
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/health/live", timeout=10) as live:
            assert live.status == 200  # the server that said 404 is up and serving its own views
    finally:
        worker.stop()


def test_the_worker_does_not_create_the_upstream_input_topics(secure_kafka: SecureBroker, tmp_path: Path) -> None:
    """A missing input topic is its owner's to create: the worker says so in one line and stops."""
    deployment = Deployment(
        bootstrap=secure_kafka.bootstrap, topics=unique_topics("noin"), secrets_dir=tmp_path / "secrets", ca_file=secure_kafka.ca_file,
        extra_env=secure_kafka.env("worker"),
    )
    deployment.secrets_dir.mkdir()
    acls.apply(as_user(deployment, secure_kafka, "broker"), ROLES)
    run = cli(deployment, secure_kafka, "worker", "worker")
    assert run.returncode != 0
    [line] = [line for line in run.stderr.splitlines() if line.startswith("crm-sync: error:")]
    assert "the broker refused User:worker" in line and deployment.topics.meetings in line, line
    broker = AdminClient(clients.librdkafka(as_user(deployment, secure_kafka, "broker")))
    existing = set(broker.list_topics(timeout=30).topics)
    assert not existing & set(deployment.topics.inputs)
    assert deployment.topics.delay in existing  # its own topics it did create


# The broker ACL matrix: each principal as a plain librdkafka client (no transactional id unless
# the case is the admin's), against every operation that must stay the platform's or the admin's.
REQUEST_TIMEOUT_S = 30.0
ALL_TOPICS = tuple(TOPIC_ENV)
PUBLISHER_MAY_NOT_READ = ("delay", "due_salesforce", "due_hubspot", "ledger_salesforce", "ledger_hubspot", "history", "dead_letter", "audit")


def matrix_cases() -> list[tuple[str, str, str, int]]:
    """(role, operation, topic attribute, the authorization error the broker answers with)."""
    topic_refused = KafkaError.TOPIC_AUTHORIZATION_FAILED
    cases = []
    for role in ("worker", "publisher", "sre"):
        cases += [(role, op, topic, topic_refused) for op in ("produce", "delete_records") for topic in ("settings", "audit")]
        cases.append((role, "alter_configs", "audit", topic_refused))
        cases += [(role, op, topic, topic_refused) for op in ("create_partitions", "delete_topics") for topic in ALL_TOPICS]
        cases.append((role, "init_transactions", "-", KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED))
    cases += [("publisher", "read", topic, topic_refused) for topic in PUBLISHER_MAY_NOT_READ]
    # The SRE may describe every topic, so its reads reach the fetch: the READ grant itself is what refuses.
    cases += [("sre", "read", topic, topic_refused) for topic in ALL_TOPICS]
    return cases


@pytest.fixture(scope="module")
def matrix(secure_kafka: SecureBroker, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """One deployment for the whole matrix: every topic made by the super user, holding a record."""
    deployment = Deployment(
        bootstrap=secure_kafka.bootstrap, topics=unique_topics("acl"), secrets_dir=tmp_path_factory.mktemp("acl") / "secrets",
        ca_file=secure_kafka.ca_file,
    )
    broker = as_user(deployment, secure_kafka, "broker")
    acls.apply(broker, ROLES)
    create_missing(broker)
    producer = Producer(clients.librdkafka(broker))
    for name in ALL_TOPICS:
        producer.produce(getattr(deployment.topics, name), key=b"acme", value=b"a record")
    assert producer.flush(30) == 0
    return deployment


def error_of(future: Any) -> KafkaError | None:
    try:
        future.result()
    except KafkaException as exc:
        return exc.args[0]
    return None


def read_refusal(conf: dict[str, Any], topic: str) -> KafkaError | None:
    """What a reader does, step by step: the topic's metadata, its end offsets, then a fetch from
    the beginning. Returns the first refusal; None when a record arrived."""
    consumer = Consumer({**conf, "group.id": f"{READER_GROUP_PREFIX}acl-matrix", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics[topic]
        if meta.error is not None:
            return meta.error  # not even allowed to describe it: no leader to fetch from
        try:
            consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=REQUEST_TIMEOUT_S, cached=False)
        except KafkaException as exc:
            return exc.args[0]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            # librdkafka wants a group id even for assigned partitions, and its coordinator lookup
            # is refused for a principal with no group grant: that says nothing about the topic.
            if msg is not None and not (msg.error() and msg.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED):
                return msg.error()  # a record (None) is a read let through
        return KafkaError(KafkaError._TIMED_OUT)
    finally:
        consumer.close()


def attempt(conf: dict[str, Any], op: str, topic: str) -> KafkaError | None:
    """Runs one operation as a raw client; the broker's error, or None when it was let through."""
    if op == "produce":
        outcome: list[KafkaError | None] = []
        producer = Producer(conf)
        producer.produce(topic, key=b"company/acme", value=b"forged", on_delivery=lambda err, msg: outcome.append(err))
        producer.flush(REQUEST_TIMEOUT_S)
        return outcome[0] if outcome else KafkaError(KafkaError._TIMED_OUT)
    if op == "init_transactions":
        producer = Producer({**conf, "transactional.id": f"{acls.ADMIN_TRANSACTIONAL_PREFIX}forged"})
        try:
            producer.init_transactions(REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            return exc.args[0]
        return None
    if op == "read":
        return read_refusal(conf, topic)
    admin = AdminClient(conf)
    if op == "delete_records":
        [future] = admin.delete_records([TopicPartition(topic, 0, OFFSET_END)], request_timeout=REQUEST_TIMEOUT_S).values()
        error = error_of(future)
        if error is not None and error.code() == KafkaError._NOENT:
            # librdkafka first asks for the partition leaders; a principal that may not even
            # describe the topic is refused there, so no DeleteRecords request is ever sent.
            return admin.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics[topic].error
        return error
    if op == "alter_configs":
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
            ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ])
        [future] = admin.incremental_alter_configs([resource], request_timeout=REQUEST_TIMEOUT_S).values()
    elif op == "create_partitions":
        [future] = admin.create_partitions([NewPartitions(topic, 3)], request_timeout=REQUEST_TIMEOUT_S).values()
    elif op == "delete_topics":
        [future] = admin.delete_topics([topic], request_timeout=REQUEST_TIMEOUT_S).values()
    else:
        raise AssertionError(op)
    return error_of(future)


@pytest.mark.parametrize(("role", "op", "topic", "refusal"), matrix_cases(), ids=lambda v: KafkaError(v).name() if isinstance(v, int) else v)
def test_the_broker_refuses_what_the_role_must_not_do(
    matrix: Deployment, secure_kafka: SecureBroker, role: str, op: str, topic: str, refusal: int
) -> None:
    conf = clients.librdkafka(as_user(matrix, secure_kafka, role))
    name = getattr(matrix.topics, topic) if topic != "-" else topic
    error = attempt(conf, op, name)
    assert error is not None, f"User:{role} was let through: {op} {name}"
    assert error.code() == refusal, f"User:{role} {op} {name}: {error.name()} ({error.str()}), not {KafkaError(refusal).name()}"
