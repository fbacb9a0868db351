"""The shared CRM client guard and re-login retry, and HubSpot's 207 error rule, without a network."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import requests

from connectors.base import CrmClient, chunks, unique_lower
from connectors.errors import AuthError, CrmError, PermanentError, TransientError
from connectors.hubspot import NO_ASSOCIATIONS, NOT_FOUND, _raise_batch_errors


class LibraryError(Exception):
    """Stands in for a CRM library's own exception."""


class FakeClient(CrmClient[str, str]):
    crm = "fake"

    def __init__(self, creds: str, *, can_reauth: bool, **kwargs: object) -> None:
        super().__init__(creds, **kwargs)  # type: ignore[arg-type]
        self.can_reauth = can_reauth
        self.events: list[str] = []

    def _handle(self) -> str:
        self.events.append("handle")
        return self._creds

    def _classify(self, exc: Exception) -> CrmError | None:
        if isinstance(exc, LibraryError):
            code = str(exc)
            if code == "AUTH":
                return AuthError(self.crm, code, 401, "expired")
            return TransientError(self.crm, code, 503, "busy")
        return None

    def _reauthenticate(self) -> bool:
        self.events.append("reauth")
        if self.can_reauth:
            self._creds = "fresh"
        return self.can_reauth

    def _on_request(self) -> None:
        self.events.append("request")


def raising(exc: Exception) -> Callable[[], str]:
    def call() -> str:
        raise exc
    return call


def test_guard_throttles_each_request_and_classifies_failures() -> None:
    throttled: list[int] = []
    client = FakeClient("c", can_reauth=False, throttle=lambda: throttled.append(1))

    assert client._call(lambda creds: creds.upper()) == "C"
    with pytest.raises(TransientError) as info:
        client._guard(raising(LibraryError("BUSY")))
    assert info.value.code == "BUSY" and info.value.__cause__ is None
    with pytest.raises(TransientError) as net:
        client._guard(raising(requests.ConnectionError("refused")))
    assert (net.value.crm, net.value.code) == ("fake", "NETWORK")
    with pytest.raises(KeyError):
        client._guard(raising(KeyError("bug")))
    assert len(throttled) == 4
    assert client.events.count("request") == 4


def test_call_retries_once_after_reauthentication() -> None:
    seen: list[str] = []

    def fails_for_stale(creds: str) -> str:
        seen.append(creds)
        if creds == "stale":
            raise LibraryError("AUTH")
        return "ok"

    client = FakeClient("stale", can_reauth=True)
    assert client._call(fails_for_stale) == "ok"
    assert seen == ["stale", "fresh"] and client.events.count("reauth") == 1

    def always_auth(creds: str) -> str:
        raise LibraryError("AUTH")

    with pytest.raises(AuthError):
        FakeClient("stale", can_reauth=True)._call(always_auth)
    refused = FakeClient("stale", can_reauth=False)
    with pytest.raises(AuthError):
        refused._call(always_auth)
    assert refused.events.count("handle") == 1
    assert repr(refused) == "FakeClient('stale')"


def test_chunks_and_unique_lower() -> None:
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(chunks([], 100)) == []
    assert unique_lower([" A@x.com", "a@x.com", "", "  ", "B@x.com"]) == ["a@x.com", "b@x.com"]


def _error(category: str, sub_category: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(category=category, sub_category=sub_category, message="m", errors=[])


@pytest.mark.parametrize(
    "errors, benign, raised",
    [
        ([], NO_ASSOCIATIONS, None),
        ([_error("OBJECT_NOT_FOUND", NO_ASSOCIATIONS)], NO_ASSOCIATIONS, None),
        ([_error("OBJECT_NOT_FOUND")], NOT_FOUND, None),
        ([_error("OBJECT_NOT_FOUND")], NO_ASSOCIATIONS, "OBJECT_NOT_FOUND"),
        ([_error("OBJECT_NOT_FOUND", NO_ASSOCIATIONS), _error("MISSING_SCOPES")], NO_ASSOCIATIONS,
         "MISSING_SCOPES"),
        ([_error("VALIDATION_ERROR", "crm.associations.INVALID_OBJECT_IDS")], NOT_FOUND,
         "INVALID_OBJECT_IDS"),
    ],
)
def test_batch_errors_other_than_the_benign_one_raise(
    errors: list[SimpleNamespace], benign: str, raised: str | None
) -> None:
    answer = SimpleNamespace(results=[], errors=errors)
    if raised is None:
        _raise_batch_errors(answer, benign)
        return
    with pytest.raises(PermanentError) as info:
        _raise_batch_errors(answer, benign)
    assert info.value.code == raised
