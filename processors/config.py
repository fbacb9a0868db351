"""The one configuration object: environment variables (SPEC §10) with documented defaults.

A `.env` file in the working directory may supply variables; real environment variables win.
Names in SPEC §10 are a contract with deployments: add new ones, never rename.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from processors.model import Crm

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def _load_dotenv() -> None:
    path = Path(".env")
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


@dataclass(frozen=True)
class Topics:
    """Topic names; inputs and settings are the upstream contract, the rest are internal."""

    meetings: str = "scheduling.meetings.v1"
    research: str = "scheduling.research.v1"
    surveys: str = "scheduling.surveys.v1"
    settings: str = "crm-sync.settings.v1"
    dead_letter: str = "crm-sync.dead-letter.v1"
    delay: str = "crm-sync.actions.delay.v1"
    due_salesforce: str = "crm-sync.actions.salesforce.v1"
    due_hubspot: str = "crm-sync.actions.hubspot.v1"
    history: str = "crm-sync.history.v1"
    retry: str = "crm-sync.actions.retry.v1"
    ledger_salesforce: str = "crm-sync.ledger.salesforce.v1"
    ledger_hubspot: str = "crm-sync.ledger.hubspot.v1"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.meetings, self.research, self.surveys)

    def due(self, crm: Crm) -> str:
        return self.due_salesforce if crm is Crm.SALESFORCE else self.due_hubspot

    def ledger(self, crm: Crm) -> str:
        return self.ledger_salesforce if crm is Crm.SALESFORCE else self.ledger_hubspot


TOPIC_ENV = {
    "meetings": "CRM_SYNC_TOPIC_MEETINGS",
    "research": "CRM_SYNC_TOPIC_RESEARCH",
    "surveys": "CRM_SYNC_TOPIC_SURVEYS",
    "settings": "CRM_SYNC_TOPIC_SETTINGS",
    "dead_letter": "CRM_SYNC_TOPIC_DEAD_LETTER",
    "delay": "CRM_SYNC_TOPIC_DELAY",
    "due_salesforce": "CRM_SYNC_TOPIC_DUE_SALESFORCE",
    "due_hubspot": "CRM_SYNC_TOPIC_DUE_HUBSPOT",
    "history": "CRM_SYNC_TOPIC_HISTORY",
    "retry": "CRM_SYNC_TOPIC_RETRY",
    "ledger_salesforce": "CRM_SYNC_TOPIC_LEDGER_SALESFORCE",
    "ledger_hubspot": "CRM_SYNC_TOPIC_LEDGER_HUBSPOT",
}


@dataclass(frozen=True)
class Config:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    schema_registry_url: str | None = None
    delay_seconds: float = 600.0
    topics: Topics = field(default_factory=Topics)
    topic_partitions: int = 6
    replication_factor: int = 1
    secrets_dir: Path = Path("./secrets")
    metrics_port: int = 9464
    ca_bundle: str | None = None
    app_id: str = "crm-sync"
    state_dir: Path = Path("./.run/state")
    log_level: str = "INFO"
    delay_lookahead_seconds: float = 60.0
    paused_repark_seconds: float = 3600.0
    sink_give_up_seconds: float = 86_400.0
    sink_inline_retry_seconds: float = 10.0
    sink_batch_size: int = 200
    ledger_keep_hours: float = 168.0
    group_instance_id: str | None = None
    ingest_batch_size: int = 1000
    sink_batch_window_seconds: float = 0.2
    sink_concurrency: int = 16
    salesforce_rate_per_second: float = 20.0
    hubspot_rate_per_second: float = 9.0
    salesforce_action_id_field: str | None = None
    hubspot_action_id_property: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        if env is None:
            _load_dotenv()
            env = os.environ

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else default

        topics = Topics(**{name: get(var, getattr(Topics, name)) for name, var in TOPIC_ENV.items()})
        return cls(
            bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
            security_protocol=get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=get("KAFKA_SASL_MECHANISM"),
            sasl_username=get("KAFKA_SASL_USERNAME"),
            sasl_password=get("KAFKA_SASL_PASSWORD"),
            ssl_ca_location=get("KAFKA_SSL_CA_LOCATION"),
            schema_registry_url=get("SCHEMA_REGISTRY_URL"),
            delay_seconds=float(get("CRM_SYNC_DELAY_SECONDS", "600")),
            topics=topics,
            topic_partitions=int(get("CRM_SYNC_TOPIC_PARTITIONS", "6")),
            replication_factor=int(get("CRM_SYNC_REPLICATION_FACTOR", "1")),
            secrets_dir=Path(get("CRM_SYNC_SECRETS_DIR", "./secrets")),
            metrics_port=int(get("CRM_SYNC_METRICS_PORT", "9464")),
            ca_bundle=get("CRM_SYNC_CA_BUNDLE"),
            app_id=get("CRM_SYNC_APP_ID", "crm-sync"),
            state_dir=Path(get("CRM_SYNC_STATE_DIR", "./.run/state")),
            log_level=get("CRM_SYNC_LOG_LEVEL", "INFO"),
            delay_lookahead_seconds=float(get("CRM_SYNC_DELAY_LOOKAHEAD_SECONDS", "60")),
            paused_repark_seconds=float(get("CRM_SYNC_PAUSED_REPARK_SECONDS", "3600")),
            sink_give_up_seconds=float(get("CRM_SYNC_SINK_RETRY_SECONDS", "86400")),
            sink_inline_retry_seconds=float(get("CRM_SYNC_SINK_INLINE_RETRY_SECONDS", "10")),
            sink_batch_size=int(get("CRM_SYNC_SINK_BATCH_SIZE", "200")),
            ledger_keep_hours=float(get("CRM_SYNC_LEDGER_KEEP_HOURS", "168")),
            group_instance_id=get("CRM_SYNC_GROUP_INSTANCE_ID"),
            ingest_batch_size=int(get("CRM_SYNC_INGEST_BATCH_SIZE", "1000")),
            sink_batch_window_seconds=float(get("CRM_SYNC_SINK_BATCH_WINDOW_SECONDS", "0.2")),
            sink_concurrency=int(get("CRM_SYNC_SINK_CONCURRENCY", "16")),
            salesforce_rate_per_second=float(get("CRM_SYNC_SALESFORCE_RATE", "20")),
            hubspot_rate_per_second=float(get("CRM_SYNC_HUBSPOT_RATE", "9")),
            salesforce_action_id_field=get("CRM_SYNC_SALESFORCE_ACTION_ID_FIELD"),
            hubspot_action_id_property=get("CRM_SYNC_HUBSPOT_ACTION_ID_PROPERTY"),
        )

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings for every client of ours."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            # librdkafka's info lines (e.g. BGQUEUE on close) would break the CLI's one-line stderr.
            "log_level": 4,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf
