"""The configuration object: every topic has its variable, and the stages' group options."""

from __future__ import annotations

from processors.config import TOPIC_ENV, Config, Topics
from processors.model import Crm
from processors.runtime import group_options


def test_every_topic_is_configurable_by_its_variable() -> None:
    env = {var: f"custom.{name}" for name, var in TOPIC_ENV.items()}
    topics = Config.from_env(env).topics
    assert {name: getattr(topics, name) for name in TOPIC_ENV} == {name: f"custom.{name}" for name in TOPIC_ENV}
    assert set(TOPIC_ENV) == set(Topics.__dataclass_fields__)


def test_due_and_ledger_topics_per_crm() -> None:
    t = Topics()
    assert (t.due(Crm.SALESFORCE), t.ledger(Crm.SALESFORCE)) == ("crm-sync.actions.salesforce.v1", "crm-sync.ledger.salesforce.v1")
    assert (t.due(Crm.HUBSPOT), t.ledger(Crm.HUBSPOT)) == ("crm-sync.actions.hubspot.v1", "crm-sync.ledger.hubspot.v1")


def test_static_membership_only_when_an_instance_id_is_given() -> None:
    assert "group_instance_id" not in group_options(Config.from_env({}))
    options = group_options(Config.from_env({"CRM_SYNC_GROUP_INSTANCE_ID": "worker-0"}))
    assert options["group_instance_id"] == "worker-0"
    assert options["security_protocol"] == "PLAINTEXT"


def test_stage_defaults() -> None:
    config = Config.from_env({})
    assert (config.ingest_batch_size, config.ledger_keep_hours, config.paused_repark_seconds) == (1000, 168.0, 3600.0)
    assert Config.from_env({"CRM_SYNC_PAUSED_REPARK_SECONDS": "60"}).paused_repark_seconds == 60.0
