"""One parameterised backoff policy for every retry in the project, and per-account rate limiters.

Backoff is exponential with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): concurrent workers spread out instead of retrying in lock step. The same
``RetryPolicy`` serves CRM calls (``delay_for``/``call_with_retry``, where a CRM's ``Retry-After``
wins over the computed delay, up to ``max_retry_after``) and any other loop that backs off
(``backoff`` alone, e.g. re-sending to Kafka). Only ``TransientError`` is retried; the blocking
CRM clients run in a thread executor so one company's waits never block another's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

from connectors.errors import TransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")
OnRetry = Callable[[int, TransientError, float], object]
Rng = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """Delays grow as ``base * 2**(attempt-1)`` up to ``cap``, drawn uniformly below that ceiling.

    ``max_elapsed`` (seconds since the first try) and ``max_attempts`` bound the retries (None:
    no bound); ``max_retry_after`` caps how long a CRM's ``Retry-After`` may make us wait (None:
    as long as it asks), so one company's "come back in an hour" cannot stall a worker.
    """

    base: float = 0.5
    cap: float = 30.0
    max_elapsed: float | None = 300.0
    max_attempts: int | None = None
    max_retry_after: float | None = None

    def __post_init__(self) -> None:
        for name in ("base", "cap", "max_elapsed", "max_retry_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0")

    def backoff(self, attempt: int, rng: Rng = random.random) -> float:
        """Full jitter before retry ``attempt`` (1 = first): uniform in [0, min(cap, base*2**(attempt-1))].

        Attempts below 1 count as 1, so a caller's zero-based counter still gets a short delay.
        """
        exponent = min(max(0, attempt - 1), 1000)  # 2.0**1024 overflows; the cap rules long before
        return min(self.cap, self.base * 2.0**exponent) * rng()

    def retry_after(self, seconds: float | None) -> float | None:
        """The CRM's ``Retry-After`` as we honour it: capped by ``max_retry_after``, never negative."""
        if seconds is None:
            return None
        wait = max(0.0, seconds)
        return wait if self.max_retry_after is None else min(wait, self.max_retry_after)

    def delay_for(
        self,
        attempt: int,
        error: BaseException,
        elapsed: float = 0.0,
        rng: Rng = random.random,
    ) -> float | None:
        """Seconds to wait before retry ``attempt`` after ``error``, or None to give up.

        Only ``TransientError`` is retried. With a ``Retry-After`` the wait is that (capped) value
        plus at most ``base`` of jitter, so workers told the same instant do not return together.
        """
        if not isinstance(error, TransientError):
            return None
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        delay = self.backoff(attempt, rng)
        asked = self.retry_after(error.retry_after)
        if asked is not None:
            delay = asked + min(self.base, delay)
        if self.max_elapsed is not None and elapsed + delay > self.max_elapsed:
            return None
        return delay


DEFAULT_POLICY = RetryPolicy()


def delay_for(
    attempt: int, error: BaseException, policy: RetryPolicy = DEFAULT_POLICY, elapsed: float = 0.0
) -> float | None:
    """Module-level shortcut for ``policy.delay_for``."""
    return policy.delay_for(attempt, error, elapsed)


async def call_with_retry(
    fn: Callable[..., T],
    *args: object,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_retry: OnRetry | None = None,
    executor: Executor | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run blocking ``fn(*args)`` in an executor, retrying ``TransientError`` per ``policy``.

    Any other exception (``PermanentError``, ``AuthError``, bugs) propagates at once; when
    the policy gives up, the last ``TransientError`` propagates.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args)
    started = clock()
    attempt = 0
    while True:
        try:
            return await loop.run_in_executor(executor, call)
        except TransientError as error:
            attempt += 1
            delay = policy.delay_for(attempt, error, clock() - started)
            if delay is None:
                raise
            logger.info(
                "retrying %s call after %s (attempt %d, %.2fs)", error.crm, error.code, attempt, delay
            )
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)


@dataclass
class TokenBucket:
    """Allows ``rate`` calls per second with bursts up to ``burst``; ``acquire`` waits."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _updated: float = field(init=False)
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _thread_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._tokens = float(self.burst)
        self._updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take tokens if available now, without waiting."""
        with self._thread_lock:
            self._refill()
            if self._tokens >= tokens:
                self._tokens -= tokens
                return True
            return False

    def acquire_blocking(self, tokens: float = 1.0) -> None:
        """For the blocking CRM clients, which call this from executor threads before each request."""
        if tokens > self.burst:
            raise ValueError("cannot acquire more tokens than the burst size")
        while not self.try_acquire(tokens):
            time.sleep(max(0.001, (tokens - self._tokens) / self.rate))

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait (first come, first served) until ``tokens`` are available, then take them."""
        if tokens > self.burst:
            raise ValueError("cannot acquire more tokens than the burst size")
        async with self._lock:
            while not self.try_acquire(tokens):
                await asyncio.sleep((tokens - self._tokens) / self.rate)


@dataclass
class TokenBuckets:
    """One ``TokenBucket`` per account key (e.g. company id + CRM), created on first use."""

    rate: float
    burst: float
    _buckets: dict[str, TokenBucket] = field(init=False, default_factory=dict)

    def get(self, key: str) -> TokenBucket:
        """The bucket for ``key``."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets.setdefault(key, TokenBucket(self.rate, self.burst))
        return bucket
