"""publisher.py: what an upstream service sees when it publishes events (SPEC §2 topic contract)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

import pytest

from processors.codec import Codec, EncodeError
from processors.ops.publisher import EventPublisher, PublishError, Topics, producer_settings

START = datetime(2026, 11, 24, 1, 30, tzinfo=timezone.utc)


class FakeError:
    def str(self) -> str:
        return "Broker: Topic authorization failed"


class FakeMessage:
    def __init__(self, topic: str, key: bytes) -> None:
        self._topic, self._key = topic, key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def key(self) -> bytes:
        return self._key


class FakeProducer:
    """Records what would have been sent; `fail` makes the broker refuse every record."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = False
        self._pending: list[tuple[Callable[..., None], FakeMessage]] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Callable[..., None]) -> None:
        self.sent.append((topic, key, value))
        self._pending.append((on_delivery, FakeMessage(topic, key)))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for callback, message in self._pending:
            callback(FakeError() if self.fail else None, message)
        self._pending.clear()
        return 0


def make() -> tuple[EventPublisher, FakeProducer]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config))
        return made[0]

    publisher = EventPublisher({"bootstrap.servers": "x:9092"}, Topics(meetings="m", research="r", surveys="s"),
                               producer_factory=factory)  # type: ignore[arg-type]
    return publisher, made[0]


def booking(**overrides: Any) -> dict[str, Any]:
    record = {
        "event_id": "evt-1",
        "occurred_at": START,
        "company_id": "株式会社acme",
        "meeting_type_id": "intro",
        "meeting_id": "m-1",
        "meeting_type_name": "Intro",
        "host": {"email": "host@seller.example", "name": "Host"},
        "booker": {"email": "booker@buyer.example", "name": "Booker"},
        "start_at": START,
        "end_at": START,
        "timezone": "Asia/Tokyo",
    }
    record.update(overrides)
    return record


def survey(**overrides: Any) -> dict[str, Any]:
    record = {
        "event_id": "evt-2",
        "occurred_at": 1_795_000_000_000,
        "company_id": "acme",
        "meeting_type_id": "intro",
        "survey_kind": "PRE_EXIT",
        "respondent": {"email": "r@buyer.example", "name": "R"},
        "answers": [{"question": "Why?", "answer": "Later"}],
    }
    record.update(overrides)
    return record


def test_each_event_goes_to_its_topic_keyed_by_company_and_reads_back():
    publisher, producer = make()
    publisher.publish_meeting_booked(booking())
    publisher.publish_research_completed(
        {"event_id": "evt-3", "occurred_at": START, "company_id": "acme", "meeting_type_id": "intro",
         "research_kind": "COMPANY", "target": {"email": "t@buyer.example", "name": "T"}, "result": "ok"}
    )
    publisher.publish_survey_answered(survey())
    publisher.flush()

    assert [(topic, key) for topic, key, _ in producer.sent] == [
        ("m", "株式会社acme".encode()), ("r", b"acme"), ("s", b"acme"),
    ]
    decoded = Codec().decode(producer.sent[0][2])
    assert decoded.schema_name == "MeetingBooked"
    assert decoded.value["start_at"] == int(START.timestamp() * 1000)
    assert producer.sent[0][2][:2] == b"\xc3\x01"  # single-object encoding without a registry
    assert publisher.encoding == "single-object"


@pytest.mark.parametrize(
    "record,reason",
    [
        (booking(start_at="tomorrow"), "start_at"),
        ({k: v for k, v in booking().items() if k != "booker"}, "booker: required field missing"),
        (booking(colour="red"), "unknown field"),
        (booking(booker={"email": "not-an-address", "name": "B"}), "booker.email is not an e-mail address"),
        (booking(timezone="Mars/Olympus"), "not an IANA time zone"),
        (booking(end_at=datetime(2026, 11, 24, 1, 0, tzinfo=timezone.utc)), "end_at is before start_at"),
        (booking(event_id="  "), "required field is empty: event_id"),
    ],
    ids=["wrong-type", "missing", "unknown-field", "bad-email", "bad-timezone", "end-before-start", "blank-id"],
)
def test_an_invalid_record_raises_encode_error_and_sends_nothing(record, reason):
    publisher, producer = make()
    with pytest.raises(EncodeError, match=reason):
        publisher.publish_meeting_booked(record)
    publisher.flush()
    assert producer.sent == []


def test_a_valid_record_after_an_invalid_one_is_still_sent():
    publisher, producer = make()
    with pytest.raises(EncodeError):
        publisher.publish_survey_answered(survey(survey_kind="DURING"))
    publisher.publish_survey_answered(survey())
    publisher.flush()
    assert len(producer.sent) == 1


def test_a_schema_that_is_not_an_event_is_refused():
    publisher, producer = make()
    with pytest.raises(ValueError, match="not an event schema"):
        publisher.publish("CompanySettings", {"company_id": "acme"})
    assert producer.sent == []


def test_flush_reports_records_the_broker_refused():
    publisher, producer = make()
    producer.fail = True
    publisher.publish_survey_answered(survey())
    with pytest.raises(PublishError, match="1 record\\(s\\) failed.*Topic authorization failed") as raised:
        publisher.flush()
    assert [(f.topic, f.key) for f in raised.value.failures] == [("s", "acme")]
    producer.fail = False
    publisher.flush()  # failures are reported once


def test_the_producer_is_always_idempotent_with_acks_all():
    assert producer_settings({"bootstrap.servers": "x"}) == {
        "bootstrap.servers": "x", "enable.idempotence": True, "acks": "all",
    }
    assert producer_settings({"acks": -1})["acks"] == "all"
    with pytest.raises(ValueError, match="acks=1 is not allowed"):
        producer_settings({"acks": 1})
    with pytest.raises(ValueError, match="enable.idempotence"):
        producer_settings({"enable.idempotence": False})
