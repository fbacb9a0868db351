"""What both CRM clients share: the per-request guard and the one re-login retry.

A client subclass names its CRM, says how to classify its library's exceptions and how to
obtain fresh credentials; ``CrmClient`` turns every failure into a ``CrmError``, throttles each
request and retries exactly once after an ``AuthError`` when re-authentication is possible.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from connectors.errors import AuthError, CrmError, classify_network, is_network_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C")
A = TypeVar("A")


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (the CRMs' per-call limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unique_lower(emails: Iterable[str]) -> list[str]:
    """Emails trimmed, lower-cased and de-duplicated in order (both CRMs match them that way)."""
    return list(dict.fromkeys(e.strip().lower() for e in emails if e and e.strip()))


class CrmClient(ABC, Generic[C, A]):
    """One company's connection to one CRM; blocking, meant to run in an executor thread.

    ``C`` is the credentials type, ``A`` the library handle that ``_call`` passes to its function.
    """

    crm: str

    def __init__(
        self,
        creds: C,
        ca_bundle: str | None = None,
        *,
        reload: Callable[[], C] | None = None,
        timeout: float = 30.0,
        throttle: Callable[[], None] | None = None,
    ) -> None:
        self._creds = creds
        self._ca_bundle = ca_bundle
        self._reload = reload
        self._timeout = timeout
        self._throttle = throttle

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._creds!r})"

    @abstractmethod
    def _handle(self) -> A:
        """The library client for the next request (may log in, so it runs inside the guard)."""

    @abstractmethod
    def _classify(self, exc: Exception) -> CrmError | None:
        """The ``CrmError`` for a library exception, or None if it is not the library's."""

    @abstractmethod
    def _reauthenticate(self) -> bool:
        """Drop the rejected session and get fresh credentials; False when that cannot help."""

    def _on_request(self) -> None:
        """Per-request bookkeeping before each guarded call (nothing by default)."""

    def _guard(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` after the throttle, converting every CRM or network failure to a ``CrmError``."""
        if self._throttle is not None:
            self._throttle()
        self._on_request()
        try:
            return fn()
        except Exception as exc:
            error = self._classify(exc)
            if error is None and is_network_error(exc):
                error = classify_network(self.crm, exc)
            if error is None:
                raise
            raise error from None

    def _call(self, fn: Callable[[A], T]) -> T:
        """``fn(handle)`` with one re-authentication and retry when the credentials are rejected."""
        try:
            return self._guard(lambda: fn(self._handle()))
        except AuthError:
            if not self._reauthenticate():
                raise
            logger.info("%s rejected the credentials; retrying once with fresh ones", self.crm)
            return self._guard(lambda: fn(self._handle()))
