"""`crm-sync topics print`: every topic crm-sync owns, with the configs the design relies on, in
the two forms platform teams take; never the upstream inputs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from processors.config import Config
from processors.kafka.topics import internal_specs, manifest, min_insync_replicas, topic_specs


@pytest.mark.parametrize(("replicas", "isr"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_min_insync_replicas_leaves_one_broker_of_margin_from_three(replicas: int, isr: int) -> None:
    assert min_insync_replicas(replicas) == isr


def test_the_internal_topics_are_every_topic_but_the_inputs_each_with_min_insync() -> None:
    config = dataclasses.replace(Config(), replication_factor=3)
    specs = internal_specs(config)
    assert set(specs) == set(topic_specs(config)) - set(config.topics.inputs)
    assert all(spec["min.insync.replicas"] == "2" for spec in specs.values())
    assert specs[config.topics.settings]["cleanup.policy"] == "compact"


def test_strimzi_resources_name_each_topic_with_its_partitions_replicas_and_configs() -> None:
    config = dataclasses.replace(Config(), replication_factor=3, topic_partitions=12)
    docs = list(yaml.safe_load_all(manifest(config, "strimzi", cluster="prod")))
    assert {d["spec"]["topicName"] for d in docs} == set(internal_specs(config))
    for doc in docs:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2" and doc["kind"] == "KafkaTopic"
        assert doc["metadata"]["labels"] == {"strimzi.io/cluster": "prod"}
        assert doc["metadata"]["name"].replace("-", "").isalnum() and doc["metadata"]["name"].islower()
        assert (doc["spec"]["partitions"], doc["spec"]["replicas"]) == (12, 3)
        assert doc["spec"]["config"] == internal_specs(config)[doc["spec"]["topicName"]]


def test_kafka_topics_commands_are_one_idempotent_create_per_topic() -> None:
    config = Config()
    lines = manifest(config, "kafka-topics").splitlines()
    assert len(lines) == len(internal_specs(config))
    assert all(" --create --if-not-exists --topic " in line for line in lines)
    assert not [line for line in lines if any(f"--topic {t} " in line for t in config.topics.inputs)]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="strimzi or kafka-topics"):
        manifest(Config(), "terraform")
