"""`processors.stages.ingest.prepare` and `until_prepared`: what runs in the worker's process or in
an ingest process (issue 16), without a broker: records in order, dead letters as data, a
registry outage stopping at the record it hit, plain values that pickle, and the Action map check."""

from __future__ import annotations

import asyncio
import pickle
import time
from typing import Any, Sequence

import pytest

from connectors.retry import RetryPolicy
from processors.codec import Codec, EncodeError, RegistryUnavailableError
from processors.domain.deadletter import Source
from processors.domain.model import CompanySettings, Crm, EventToggles, MeetingTypeSettings
from processors.domain.records import action_from_record, headers_of
from processors.stages import common
from processors.stages.ingest import Prepared, prepare, until_prepared

DELAY_MS = 600_000
CODEC = Codec()


class Settings:
    def __init__(self, connected: bool = True) -> None:
        self.co = CompanySettings("acme", connected, connected)
        self.mt = MeetingTypeSettings("acme", "intro", salesforce_todo=EventToggles(meeting_booked=True),
                                      hubspot_sync=EventToggles(meeting_booked=True))

    def company(self, company_id: str) -> CompanySettings | None:
        return self.co if company_id == "acme" else None

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        return self.mt if company_id == "acme" else None


def booking(i: int, company: str = "acme") -> bytes:
    now = int(time.time() * 1000)
    return CODEC.encode("MeetingBooked", {
        "event_id": f"evt-{i}", "occurred_at": now, "company_id": company, "meeting_type_id": "intro",
        "meeting_id": f"m-{i}", "meeting_type_name": "Intro", "host": {"email": "host@seller.example", "name": "Host"},
        "booker": {"email": f"b{i}@buyer.example", "name": "Booker"}, "start_at": now + 86_400_000,
        "end_at": now + 88_200_000, "timezone": "Asia/Tokyo", "form_answers": [],
    })


def source(offset: int, value: bytes | None) -> Source:
    return Source("meetings", 0, offset, b"acme", value)


def test_records_are_prepared_in_order_with_encoded_actions_that_decode_back() -> None:
    sources = [source(i, booking(i)) for i in range(3)]
    prepared, unavailable = prepare(CODEC, Settings(), sources, DELAY_MS)
    assert unavailable is None
    assert [p.event_id for p in prepared] == ["evt-0", "evt-1", "evt-2"]
    for done in prepared:
        assert [a.crm for a in done.actions] == [Crm.SALESFORCE.value, Crm.HUBSPOT.value]
        for planned in done.actions:
            action = action_from_record(CODEC.decode(planned.value).value)
            assert (action.action_id, action.company_id, action.due_at) == (planned.action_id, planned.company_id, planned.due_at)
            assert action.due_at == action.occurred_at + DELAY_MS
            assert dict(headers_of(planned.due_at, planned.crm, planned.company_id, planned.action_id, planned.event_id,
                                   done.event_type))["action_id"] == action.action_id.encode()


def test_bad_input_and_skips_are_data_in_the_record_s_place() -> None:
    sources = [source(0, b"\x00garbage"), source(1, None), source(2, booking(2, company="nobody")), source(3, booking(3))]
    prepared, unavailable = prepare(CODEC, Settings(), sources, DELAY_MS)
    assert unavailable is None
    assert [p.invalid_reason for p in prepared[:2]] == ["no_registry", "empty"]
    assert all(p.letter is not None and p.letter["source_offset"] == i for i, p in enumerate(prepared[:2]))
    assert prepared[2].letter is None and prepared[2].skips == (("any", "no_settings"),) and prepared[2].actions == ()
    assert len(prepared[3].actions) == 2


def test_disconnected_crms_are_skips_with_their_crm() -> None:
    [done], _ = prepare(CODEC, Settings(connected=False), [source(0, booking(0))], DELAY_MS)
    assert done.skips == (("salesforce", "integration_disabled"), ("hubspot", "integration_disabled"))


def test_a_planning_failure_is_a_plan_dead_letter_not_an_invalid_record() -> None:
    class Broken(Settings):
        def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
            raise RuntimeError("settings exploded")

    [done], _ = prepare(CODEC, Broken(), [source(0, booking(0))], DELAY_MS)
    assert done.letter is not None and done.invalid_reason is None
    assert (done.letter["stage"], done.letter["message"]) == ("plan", "settings exploded")


def test_a_registry_outage_stops_at_the_record_it_hit() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def decode(self, data: bytes, *, topic: str | None = None) -> Any:
            self.calls += 1
            if self.calls == 2:
                raise RegistryUnavailableError("registry down", code="registry_unavailable")
            return CODEC.decode(data)

        def encode(self, name: str, record: Any) -> bytes:
            return CODEC.encode(name, record)

    prepared, unavailable = prepare(Flaky(), Settings(), [source(i, booking(i)) for i in range(3)], DELAY_MS)  # type: ignore[arg-type]
    assert [p.event_id for p in prepared] == ["evt-0"]
    assert unavailable == "registry down"


def test_until_prepared_waits_out_the_registry_and_goes_on_from_that_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "REGISTRY_POLICY", RetryPolicy(base=0.001, cap=0.001, max_elapsed=None))
    sources = [source(i, booking(i)) for i in range(4)]
    asked: list[list[int]] = []

    async def run(chunk: Sequence[Source]) -> tuple[list[Prepared], str | None]:
        asked.append([s.offset for s in chunk])
        if len(asked) == 1:
            done, _ = prepare(CODEC, Settings(), chunk[:2], DELAY_MS)
            return done, "registry down"
        return prepare(CODEC, Settings(), chunk, DELAY_MS)

    prepared = asyncio.run(until_prepared(run, sources))
    assert asked == [[0, 1, 2, 3], [2, 3]]
    assert [p.event_id for p in prepared] == ["evt-0", "evt-1", "evt-2", "evt-3"]


def test_what_crosses_from_an_ingest_process_pickles_to_the_same_values() -> None:
    prepared, _ = prepare(CODEC, Settings(), [source(0, booking(0)), source(1, b"\x00x")], DELAY_MS)
    assert pickle.loads(pickle.dumps(prepared)) == prepared


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"Subject": "\ud800"}, "properties['Subject']: not encodable as UTF-8"),
        ({"Subject": 1}, "properties['Subject']: expected string"),
        ({1: "x"}, "with string keys"),
    ],
)
def test_the_properties_map_check_names_the_bad_entry(properties: dict[Any, Any], reason: str) -> None:
    [done], _ = prepare(CODEC, Settings(), [source(0, booking(0))], DELAY_MS)
    record = CODEC.decode(done.actions[0].value).value
    with pytest.raises(EncodeError) as raised:
        CODEC.encode("Action", {**record, "properties": properties})
    assert reason in raised.value.reason


def test_the_properties_map_check_accepts_japanese_and_copies() -> None:
    [done], _ = prepare(CODEC, Settings(), [source(0, booking(0))], DELAY_MS)
    record = CODEC.decode(done.actions[0].value).value
    properties = {"Subject": "面談予約のお知らせ", "Description": "日時: 明日"}
    assert CODEC.decode(CODEC.encode("Action", {**record, "properties": properties})).value["properties"] == properties
