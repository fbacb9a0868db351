"""The Schema Registry the production way, against the real registry (Apicurio): the publisher
looks schema ids up instead of registering them unless told to, can write with the subject's
latest version, says "not allowed" on a 401, and `crm-sync schemas check` tells CI whether this
version's schemas would be accepted."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest
from confluent_kafka.schema_registry import Schema

from processors.codec import Codec, EncodeError, RegistryRefusedError, registry_client
from processors.config import TOPIC_ENV, Topics
from processors.ops.publisher import EventPublisher
from tests.conftest import SchemaRegistryServer
from tests.integration.harness import ROOT
from tests.integration.test_end_to_end import booking

pytestmark = pytest.mark.integration

START = datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)


def fresh_topics() -> Topics:
    suffix = uuid.uuid4().hex[:8]
    return Topics(**{name: f"conv.{name}.{suffix}" for name in TOPIC_ENV})


def publisher(bootstrap: str, topics: Topics, registry: SchemaRegistryServer, **kw: object) -> EventPublisher:
    return EventPublisher({"bootstrap.servers": bootstrap}, topics, schema_registry_url=registry.url,
                          schema_registry_basic_auth_user_info=registry.user_info, **kw)  # type: ignore[arg-type]


def test_the_publisher_looks_ids_up_by_default_and_registers_only_when_told(kafka_bootstrap: str, schema_registry: SchemaRegistryServer) -> None:
    topics = fresh_topics()
    record = booking(booker="conv@buyer.example", host="h@seller.example", start=START)
    with pytest.raises(EncodeError) as refused:
        publisher(kafka_bootstrap, topics, schema_registry).publish_meeting_booked(record)
    assert refused.value.code == "not_registered" and f"{topics.meetings}-value" in refused.value.reason
    client = registry_client(schema_registry.url, basic_auth_user_info=schema_registry.user_info)
    assert f"{topics.meetings}-value" not in client.get_subjects()  # it registered nothing

    schema_id = client.register_schema(f"{topics.meetings}-value", Codec().declared("MeetingBooked"))
    looked_up = publisher(kafka_bootstrap, topics, schema_registry)
    looked_up.publish_meeting_booked(record)
    looked_up.flush()
    other = fresh_topics()
    registering = publisher(kafka_bootstrap, other, schema_registry, auto_register_schemas=True)
    registering.publish_meeting_booked(record)
    registering.flush()
    assert f"{other.meetings}-value" in client.get_subjects()
    assert client.lookup_schema(f"{topics.meetings}-value", Codec().declared("MeetingBooked")).schema_id == schema_id


def test_use_latest_version_writes_with_the_subject_s_newest_schema(schema_registry: SchemaRegistryServer) -> None:
    client = registry_client(schema_registry.url, basic_auth_user_info=schema_registry.user_info)
    subject = f"latest-{uuid.uuid4().hex[:8]}-value"
    ours = json.loads(Codec().declared("MeetingBooked").schema_str or "")
    client.register_schema(subject, Schema(json.dumps(ours), "AVRO"))
    newer = dict(ours, fields=[*ours["fields"], {"name": "channel", "type": ["null", "string"], "default": None}])
    newest_id = client.register_schema(subject, Schema(json.dumps(newer), "AVRO"))
    codec = Codec(client, use_latest_version=True)
    record = booking(booker="latest@buyer.example", host="h@seller.example", start=START)
    raw = codec.encode_confluent("MeetingBooked", record, subject)
    assert int.from_bytes(raw[1:5], "big") == newest_id
    assert Codec(client).decode(raw).value["event_id"] == record["event_id"]


def test_a_401_from_the_registry_says_not_allowed(schema_registry: SchemaRegistryServer) -> None:
    wrong = registry_client(schema_registry.url, basic_auth_user_info="crm-sync:not-the-password")
    with pytest.raises(RegistryRefusedError) as refused:
        Codec(wrong).encode_confluent("MeetingBooked", booking(booker="x@y.example", host="h@z.example", start=START), "any-value")
    assert "not allowed (HTTP 401" in refused.value.reason and "unavailable" not in refused.value.reason
    assert "not-the-password" not in refused.value.reason


def run_check(env: dict[str, str], registry: SchemaRegistryServer, topics: Topics) -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in env.items() if not k.startswith("CRM_SYNC_")}, **{TOPIC_ENV[n]: getattr(topics, n) for n in TOPIC_ENV},
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": registry.user_info}
    return subprocess.run([sys.executable, "-m", "processors.ops.cli", "schemas", "check", "--registry", registry.url],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_schemas_check_tells_ci_whether_this_version_would_be_accepted(schema_registry: SchemaRegistryServer) -> None:
    import os

    topics = fresh_topics()
    fresh = run_check(dict(os.environ), schema_registry, topics)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.count("not registered yet") == 3

    client = registry_client(schema_registry.url, basic_auth_user_info=schema_registry.user_info)
    ours = json.loads(Codec().declared("MeetingBooked").schema_str or "")
    client.register_schema(f"{topics.meetings}-value", Schema(json.dumps(ours), "AVRO"))
    fine = run_check(dict(os.environ), schema_registry, topics)
    assert fine.returncode == 0 and f"ok   {topics.meetings}-value (MeetingBooked): compatible with version 1" in fine.stdout

    clash = dict(ours, fields=[dict(f, type="long") if f["name"] == "meeting_id" else f for f in ours["fields"]])
    survey_subject = f"{topics.surveys}-value"
    client.register_schema(survey_subject, Schema(json.dumps(dict(clash, name="SurveyAnswered")), "AVRO"))
    client.set_compatibility(survey_subject, "BACKWARD")
    refused = run_check(dict(os.environ), schema_registry, topics)
    assert refused.returncode == 2
    assert f"FAIL {survey_subject} (SurveyAnswered): NOT compatible" in refused.stdout
    assert refused.stderr.strip() == "crm-sync: error: 1 of 3 subjects would refuse this version's schemas"
