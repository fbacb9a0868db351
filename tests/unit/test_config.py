"""The configuration object: every variable has its default, bad values fail at start with one line
naming the variable, `.env` supplies what the real environment does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from processors.config import DEFAULT_BOOTSTRAP, TOPIC_ENV, Config, ConfigError, Topics
from processors.domain.model import Crm

SASL = {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "hunter2"}


def test_every_topic_is_configurable_by_its_variable() -> None:
    env = {var: f"custom.{name}" for name, var in TOPIC_ENV.items()}
    topics = Config.from_env(env).topics
    assert {name: getattr(topics, name) for name in TOPIC_ENV} == {name: f"custom.{name}" for name in TOPIC_ENV}
    assert set(TOPIC_ENV) == set(Topics.__dataclass_fields__)


def test_topic_defaults_come_from_the_one_table() -> None:
    assert Config.from_env({}).topics == Topics()
    assert Topics().inputs == ("scheduling.meetings.v1", "scheduling.research.v1", "scheduling.surveys.v1")
    assert (Topics().settings, Topics().dead_letter) == ("crm-sync.settings.v1", "crm-sync.dead-letter.v1")
    assert TOPIC_ENV["dead_letter"] == "CRM_SYNC_TOPIC_DEAD_LETTER"


def test_due_and_ledger_topics_per_crm() -> None:
    t = Topics()
    assert (t.due(Crm.SALESFORCE), t.ledger(Crm.SALESFORCE)) == ("crm-sync.actions.salesforce.v1", "crm-sync.ledger.salesforce.v1")
    assert (t.due(Crm.HUBSPOT), t.ledger(Crm.HUBSPOT)) == ("crm-sync.actions.hubspot.v1", "crm-sync.ledger.hubspot.v1")


def test_stage_defaults() -> None:
    config = Config.from_env({})
    assert (config.ingest_batch_size, config.ledger_keep_hours, config.paused_repark_seconds) == (1000, 168.0, 3600.0)
    assert Config.from_env({"CRM_SYNC_PAUSED_REPARK_SECONDS": "60"}).paused_repark_seconds == 60.0


DEFAULTS = [
    ("bootstrap_servers", DEFAULT_BOOTSTRAP),
    ("security_protocol", "PLAINTEXT"),
    ("sasl_mechanism", None),
    ("sasl_username", None),
    ("sasl_password", None),
    ("ssl_ca_location", None),
    ("schema_registry_url", None),
    ("schema_registry_basic_auth_user_info", None),
    ("schema_registry_ssl_ca_location", None),
    ("delay_seconds", 600.0),
    ("topic_partitions", 6),
    ("replication_factor", 1),
    ("create_topics", True),
    ("secrets_dir", Path("./secrets")),
    ("metrics_port", 9464),
    ("http_bind", "127.0.0.1"),
    ("http_token", None),
    ("ca_bundle", None),
    ("crm_allowed_hosts", None),
    ("token_dir", None),
    ("app_id", "crm-sync"),
    ("state_dir", Path("./.run/state")),
    ("log_level", "INFO"),
    ("delay_lookahead_seconds", 60.0),
    ("paused_repark_seconds", 3600.0),
    ("retry_short_max_seconds", 60.0),
    ("retry_medium_max_seconds", 3600.0),
    ("retry_retention_hours", 192.0),
    ("sink_give_up_seconds", 86_400.0),
    ("sink_inline_retry_seconds", 10.0),
    ("sink_batch_size", 200),
    ("ledger_keep_hours", 168.0),
    ("group_instance_id", None),
    ("kafka_options", ()),
    ("ingest_batch_size", 1000),
    ("ingest_processes", 0),
    ("sink_batch_window_seconds", 0.2),
    ("sink_concurrency", 16),
    ("salesforce_rate_per_second", 20.0),
    ("hubspot_rate_per_second", 9.0),
    ("salesforce_action_id_field", None),
    ("hubspot_action_id_property", None),
    ("allow_default_credentials", False),
    ("new_group_lookback_seconds", 600.0),
    ("previous_app_id", None),
    ("settings_ready_timeout_seconds", 30.0),
    ("ledger_read_timeout_seconds", 120.0),
    ("retry_after_cap_seconds", 900.0),
    ("sink_company_budget_seconds", 5.0),
    ("quota_defer_ratio", 0.95),
    ("quota_defer_seconds", 900.0),
    ("console_users_file", None),
    ("console_bind", "127.0.0.1"),
    ("console_port", 8470),
    ("console_secret", None),
    ("console_idle_seconds", 1800.0),
    ("console_tls_cert", None),
    ("console_tls_key", None),
    ("console_behind_tls", False),
    ("console_trusted_headers", False),
    ("console_trusted_proxies", "127.0.0.1,::1"),
    ("console_group_roles", ""),
    ("console_login_user_attempts", 5),
    ("console_login_address_attempts", 20),
    ("console_login_window_seconds", 900.0),
]


def test_defaults_cover_every_attribute() -> None:
    assert {name for name, _ in DEFAULTS} | {"topics"} == {f.name for f in dataclasses.fields(Config)}


@pytest.mark.parametrize(("name", "default"), DEFAULTS)
def test_defaults(name: str, default: object) -> None:
    assert getattr(Config(), name) == default
    assert getattr(Config.from_env({}), name) == default


def test_empty_values_mean_unset() -> None:
    env = {"CRM_SYNC_DELAY_SECONDS": "", "KAFKA_SECURITY_PROTOCOL": "", "CRM_SYNC_TOPIC_MEETINGS": ""}
    assert Config.from_env(env) == Config()


VALUES = [
    ("KAFKA_BOOTSTRAP_SERVERS", "b1:9093,b2:9093", "bootstrap_servers", "b1:9093,b2:9093"),
    ("KAFKA_SECURITY_PROTOCOL", "ssl", "security_protocol", "SSL"),
    ("KAFKA_SSL_CA_LOCATION", "/ca.pem", "ssl_ca_location", "/ca.pem"),
    ("SCHEMA_REGISTRY_URL", "http://registry:8081", "schema_registry_url", "http://registry:8081"),
    ("CRM_SYNC_DELAY_SECONDS", "0", "delay_seconds", 0.0),
    ("CRM_SYNC_SECRETS_DIR", "/run/secrets", "secrets_dir", Path("/run/secrets")),
    ("CRM_SYNC_STATE_DIR", "/var/state", "state_dir", Path("/var/state")),
    ("CRM_SYNC_METRICS_PORT", "65535", "metrics_port", 65535),
    ("CRM_SYNC_CA_BUNDLE", "/sandbox-ca.pem", "ca_bundle", "/sandbox-ca.pem"),
    ("CRM_SYNC_CRM_ALLOWED_HOSTS", "http://127.0.0.1", "crm_allowed_hosts", "http://127.0.0.1"),
    ("CRM_SYNC_TOKEN_DIR", "/var/lib/crm-sync-tokens", "token_dir", Path("/var/lib/crm-sync-tokens")),
    ("CRM_SYNC_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("CRM_SYNC_SINK_RETRY_SECONDS", "3600", "sink_give_up_seconds", 3600.0),
    ("CRM_SYNC_SINK_CONCURRENCY", "1", "sink_concurrency", 1),
    ("CRM_SYNC_HUBSPOT_RATE", "0.5", "hubspot_rate_per_second", 0.5),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "true", "allow_default_credentials", True),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "YES", "allow_default_credentials", True),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "1", "allow_default_credentials", True),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "no", "allow_default_credentials", False),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "0", "allow_default_credentials", False),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "False", "allow_default_credentials", False),
    ("CRM_SYNC_NEW_GROUP_LOOKBACK_SECONDS", "0", "new_group_lookback_seconds", 0.0),
    ("CRM_SYNC_SETTINGS_READY_TIMEOUT_SECONDS", "2.5", "settings_ready_timeout_seconds", 2.5),
    ("CRM_SYNC_LEDGER_READ_TIMEOUT_SECONDS", "5", "ledger_read_timeout_seconds", 5.0),
    ("CRM_SYNC_PREVIOUS_APP_ID", "crm-sync-old", "previous_app_id", "crm-sync-old"),
    ("CRM_SYNC_RETRY_AFTER_CAP_SECONDS", "60", "retry_after_cap_seconds", 60.0),
    ("CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS", "0.5", "sink_company_budget_seconds", 0.5),
    ("CRM_SYNC_QUOTA_DEFER_RATIO", "0.8", "quota_defer_ratio", 0.8),
    ("CRM_SYNC_QUOTA_DEFER_RATIO", "1", "quota_defer_ratio", 1.0),
    ("CRM_SYNC_QUOTA_DEFER_SECONDS", "60", "quota_defer_seconds", 60.0),
    ("CRM_SYNC_CREATE_TOPICS", "false", "create_topics", False),
    ("CRM_SYNC_CONSOLE_USERS_FILE", "/etc/crm-sync/users.json", "console_users_file", Path("/etc/crm-sync/users.json")),
    ("CRM_SYNC_CONSOLE_BIND", "0.0.0.0", "console_bind", "0.0.0.0"),
    ("CRM_SYNC_CONSOLE_PORT", "8080", "console_port", 8080),
    ("CRM_SYNC_CONSOLE_SECRET", "s" * 32, "console_secret", "s" * 32),
    ("CRM_SYNC_CONSOLE_IDLE_SECONDS", "60", "console_idle_seconds", 60.0),
    ("CRM_SYNC_CONSOLE_TLS_CERT", "/tls/tls.crt", "console_tls_cert", Path("/tls/tls.crt")),
    ("CRM_SYNC_CONSOLE_TLS_KEY", "/tls/tls.key", "console_tls_key", Path("/tls/tls.key")),
    ("CRM_SYNC_CONSOLE_BEHIND_TLS", "true", "console_behind_tls", True),
    ("CRM_SYNC_CONSOLE_TRUSTED_HEADERS", "1", "console_trusted_headers", True),
    ("CRM_SYNC_CONSOLE_TRUSTED_PROXIES", "10.0.0.0/8", "console_trusted_proxies", "10.0.0.0/8"),
    ("CRM_SYNC_CONSOLE_GROUP_ROLES", "crm-admins=admin", "console_group_roles", "crm-admins=admin"),
    ("CRM_SYNC_CONSOLE_LOGIN_USER_ATTEMPTS", "3", "console_login_user_attempts", 3),
    ("CRM_SYNC_CONSOLE_LOGIN_ADDRESS_ATTEMPTS", "9", "console_login_address_attempts", 9),
    ("CRM_SYNC_CONSOLE_LOGIN_WINDOW_SECONDS", "30", "console_login_window_seconds", 30.0),
]


@pytest.mark.parametrize(("var", "text", "name", "expected"), VALUES)
def test_values_are_read_from_their_variable(var: str, text: str, name: str, expected: object) -> None:
    assert getattr(Config.from_env({var: text}), name) == expected


BAD = [
    ("CRM_SYNC_DELAY_SECONDS", "ten", "a number of seconds (>= 0)"),
    ("CRM_SYNC_DELAY_SECONDS", "-1", "a number of seconds (>= 0)"),
    ("CRM_SYNC_DELAY_SECONDS", "nan", "a number of seconds (>= 0)"),
    ("CRM_SYNC_DELAY_LOOKAHEAD_SECONDS", "1m", "a number of seconds (>= 0)"),
    ("CRM_SYNC_PAUSED_REPARK_SECONDS", "-5", "a number of seconds (>= 0)"),
    ("CRM_SYNC_SINK_RETRY_SECONDS", "forever", "a number of seconds (>= 0)"),
    ("CRM_SYNC_SINK_INLINE_RETRY_SECONDS", "-0.1", "a number of seconds (>= 0)"),
    ("CRM_SYNC_SINK_BATCH_WINDOW_SECONDS", "inf", "a number of seconds (>= 0)"),
    ("CRM_SYNC_NEW_GROUP_LOOKBACK_SECONDS", "-600", "a number of seconds (>= 0)"),
    ("CRM_SYNC_SETTINGS_READY_TIMEOUT_SECONDS", "soon", "a number of seconds (>= 0)"),
    ("CRM_SYNC_RETRY_AFTER_CAP_SECONDS", "-1", "a number of seconds (>= 0)"),
    ("CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS", "5s", "a number of seconds (>= 0)"),
    ("CRM_SYNC_LEDGER_KEEP_HOURS", "0", "a number of hours (> 0)"),
    ("CRM_SYNC_SALESFORCE_RATE", "0", "a number of calls per second (> 0)"),
    ("CRM_SYNC_HUBSPOT_RATE", "fast", "a number of calls per second (> 0)"),
    ("CRM_SYNC_TOPIC_PARTITIONS", "0", "a whole number (>= 1)"),
    ("CRM_SYNC_REPLICATION_FACTOR", "1.5", "a whole number (>= 1)"),
    ("CRM_SYNC_SINK_BATCH_SIZE", "-1", "a whole number (>= 1)"),
    ("CRM_SYNC_INGEST_BATCH_SIZE", "many", "a whole number (>= 1)"),
    ("CRM_SYNC_INGEST_PROCESSES", "-1", "a number of processes (0..64)"),
    ("CRM_SYNC_SINK_CONCURRENCY", "0", "a whole number (>= 1)"),
    ("CRM_SYNC_METRICS_PORT", "0", "a port number (1..65535)"),
    ("CRM_SYNC_METRICS_PORT", "65536", "a port number (1..65535)"),
    ("CRM_SYNC_METRICS_PORT", "http", "a port number (1..65535)"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS", "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("KAFKA_SASL_MECHANISM", "GSSAPI", "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"),
    ("CRM_SYNC_LOG_LEVEL", "TRACE", "one of DEBUG, INFO, WARNING, ERROR"),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "on", "a boolean (true/false, 1/0, yes/no)"),
    ("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "2", "a boolean (true/false, 1/0, yes/no)"),
    ("CRM_SYNC_QUOTA_DEFER_RATIO", "95%", "a share between 0 and 1 (e.g. 0.95)"),
    ("CRM_SYNC_QUOTA_DEFER_RATIO", "1.5", "a share between 0 and 1 (e.g. 0.95)"),
    ("CRM_SYNC_QUOTA_DEFER_RATIO", "0", "a share between 0 and 1 (e.g. 0.95)"),
]


@pytest.mark.parametrize(("var", "text", "form"), BAD)
def test_a_bad_value_names_its_variable_and_form_in_one_line(var: str, text: str, form: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({var: text})
    assert str(caught.value) == f"{var}: expected {form}, got {text!r}"
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_the_example_message_from_the_brief() -> None:
    with pytest.raises(ConfigError, match=r"^CRM_SYNC_DELAY_SECONDS: expected a number of seconds \(>= 0\), got 'ten'$"):
        Config.from_env({"CRM_SYNC_DELAY_SECONDS": "ten"})


def test_several_bad_values_are_listed_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"CRM_SYNC_DELAY_SECONDS": "ten", "CRM_SYNC_METRICS_PORT": "0", "CRM_SYNC_LOG_LEVEL": "loud"})
    parts = str(caught.value).split("; ")
    assert sorted(part.split(":")[0] for part in parts) == ["CRM_SYNC_DELAY_SECONDS", "CRM_SYNC_LOG_LEVEL", "CRM_SYNC_METRICS_PORT"]
    assert all(": expected " in part for part in parts)
    assert caught.value.problems == tuple(parts)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("missing", sorted(SASL))
def test_sasl_protocols_need_mechanism_username_and_password(protocol: str, missing: str) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": protocol, **SASL}
    del env[missing]
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    assert str(caught.value).startswith(f"{missing}: expected ")
    assert f"(KAFKA_SECURITY_PROTOCOL is {protocol}), got nothing" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_sasl_configuration_is_read_and_the_password_stays_out_of_repr() -> None:
    config = Config.from_env({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", **SASL, "KAFKA_SASL_MECHANISM": "scram-sha-512"})
    assert (config.security_protocol, config.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (config.sasl_username, config.sasl_password) == ("svc", "hunter2")
    assert "hunter2" not in repr(config)


def test_a_mechanism_without_sasl_protocol_is_allowed() -> None:
    assert Config.from_env({"KAFKA_SASL_MECHANISM": "PLAIN"}).sasl_mechanism == "PLAIN"


def test_config_is_frozen_and_replaceable() -> None:
    config = Config(ledger_keep_hours=48)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.delay_seconds = 1.0  # type: ignore[misc]
    assert dataclasses.replace(config, delay_seconds=1.0).delay_seconds == 1.0


def test_kafka_client_config_moved_out() -> None:
    assert not hasattr(Config, "kafka_client_config")


def _unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Removes the variables and has monkeypatch remove what load_dotenv puts there afterwards."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_dotenv_supplies_values_and_the_real_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        "CRM_SYNC_DELAY_SECONDS=42\nCRM_SYNC_METRICS_PORT=9000\nCRM_SYNC_ALLOW_DEFAULT_CREDENTIALS=yes\n"
        "CRM_SYNC_TOPIC_MEETINGS=dotenv.meetings\n"
    )
    monkeypatch.chdir(tmp_path)
    _unset(monkeypatch, "CRM_SYNC_DELAY_SECONDS", "CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", "CRM_SYNC_TOPIC_MEETINGS")
    monkeypatch.setenv("CRM_SYNC_METRICS_PORT", "9100")
    config = Config.from_env()
    assert (config.delay_seconds, config.allow_default_credentials, config.topics.meetings) == (42.0, True, "dotenv.meetings")
    assert config.metrics_port == 9100


def test_a_mapping_ignores_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("CRM_SYNC_DELAY_SECONDS=42\n")
    monkeypatch.chdir(tmp_path)
    _unset(monkeypatch, "CRM_SYNC_DELAY_SECONDS")
    assert Config.from_env({}).delay_seconds == 600.0


def test_a_bad_dotenv_value_is_reported_like_any_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("CRM_SYNC_SINK_CONCURRENCY=lots\n")
    monkeypatch.chdir(tmp_path)
    _unset(monkeypatch, "CRM_SYNC_SINK_CONCURRENCY")
    with pytest.raises(ConfigError, match="^CRM_SYNC_SINK_CONCURRENCY: expected a whole number"):
        Config.from_env()


def test_schema_registry_credentials_are_read_and_stay_out_of_repr() -> None:
    config = Config.from_env({
        "SCHEMA_REGISTRY_URL": "https://registry.example/apis/ccompat/v7",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "svc:hunter2",
        "SCHEMA_REGISTRY_SSL_CA_LOCATION": "/etc/ssl/registry-ca.pem",
    })
    assert config.schema_registry_basic_auth_user_info == "svc:hunter2"
    assert config.schema_registry_ssl_ca_location == "/etc/ssl/registry-ca.pem"
    assert "hunter2" not in repr(config)


def test_rotated_tokens_are_kept_beside_the_state_unless_a_token_directory_is_named() -> None:
    assert Config.from_env({"CRM_SYNC_STATE_DIR": "/var/state"}).tokens_dir == Path("/var/state/tokens")
    assert Config.from_env({"CRM_SYNC_TOKEN_DIR": "/shared/tokens"}).tokens_dir == Path("/shared/tokens")


def test_oauthbearer_needs_no_user_name_or_password() -> None:
    config = Config.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "oauthbearer"})
    assert (config.sasl_mechanism, config.sasl_username) == ("OAUTHBEARER", None)
