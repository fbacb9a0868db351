"""The upstream publisher API (SPEC §2): how booking services put events on the input topics.

Records are validated before anything is sent (against the Avro schema and against the same contract
checks the worker applies, so a record the worker would dead-letter is refused here), keyed by ``company_id`` so one tenant's events stay in
order, and written idempotently with ``acks=all``. The wire format is Confluent's when a schema registry
is configured, single-object encoding otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processors.config import Topics
from processors.codec import CONFLUENT, SINGLE_OBJECT, Codec, EncodeError, default_codec, registry_client
from processors.domain.model import ValidationError
from processors.domain.records import event_from_record
from schemas import short_name

_TOPIC_OF_SCHEMA = {"MeetingBooked": "meetings", "ResearchCompleted": "research", "SurveyAnswered": "surveys"}
_REQUIRED_PRODUCER_SETTINGS: Mapping[str, tuple[Any, frozenset[str]]] = {
    "enable.idempotence": (True, frozenset({"true"})),
    "acks": ("all", frozenset({"all", "-1"})),
}
_FULL_QUEUE_WAIT_SECONDS = 1.0


def topic_for_schema(topics: Topics, schema_name: str) -> str | None:
    """The input topic of an event schema (short or full name), None for schemas that are not events."""
    attribute = _TOPIC_OF_SCHEMA.get(short_name(schema_name))
    return None if attribute is None else str(getattr(topics, attribute))


@dataclass(frozen=True)
class DeliveryFailure:
    """One record Kafka did not accept; the key is the company id (no personal data)."""

    topic: str
    partition: int | None
    key: str
    reason: str


class PublishError(Exception):
    """Not every record was confirmed by Kafka; ``failures`` and ``unconfirmed`` say how many and why."""

    def __init__(self, reason: str, failures: tuple[DeliveryFailure, ...] = (), unconfirmed: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failures = failures
        self.unconfirmed = unconfirmed


def producer_settings(producer_config: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's producer config plus idempotence and ``acks=all``; a contradicting value is refused."""
    settings = dict(producer_config)
    for key, (wanted, accepted) in _REQUIRED_PRODUCER_SETTINGS.items():
        if key in settings and str(settings[key]).lower() not in accepted:
            raise ValueError(f"{key}={settings[key]!r} is not allowed: the publisher needs {key}={wanted}")
        settings[key] = wanted
    return settings


class EventPublisher:
    """Publishes meeting, research and survey events; call ``flush`` to learn whether Kafka has them."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topics: Topics | None = None,
        codec: Codec | None = None,
        *,
        schema_registry_url: str | None = None,
        schema_registry_basic_auth_user_info: str | None = None,
        schema_registry_ssl_ca_location: str | None = None,
        auto_register_schemas: bool = False,
        use_latest_version: bool = False,
        subject_name_strategy: str = "TopicNameStrategy",
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        """With a registry, confluent-kafka's serializer conventions: `auto_register_schemas` is off
        by default (a production registry is owned by CI or a platform team, which registers the
        schemas; the publisher only looks their ids up), `use_latest_version` writes with the
        subject's latest version, and `subject_name_strategy` is one of Confluent's three."""
        if codec is not None and schema_registry_url is not None:
            raise ValueError("give either a codec or a schema_registry_url, not both")
        if schema_registry_url is not None:
            codec = Codec(
                registry_client(
                    schema_registry_url,
                    basic_auth_user_info=schema_registry_basic_auth_user_info,
                    ssl_ca_location=schema_registry_ssl_ca_location,
                ),
                auto_register=auto_register_schemas,
                use_latest_version=use_latest_version,
                subject_name_strategy=subject_name_strategy,
            )
        self._codec = codec or default_codec()
        self._topics = topics or Topics()
        self._producer = producer_factory(producer_settings(producer_config))
        self._failures: list[DeliveryFailure] = []

    @property
    def encoding(self) -> str:
        """``confluent`` when the codec has a schema registry, else ``single-object``."""
        return CONFLUENT if self._codec.registry is not None else SINGLE_OBJECT

    def publish_meeting_booked(self, record: Mapping[str, Any]) -> None:
        """Publish a ``MeetingBooked`` event to the meetings topic."""
        self.publish("MeetingBooked", record)

    def publish_research_completed(self, record: Mapping[str, Any]) -> None:
        """Publish a ``ResearchCompleted`` event to the research topic."""
        self.publish("ResearchCompleted", record)

    def publish_survey_answered(self, record: Mapping[str, Any]) -> None:
        """Publish a ``SurveyAnswered`` event (either survey kind) to the surveys topic."""
        self.publish("SurveyAnswered", record)

    def publish(self, schema_name: str, record: Mapping[str, Any]) -> None:
        """Validate and enqueue one event; raises ``EncodeError`` (nothing sent) if it does not fit."""
        topic = topic_for_schema(self._topics, schema_name)
        if topic is None:
            raise ValueError(f"{schema_name} is not an event schema with an input topic")
        value = self._codec.encode(schema_name, record)
        decoded = self._codec.decode(value)
        try:
            event_from_record(decoded.schema_name, decoded.value)
        except ValidationError as exc:
            raise EncodeError(
                f"invalid {decoded.schema_name}: {exc}", code="invalid_event", schema_name=decoded.schema_name
            ) from None
        if self.encoding == CONFLUENT:
            value = self._codec.encode_confluent(schema_name, record, subject=self._codec.subject_for(topic, schema_name))
        self._produce(topic, decoded.value["company_id"].encode("utf-8"), value)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every enqueued record; raise ``PublishError`` if any failed or is still unconfirmed."""
        unconfirmed = self._producer.flush(timeout)
        failures, self._failures = tuple(self._failures), []
        if failures or unconfirmed:
            raise PublishError(
                f"{len(failures)} record(s) failed, {unconfirmed} unconfirmed after {timeout}s"
                + (f"; first failure: {failures[0].reason}" if failures else ""),
                failures=failures,
                unconfirmed=unconfirmed,
            )

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            self._send(topic, key, value)
        except BufferError:
            self._producer.poll(_FULL_QUEUE_WAIT_SECONDS)
            try:
                self._send(topic, key, value)
            except BufferError as exc:
                raise PublishError("the local producer queue is full; flush and try again") from exc
        self._producer.poll(0)

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            raise PublishError(f"Kafka refused the record for {topic}: {error.str()}") from exc

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            key = message.key()
            self._failures.append(
                DeliveryFailure(
                    topic=str(message.topic()),
                    partition=message.partition(),
                    key=key.decode("utf-8", "replace") if isinstance(key, bytes) else "",
                    reason=error.str(),
                )
            )
