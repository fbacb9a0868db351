"""Backoff math, the async retry loop and the token bucket, without real sleeping."""

from __future__ import annotations

import asyncio
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


def test_full_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy()
    delays = [policy.delay_for(4, transient()) for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100


def test_retry_after_wins_and_only_transient_errors_retry() -> None:
    policy = RetryPolicy(base=0.5)
    delay = policy.delay_for(1, transient(retry_after=7), rng=lambda: 1.0)
    assert delay == 7.5
    assert policy.delay_for(1, PermanentError("x", "C", 400, "m")) is None
    assert policy.delay_for(1, AuthError("x", "C", 401, "m")) is None
    assert policy.delay_for(1, ValueError()) is None


def test_gives_up_after_max_elapsed_or_max_attempts() -> None:
    policy = RetryPolicy(max_elapsed=10.0, max_attempts=3)
    assert policy.delay_for(1, transient(retry_after=11)) is None
    assert policy.delay_for(1, transient(), elapsed=9.9, rng=lambda: 1.0) is None
    assert policy.delay_for(1, transient(), elapsed=9.0, rng=lambda: 1.0) == 0.5
    assert policy.delay_for(4, transient()) is None
    assert delay_for(1, transient(retry_after=1), policy) is not None


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
