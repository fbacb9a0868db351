"""The release stage's wiring, in process with a fake send: one releaser per retry tier, an action
released after a pause goes on with a give-up clock that did not count the pause (old action
versions, without a first due time, too), and a repark carries the clock on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import processors.stages.release as release_stage
from processors.codec import Codec
from processors.config import Config
from processors.domain.deliver import DEFER, DEFERRED, GIVE_UP, Outcome, RetryRules, route
from processors.domain.model import CompanySettings
from processors.domain.records import action_from_record, action_headers, action_to_record
from processors.domain.release import Held
from processors.metrics import Metrics
from processors.stages.common import StageContext
from tests.unit.test_routing import FIRST_DUE, HOUR, action

DAY = 24 * HOUR
RULES = RetryRules(give_up_ms=DAY, backoff=lambda attempt: 10.0, retry_after_cap=900.0)


class Settings:
    def company(self, company_id: str) -> CompanySettings | None:
        return None

    def meeting_type(self, company_id: str, meeting_type_id: str) -> None:
        return None


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None, partition: int | None = None) -> Any:
        assert value is not None
        self.records.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def stage(monkeypatch: pytest.MonkeyPatch, now: int) -> tuple[list[Any], Sent, Codec]:
    monkeypatch.setattr(release_stage, "now_ms", lambda: now)
    codec, sent = Codec(), Sent()
    ctx = StageContext(config=Config(), codec=codec, settings=Settings(), metrics=Metrics.create(), send=sent, history_partitions=1)  # type: ignore[arg-type]
    return release_stage.make_releasers(ctx), sent, codec


def test_the_delay_topic_and_each_retry_tier_have_a_releaser_of_their_own() -> None:
    config = Config()
    releasers = release_stage.make_releasers(
        StageContext(config=config, codec=Codec(), settings=Settings(), metrics=Metrics.create(), send=Sent(), history_partitions=1)  # type: ignore[arg-type]
    )
    t = config.topics
    assert [r.topics for r in releasers] == [(t.delay,), (t.retry,), (t.retry_medium,), (t.retry_long,)]
    assert len({r.group_id for r in releasers}) == 4


@pytest.mark.parametrize("first_due_at", [FIRST_DUE, None], ids=["current", "older version without first_due_at"])
def test_an_action_released_after_a_pause_longer_than_the_give_up_window_is_retried_not_given_up(
    monkeypatch: pytest.MonkeyPatch, first_due_at: int | None
) -> None:
    parked_at, now = FIRST_DUE + HOUR, FIRST_DUE + 3 * DAY  # paused for three days, give-up after one
    [delay, *_], sent, codec = stage(monkeypatch, now)
    original = action(first_due_at=first_due_at)
    held = Held.of(0, action_headers(original), codec.encode("Action", action_to_record(original)), parked_at)
    held.parked_at = parked_at

    asyncio.run(_emit(delay._emit, held))

    [(topic, value)] = sent.records
    assert topic == Config().topics.due_salesforce
    released = action_from_record(codec.decode(value).value)
    assert released.give_up_clock == FIRST_DUE + (now - parked_at)  # only the deliverable hour counts
    assert route(released, Outcome(DEFERRED, reason="rate_limited"), now, RULES).kind == DEFER
    assert route(original, Outcome(DEFERRED, reason="rate_limited"), now, RULES).kind == GIVE_UP  # what counting the pause did


def test_a_repark_carries_the_parked_time_on_and_a_never_parked_action_goes_out_as_read(monkeypatch: pytest.MonkeyPatch) -> None:
    now = FIRST_DUE + 2 * HOUR
    [delay, *_], sent, codec = stage(monkeypatch, now)
    value = codec.encode("Action", action_to_record(action()))
    parked = Held.of(0, action_headers(action()), value, now)
    parked.parked_at = FIRST_DUE + HOUR
    asyncio.run(_emit(delay._repark, parked))
    fresh = Held.of(1, action_headers(action()), value, now)
    asyncio.run(_emit(delay._emit, fresh))

    (retry_topic, reparked), (_, released) = sent.records
    assert retry_topic == Config().topics.retry
    assert action_from_record(codec.decode(reparked).value).give_up_clock == FIRST_DUE + HOUR
    assert released == value


async def _emit(via: Any, held: Held) -> None:
    await (await via(held))
