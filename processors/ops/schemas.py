"""`crm-sync schemas check`: would the schemas of this version be accepted by a registry? For CI
pipelines where a platform team runs the registry and producers do not auto-register.

For each input topic, the subject its naming strategy names is asked whether today's schema is
compatible with it (the registry's own compatibility rule for that subject). A subject that does
not exist yet is reported as such: its first registration will be version 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from processors.codec import Codec
from processors.config import Topics
from processors.domain.ingest import INPUT_SCHEMAS
from processors.ops.publisher import topic_for_schema


@dataclass(frozen=True)
class SubjectCheck:
    subject: str
    schema_name: str
    ok: bool
    verdict: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.subject} ({self.schema_name}): {self.verdict}"


def check(registry: SchemaRegistryClient, topics: Topics, subject_name_strategy: str = "TopicNameStrategy") -> list[SubjectCheck]:
    codec = Codec(registry, subject_name_strategy=subject_name_strategy)
    out: list[SubjectCheck] = []
    try:
        subjects = set(registry.get_subjects())
    except SchemaRegistryError as exc:
        if exc.http_status_code in (401, 403):
            raise PermissionError(f"the schema registry refused to list subjects: not allowed (HTTP {exc.http_status_code})") from None
        raise
    for schema_name in sorted(INPUT_SCHEMAS):
        topic = topic_for_schema(topics, schema_name)
        assert topic is not None
        subject = codec.subject_for(topic, schema_name)
        if subject not in subjects:
            out.append(SubjectCheck(subject, schema_name, True, "not registered yet: its first registration will be version 1"))
            continue
        try:
            compatible = registry.test_compatibility(subject, codec.declared(schema_name))
        except SchemaRegistryError as exc:
            out.append(SubjectCheck(subject, schema_name, False, f"the registry answered HTTP {exc.http_status_code}: {exc.error_message}"))
            continue
        try:
            level = registry.get_compatibility(subject)
        except SchemaRegistryError:
            level = "the registry's default"
        latest = registry.get_latest_version(subject).version
        verdict = f"compatible with version {latest} ({level})" if compatible else f"NOT compatible with version {latest} ({level})"
        out.append(SubjectCheck(subject, schema_name, compatible, verdict))
    return out
