"""The one client-config builder: every client connects the same way, every stage commits explicitly."""

from __future__ import annotations

import pytest

from processors.config import Config, ConfigError
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


# CRM_SYNC_KAFKA_<KEY>: the variable, the librdkafka key it sets.
@pytest.mark.parametrize(
    ("var", "key"),
    [
        ("CRM_SYNC_KAFKA_CLIENT_RACK", "client.rack"),
        ("CRM_SYNC_KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
        ("CRM_SYNC_KAFKA_COMPRESSION_TYPE", "compression.type"),
        ("CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS", "session.timeout.ms"),
        ("CRM_SYNC_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", "sasl.oauthbearer.token.endpoint.url"),
    ],
)
def test_a_passthrough_variable_names_its_librdkafka_key(var: str, key: str) -> None:
    config = Config.from_env({var: "v"})
    assert config.kafka_options == ((var, key, "v"),)
    assert clients.librdkafka(config)[key] == "v"


def test_variables_that_are_not_librdkafka_keys_are_no_passthrough() -> None:
    assert Config.from_env({"CRM_SYNC_KAFKA_LIBS": "/jars", "CRM_SYNC_KAFKA": "local", "CRM_SYNC_KAFKA_CLIENT_ID": ""}).kafka_options == ()


def test_every_librdkafka_client_gets_the_passthrough_but_not_over_the_producers_guarantees() -> None:
    config = Config.from_env({"CRM_SYNC_KAFKA_COMPRESSION_TYPE": "lz4", "CRM_SYNC_KAFKA_LINGER_MS": "50"})
    conf = clients.producer(config)
    assert (conf["compression.type"], conf["linger.ms"], conf["acks"], conf["enable.idempotence"]) == ("lz4", "50", "all", True)
    assert clients.producer(Config.from_env({}))["linger.ms"] == 5


def test_the_session_timeout_is_configurable_and_keeps_its_default() -> None:
    default = clients.group_consumer(Config.from_env({}), "g")
    assert (default["session_timeout_ms"], default["heartbeat_interval_ms"]) == (10_000, 3_000)
    longer = clients.group_consumer(Config.from_env({"CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS": "45000"}), "g")
    assert (longer["session_timeout_ms"], longer["heartbeat_interval_ms"]) == (45_000, 3_000)
    shorter = Config.from_env({"CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS": "6000"})
    assert (clients.session_timeout_ms(shorter), clients.heartbeat_interval_ms(shorter)) == (6_000, 2_000)


def test_aiokafka_consumers_get_the_keys_they_know() -> None:
    config = Config.from_env({
        "CRM_SYNC_KAFKA_CLIENT_RACK": "eu-west-1a",
        "CRM_SYNC_KAFKA_CLIENT_ID": "crm-sync-0",
        "CRM_SYNC_KAFKA_MAX_POLL_INTERVAL_MS": "600000",
        "CRM_SYNC_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CRM_SYNC_KAFKA_COMPRESSION_TYPE": "lz4",
    })
    clients.check_options(config, worker=True)
    options = clients.group_consumer(config, "g")
    assert (options["client_rack"], options["client_id"], options["max_poll_interval_ms"], options["heartbeat_interval_ms"]) == (
        "eu-west-1a", "crm-sync-0", 600_000, 1_000,
    )
    assert not any("compression" in name for name in options)  # a producer key: nothing for a consumer


SECRET = "Zq9-not-for-logs"


# Environment, whether the worker (aiokafka consumers too) or only the CLI, what the error names.
@pytest.mark.parametrize(
    ("env", "worker", "named"),
    [
        ({"CRM_SYNC_KAFKA_NO_SUCH_KEY": SECRET}, False, "CRM_SYNC_KAFKA_NO_SUCH_KEY: expected a librdkafka property"),
        ({"CRM_SYNC_KAFKA_COMPRESSION_TYPE": SECRET}, False, "CRM_SYNC_KAFKA_COMPRESSION_TYPE: expected a librdkafka property"),
        ({"CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS": SECRET}, False, "CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS: expected a whole number"),
        ({"CRM_SYNC_KAFKA_BOOTSTRAP_SERVERS": SECRET}, False, "(set KAFKA_BOOTSTRAP_SERVERS)"),
        ({"CRM_SYNC_KAFKA_SASL_PASSWORD": SECRET}, False, "(set KAFKA_SASL_PASSWORD)"),
        ({"CRM_SYNC_KAFKA_ENABLE_IDEMPOTENCE": "false"}, False, "CRM_SYNC_KAFKA_ENABLE_IDEMPOTENCE: expected a key crm-sync does not set"),
        ({"CRM_SYNC_KAFKA_SOCKET_KEEPALIVE_ENABLE": "true"}, True, "CRM_SYNC_KAFKA_SOCKET_KEEPALIVE_ENABLE: expected a key the worker's aiokafka"),
        ({"CRM_SYNC_KAFKA_SSL_KEY_PASSWORD": SECRET}, True, "CRM_SYNC_KAFKA_SSL_KEY_PASSWORD: expected KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SECRET},
            True,
            "KAFKA_SASL_MECHANISM: expected PLAIN or SCRAM-* for the worker",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
             "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SECRET},
            False,
            "expected settings librdkafka accepts together",
        ),
    ],
)
def test_a_passthrough_that_cannot_apply_is_refused_naming_the_variable_never_the_value(
    env: dict[str, str], worker: bool, named: str
) -> None:
    config = Config.from_env(env)
    with pytest.raises(ConfigError) as caught:
        clients.check_options(config, worker=worker)
    assert named in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(config)


@pytest.mark.parametrize(
    "env",
    [
        {"CRM_SYNC_KAFKA_CLIENT_RACK": "r1", "CRM_SYNC_KAFKA_COMPRESSION_TYPE": "lz4", "CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS": "45000"},
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
            "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "crm-sync",
            "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SECRET,
            "CRM_SYNC_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://127.0.0.1:1/token",
        },
    ],
)
def test_settings_librdkafka_takes_pass_the_cli_check(env: dict[str, str]) -> None:
    clients.check_options(Config.from_env(env), worker=False)
