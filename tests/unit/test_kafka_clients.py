"""The one client-config builder: every client connects the same way, every stage commits explicitly."""

from __future__ import annotations

from processors.config import Config
from processors.kafka import clients

SASL_SSL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "worker",
    "KAFKA_SASL_PASSWORD": "s3cret",
}


def test_static_membership_only_when_an_instance_id_is_given() -> None:
    assert "group_instance_id" not in clients.group_consumer(Config.from_env({}), "g")
    options = clients.group_consumer(Config.from_env({"CRM_SYNC_GROUP_INSTANCE_ID": "worker-0"}), "g")
    assert options["group_instance_id"] == "worker-0"
    assert options["security_protocol"] == "PLAINTEXT"


def test_stage_consumers_commit_explicitly_and_read_committed() -> None:
    options = clients.group_consumer(Config.from_env({}), "crm-sync-ingest")
    assert options["group_id"] == "crm-sync-ingest"
    assert options["enable_auto_commit"] is False
    assert options["isolation_level"] == "read_committed"
    assert options["session_timeout_ms"] == int(clients.SESSION_TIMEOUT_S * 1000)


def test_librdkafka_and_aiokafka_get_the_same_security() -> None:
    config = Config.from_env(SASL_SSL)
    rd = clients.librdkafka(config)
    assert (rd["security.protocol"], rd["sasl.mechanism"], rd["sasl.username"], rd["sasl.password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "worker", "s3cret",
    )
    aio = clients.aiokafka(config)
    assert (aio["security_protocol"], aio["sasl_mechanism"], aio["sasl_plain_username"], aio["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "worker", "s3cret",
    )
    assert aio["ssl_context"] is not None


def test_plaintext_has_no_sasl_or_tls() -> None:
    config = Config.from_env({})
    assert "sasl.mechanism" not in clients.librdkafka(config)
    assert "ssl_context" not in clients.aiokafka(config)
    assert clients.ssl_context(config) is None


def test_the_stages_producer_waits_for_all_replicas_and_partitions_like_the_java_clients() -> None:
    conf = clients.producer(Config.from_env(SASL_SSL))
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    assert conf["partitioner"] == "murmur2_random"  # the delay and ledger topics keep their companies' partitions
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.username"] == "worker"
