"""The ingest stage's hand-over, in process with a fake send: an action already due when planned goes
to the first retry tier (the releasers' pause gate), never straight to a due topic; one that is not
due yet to the delay topic; and a record the broker refuses for its size in the delivery report is
dead-lettered instead of failing the batch forever."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.structs import ConsumerRecord

from processors.codec import Codec
from processors.config import Config
from processors.domain.model import CompanySettings, EventToggles, MeetingTypeSettings
from processors.kafka.sender import RecordTooLarge
from processors.metrics import Metrics
from processors.stages.common import StageContext
from processors.stages.ingest import make_ingest

CONFIG = Config()
ON = EventToggles(meeting_booked=True)


class Settings:
    ready = True

    def company(self, company_id: str) -> CompanySettings | None:
        return CompanySettings(company_id=company_id, salesforce_connected=True, hubspot_connected=True)

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        return MeetingTypeSettings(company_id=company_id, meeting_type_id=meeting_type_id, salesforce_todo=ON, hubspot_sync=ON)


class Sent:
    """Every record sent; sends to `refuse` get an ack that fails as a broker's size refusal would."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.records: list[tuple[str, dict[str, bytes]]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None, partition: int | None = None) -> Any:
        self.records.append((topic, dict(headers or ())))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic == self.refuse:
            ack.set_exception(RecordTooLarge(topic, 1_010_000))
        else:
            ack.set_result(None)
        return ack

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.records]


def booking_record(codec: Codec, occurred_at: int, offset: int = 7) -> ConsumerRecord:
    start = occurred_at + 86_400_000
    value = codec.encode("MeetingBooked", {
        "event_id": f"evt-{offset}", "occurred_at": occurred_at, "company_id": "acme", "meeting_type_id": "intro",
        "meeting_id": "m-1", "meeting_type_name": "Intro", "host": {"email": "host@seller.example", "name": "Host"},
        "booker": {"email": "bo@buyer.example", "name": "Bo"}, "start_at": start, "end_at": start + 1_800_000,
        "timezone": "Asia/Tokyo", "form_answers": [],
    })
    return ConsumerRecord(topic=CONFIG.topics.meetings, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=b"acme",
                          value=value, checksum=None, serialized_key_size=4, serialized_value_size=len(value), headers=())


def ingest(sent: Sent, *records: ConsumerRecord) -> None:
    ctx = StageContext(config=CONFIG, codec=Codec(), settings=Settings(), metrics=Metrics.create(), send=sent, history_partitions=1)  # type: ignore[arg-type]
    stage = make_ingest(ctx)[0]
    asyncio.run(stage._handle(list(records)))


def now_ms() -> int:
    return int(time.time() * 1000)


def test_an_action_already_due_when_planned_goes_to_the_first_retry_tier_never_to_a_due_topic() -> None:
    sent = Sent()
    ingest(sent, booking_record(Codec(), now_ms() - 15 * 60_000))
    assert sent.topics() == [CONFIG.topics.retry, CONFIG.topics.retry]
    for _, headers in sent.records:
        assert int(headers["planned_at"]) > int(headers["due_at"])  # lateness counts from the planning


def test_an_action_not_yet_due_waits_on_the_delay_topic() -> None:
    sent = Sent()
    ingest(sent, booking_record(Codec(), now_ms()))
    assert sent.topics() == [CONFIG.topics.delay, CONFIG.topics.delay]
    assert all("planned_at" not in headers for _, headers in sent.records)


def test_a_size_refusal_in_the_delivery_report_dead_letters_the_input_record_and_the_batch_completes() -> None:
    sent = Sent(refuse=CONFIG.topics.delay)
    ingest(sent, booking_record(Codec(), now_ms(), offset=41))
    assert sent.topics() == [CONFIG.topics.delay, CONFIG.topics.delay, CONFIG.topics.dead_letter, CONFIG.topics.dead_letter_index]
