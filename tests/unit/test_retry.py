"""Backoff math, the async retry loop and the token bucket, without real sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from connectors.errors import AuthError, PermanentError, TransientError
from connectors.retry import RetryPolicy, TokenBucket, TokenBuckets, call_with_retry, delay_for


def transient(retry_after: float | None = None) -> TransientError:
    return TransientError("hubspot", "HTTP_503", 503, "unavailable", (), retry_after)


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    ceilings = [policy.backoff(attempt, rng=lambda: 1.0) for attempt in range(1, 9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.backoff(5, rng=lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    "policy, attempt, draw, expected",
    [
        (RetryPolicy(base=1.0, cap=10.0), 1, 0.5, 0.5),
        (RetryPolicy(base=1.0, cap=10.0), 3, 0.5, 2.0),
        (RetryPolicy(base=1.0, cap=10.0), 4, 1.0, 8.0),
        (RetryPolicy(base=1.0, cap=10.0), 5, 1.0, 10.0),
        (RetryPolicy(base=1.0, cap=10.0), 5, 0.25, 2.5),
        (RetryPolicy(base=5.0, cap=900.0), 9, 1.0, 900.0),  # a deferral-style policy
        (RetryPolicy(base=0.5, cap=10.0, max_elapsed=None), 10_000, 1.0, 10.0),  # no overflow
        (RetryPolicy(base=1.0, cap=10.0), 0, 1.0, 1.0),  # below 1 counts as the first retry
        (RetryPolicy(base=1.0, cap=10.0), -3, 1.0, 1.0),
        (RetryPolicy(base=0.0, cap=0.0), 7, 1.0, 0.0),
    ],
)
def test_backoff_table(policy: RetryPolicy, attempt: int, draw: float, expected: float) -> None:
    assert policy.backoff(attempt, rng=lambda: draw) == pytest.approx(expected)


def test_full_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy()
    delays = [policy.delay_for(4, transient()) for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize(
    "max_retry_after, asked, expected",
    [
        (None, None, None),
        (None, 7.0, 7.0),
        (None, 3600.0, 3600.0),
        (60.0, 3600.0, 60.0),
        (60.0, 59.0, 59.0),
        (60.0, 60.0, 60.0),
        (0.0, 5.0, 0.0),
        (60.0, -2.0, 0.0),
        (60.0, None, None),
    ],
)
def test_retry_after_is_capped(max_retry_after: float | None, asked: float | None,
                               expected: float | None) -> None:
    assert RetryPolicy(max_retry_after=max_retry_after).retry_after(asked) == expected


@pytest.mark.parametrize(
    "policy, attempt, error, elapsed, draw, expected",
    [
        # computed backoff, full jitter
        (RetryPolicy(base=1.0, cap=10.0), 1, transient(), 0.0, 1.0, 1.0),
        (RetryPolicy(base=1.0, cap=10.0), 3, transient(), 0.0, 0.5, 2.0),
        (RetryPolicy(base=1.0, cap=10.0), 6, transient(), 0.0, 1.0, 10.0),
        # Retry-After wins, plus at most `base` of jitter
        (RetryPolicy(base=0.5), 1, transient(retry_after=7), 0.0, 1.0, 7.5),
        (RetryPolicy(base=0.5), 1, transient(retry_after=7), 0.0, 0.0, 7.0),
        (RetryPolicy(base=0.5, cap=0.2), 1, transient(retry_after=7), 0.0, 1.0, 7.2),
        # ... but only up to max_retry_after
        (RetryPolicy(base=0.5, max_retry_after=60), 1, transient(retry_after=3600), 0.0, 0.0, 60.0),
        (RetryPolicy(base=0.5, max_retry_after=60), 1, transient(retry_after=3600), 0.0, 1.0, 60.5),
        (RetryPolicy(base=0.5, max_retry_after=60), 1, transient(retry_after=3), 0.0, 0.0, 3.0),
        # a capped Retry-After can fit where the uncapped one gives up
        (RetryPolicy(max_elapsed=100, max_retry_after=60), 1, transient(retry_after=3600), 0.0, 0.0,
         60.0),
        (RetryPolicy(max_elapsed=100), 1, transient(retry_after=3600), 0.0, 0.0, None),
        # max_elapsed counts the time already spent
        (RetryPolicy(max_elapsed=10.0), 1, transient(), 9.0, 1.0, 0.5),
        (RetryPolicy(max_elapsed=10.0), 1, transient(), 9.6, 1.0, None),
        (RetryPolicy(max_elapsed=10.0), 1, transient(retry_after=11), 0.0, 0.0, None),
        (RetryPolicy(max_elapsed=None), 1, transient(retry_after=3600), 1e9, 0.0, 3600.0),
        # max_attempts
        (RetryPolicy(max_attempts=3), 3, transient(), 0.0, 1.0, 2.0),
        (RetryPolicy(max_attempts=3), 4, transient(), 0.0, 1.0, None),
        (RetryPolicy(max_attempts=0), 1, transient(), 0.0, 1.0, None),
        (RetryPolicy(max_attempts=None, max_elapsed=None), 50, transient(), 0.0, 1.0, 30.0),
        # only TransientError is retried
        (RetryPolicy(), 1, PermanentError("x", "C", 400, "m"), 0.0, 1.0, None),
        (RetryPolicy(), 1, AuthError("x", "C", 401, "m"), 0.0, 1.0, None),
        (RetryPolicy(), 1, ValueError(), 0.0, 1.0, None),
        (RetryPolicy(), 1, TimeoutError(), 0.0, 1.0, None),
    ],
)
def test_delay_for_table(policy: RetryPolicy, attempt: int, error: BaseException, elapsed: float,
                         draw: float, expected: float | None) -> None:
    delay = policy.delay_for(attempt, error, elapsed, rng=lambda: draw)
    assert delay == (None if expected is None else pytest.approx(expected))


def test_the_module_shortcut_uses_the_given_policy() -> None:
    policy = RetryPolicy(max_elapsed=10.0, max_attempts=3)
    assert delay_for(1, transient(retry_after=1), policy) is not None
    assert delay_for(4, transient(), policy) is None
    assert delay_for(1, transient(retry_after=11), policy) is None


def test_policy_is_a_frozen_value_and_rejects_negative_settings() -> None:
    policy = RetryPolicy(base=1.0, cap=5.0, max_elapsed=None, max_attempts=2, max_retry_after=30.0)
    assert policy == RetryPolicy(1.0, 5.0, None, 2, 30.0)
    assert hash(policy) == hash(RetryPolicy(1.0, 5.0, None, 2, 30.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.base = 2.0  # type: ignore[misc]
    for bad in ({"base": -1.0}, {"cap": -1.0}, {"max_elapsed": -1.0}, {"max_attempts": -1},
                {"max_retry_after": -0.5}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_the_rng_is_drawn_once_per_delay() -> None:
    draws: list[float] = []

    def rng() -> float:
        draws.append(0.5)
        return 0.5

    RetryPolicy().delay_for(2, transient(retry_after=1), rng=rng)
    RetryPolicy().backoff(2, rng=rng)
    assert draws == [0.5, 0.5]


def test_call_with_retry_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    slept: list[float] = []
    retried: list[tuple[int, str]] = []

    def flaky(value: int) -> int:
        calls.append(value)
        if len(calls) < 3:
            raise transient(retry_after=0.25)
        return value * 2

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    result = asyncio.run(call_with_retry(
        flaky, 21, policy=RetryPolicy(base=0.01), sleep=fake_sleep,
        on_retry=lambda attempt, err, delay: retried.append((attempt, err.code))))
    assert result == 42
    assert len(calls) == 3 and len(slept) == 2 and all(0.25 <= s <= 0.26 for s in slept)
    assert retried == [(1, "HTTP_503"), (2, "HTTP_503")]


def test_call_with_retry_caps_a_long_retry_after() -> None:
    slept: list[float] = []
    calls: list[int] = []

    def hour_then_ok() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise transient(retry_after=3600)
        return "ok"

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(base=0.01, max_elapsed=5.0, max_retry_after=2.0)
    assert asyncio.run(call_with_retry(hour_then_ok, policy=policy, sleep=fake_sleep)) == "ok"
    assert len(slept) == 1 and 2.0 <= slept[0] <= 2.01


def test_call_with_retry_raises_permanent_at_once_and_last_transient_on_give_up() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise PermanentError("salesforce", "STRING_TOO_LONG", 400, "m")

    async def no_sleep(seconds: float) -> None:
        return None

    with pytest.raises(PermanentError):
        asyncio.run(call_with_retry(broken, policy=RetryPolicy(), sleep=no_sleep))
    assert calls == [1]

    def always() -> None:
        raise transient()

    with pytest.raises(TransientError):
        asyncio.run(call_with_retry(always, policy=RetryPolicy(max_attempts=2), sleep=no_sleep))


def test_call_with_retry_runs_in_a_thread() -> None:
    main = threading.get_ident()
    assert asyncio.run(call_with_retry(threading.get_ident)) != main


def test_token_bucket_allows_burst_then_refills() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert bucket.try_acquire() and not bucket.try_acquire()
    now[0] = 100.0
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_token_bucket_acquire_waits_for_a_token() -> None:
    async def run() -> float:
        bucket = TokenBucket(rate=20.0, burst=1)
        loop = asyncio.get_running_loop()
        await bucket.acquire()
        start = loop.time()
        await bucket.acquire()
        return loop.time() - start

    assert 0.03 <= asyncio.run(run()) < 0.5


def test_token_buckets_are_per_account() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1)
    assert buckets.get("c1:hubspot") is buckets.get("c1:hubspot")
    assert buckets.get("c1:hubspot") is not buckets.get("c2:hubspot")
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
