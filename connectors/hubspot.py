"""The HubSpot I/O shell over hubspot-api-client: contact/owner lookups, meetings and notes.

Every failure leaves as a ``connectors.errors.CrmError`` (``ApiException`` is classified by
status and body, whichever generated sub-package raised it). On a 401 the client re-reads its
credentials once (``reload``) and retries; a second 401 is an ``AuthError`` (permanent).
urllib3's own retries are switched off: ``connectors.retry`` is the one retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from hubspot import HubSpot
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.objects.meetings.exceptions import ApiException as MeetingsApiException
from hubspot.crm.objects.notes.exceptions import ApiException as NotesApiException
from hubspot.crm.owners.exceptions import ApiException as OwnersApiException
from urllib3.util.retry import Retry

from connectors.credentials import HubSpotCredentials
from connectors.errors import (
    HUBSPOT, AuthError, PermanentError, Result, classify_hubspot, classify_network, is_network_error,
)

__all__ = ["HubSpotClient", "Result"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
API_EXCEPTIONS = (
    AssociationsApiException, ContactsApiException, MeetingsApiException, NotesApiException,
    OwnersApiException,
)
BATCH_LIMIT = 100
MEETING_TO_CONTACT = 200
NOTE_TO_CONTACT = 202


def _properties(properties: Mapping[str, Any]) -> dict[str, str]:
    """HubSpot takes every property value as a string; None means "not set"."""
    return {k: v if isinstance(v, str) else str(v) for k, v in properties.items() if v is not None}


def _input(properties: Mapping[str, Any], contact_id: str, type_id: int) -> dict[str, Any]:
    return {
        "properties": _properties(properties),
        "associations": [{
            "to": {"id": str(contact_id)},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
        }],
    }


def _error_body(err: Any) -> dict[str, Any]:
    """A batch ``StandardError`` model back in HubSpot's wire shape, for classification."""
    return {
        "category": err.category,
        "subCategory": err.sub_category,
        "message": err.message,
        "errors": [{"code": d.code, "in": d._in, "message": d.message} for d in err.errors or []],
    }


SEARCH_IN_LIMIT = 100


class HubSpotClient:
    """One company's HubSpot connection; blocking, meant to run in an executor thread."""

    def __init__(
        self,
        creds: HubSpotCredentials,
        ca_bundle: str | None = None,
        *,
        reload: Callable[[], HubSpotCredentials] | None = None,
        timeout: float = 30.0,
        throttle: Callable[[], None] | None = None,
    ) -> None:
        self._throttle = throttle
        self._creds = creds
        self._ca_bundle = ca_bundle
        self._reload = reload
        self._timeout = timeout
        self._api = self._connect()

    def __repr__(self) -> str:
        return f"HubSpotClient({self._creds!r})"

    def _connect(self) -> HubSpot:
        """``host`` drives the generated APIs and ``base_url`` ``api_request()``: set both."""
        return HubSpot(
            access_token=self._creds.access_token,
            host=self._creds.base_url,
            base_url=self._creds.base_url,
            ssl_ca_cert=self._ca_bundle,
            retry=Retry(total=0, redirect=0, raise_on_status=False),
        )

    def _guard(self, fn: Callable[[HubSpot], T]) -> T:
        if self._throttle is not None:
            self._throttle()
        try:
            return fn(self._api)
        except API_EXCEPTIONS as exc:
            if not exc.status:
                raise classify_network(HUBSPOT, Exception(exc.reason)) from None
            raise classify_hubspot(exc.status, exc.body, exc.headers) from None
        except Exception as exc:
            if is_network_error(exc):
                raise classify_network(HUBSPOT, exc) from None
            raise

    def _call(self, fn: Callable[[HubSpot], T]) -> T:
        """``fn(api)`` with one credentials re-read and retry on a 401."""
        try:
            return self._guard(fn)
        except AuthError:
            if self._reload is None:
                raise
            self._creds = self._reload()
            self._api = self._connect()
            logger.info("hubspot token rejected; retrying once with re-read credentials")
            return self._guard(fn)

    def find_contacts(self, emails: Iterable[str]) -> dict[str, str]:
        """Contacts by (primary) email via batch read: ``{email_lower: contact_id}``."""
        wanted = list(dict.fromkeys(e.strip().lower() for e in emails if e and e.strip()))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), BATCH_LIMIT):
            body = {
                "idProperty": "email",
                "inputs": [{"id": e} for e in wanted[start : start + BATCH_LIMIT]],
                "properties": ["email"],
                "propertiesWithHistory": [],
            }
            answer = self._call(lambda api: api.crm.contacts.batch_api.read(
                body, archived=False, _request_timeout=self._timeout))
            for obj in answer.results:
                email = (obj.properties or {}).get("email")
                if email:
                    found.setdefault(email.lower(), str(obj.id))
        return found

    def find_by_property(self, object_type: str, prop: str, values: Iterable[str]) -> dict[str, str]:
        """Meetings or notes whose ``prop`` is one of ``values``: ``{value: object_id}``.

        The sink's external-id check: an action created before a crash is found, not created twice.
        """
        wanted = list(dict.fromkeys(values))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), SEARCH_IN_LIMIT):
            body = {
                "filterGroups": [
                    {"filters": [{"propertyName": prop, "operator": "IN", "values": wanted[start : start + SEARCH_IN_LIMIT]}]}
                ],
                "properties": [prop],
                "limit": SEARCH_IN_LIMIT,
            }
            answer = self._call(lambda api: getattr(api.crm.objects, object_type).search_api.do_search(
                body, _request_timeout=self._timeout))
            for obj in answer.results or []:
                value = (obj.properties or {}).get(prop)
                if value:
                    found.setdefault(value, str(obj.id))
        return found

    def search_contact(self, email: str) -> str | None:
        """One contact by exact (case-insensitive) email through the search API."""
        body = {
            "filterGroups": [{"filters": [
                {"propertyName": "email", "operator": "EQ", "value": email.strip()}]}],
            "properties": ["email"],
            "limit": 1,
        }
        answer = self._call(lambda api: api.crm.contacts.search_api.do_search(
            body, _request_timeout=self._timeout))
        return str(answer.results[0].id) if answer.results else None

    def find_owner(self, email: str) -> str | None:
        """The owner id for a user's email, or None."""
        answer = self._call(lambda api: api.crm.owners.owners_api.get_page(
            email=email.strip(), limit=1, archived=False, _request_timeout=self._timeout))
        return str(answer.results[0].id) if answer.results else None

    def create_meeting(self, properties: Mapping[str, Any], contact_id: str) -> str:
        """Create a meeting associated with the contact; returns its id."""
        body = _input(properties, contact_id, MEETING_TO_CONTACT)
        answer = self._call(lambda api: api.crm.objects.meetings.basic_api.create(
            body, _request_timeout=self._timeout))
        return str(answer.id)

    def create_note(self, properties: Mapping[str, Any], contact_id: str) -> str:
        """Create a note associated with the contact; returns its id."""
        body = _input(properties, contact_id, NOTE_TO_CONTACT)
        answer = self._call(lambda api: api.crm.objects.notes.basic_api.create(
            body, _request_timeout=self._timeout))
        return str(answer.id)

    def create_meetings(self, items: Sequence[tuple[Mapping[str, Any], str]]) -> list[Result]:
        """Batch variant of ``create_meeting``: one ``Result`` per ``(properties, contact_id)``."""
        return self._create_batch("meetings", MEETING_TO_CONTACT, items)

    def create_notes(self, items: Sequence[tuple[Mapping[str, Any], str]]) -> list[Result]:
        """Batch variant of ``create_note``: one ``Result`` per ``(properties, contact_id)``."""
        return self._create_batch("notes", NOTE_TO_CONTACT, items)

    def associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> None:
        """Add the default (unlabeled) v4 association between two records."""
        self._call(lambda api: api.crm.associations.v4.basic_api.create_default(
            from_type, str(from_id), to_type, str(to_id), _request_timeout=self._timeout))

    def _create_batch(self, object_type: str, type_id: int,
                      items: Sequence[tuple[Mapping[str, Any], str]]) -> list[Result]:
        results: list[Result] = []
        for start in range(0, len(items), BATCH_LIMIT):
            results.extend(self._create_chunk(object_type, type_id, items[start : start + BATCH_LIMIT]))
        return results

    def _create_chunk(self, object_type: str, type_id: int,
                      items: Sequence[tuple[Mapping[str, Any], str]]) -> list[Result]:
        inputs = [{**_input(props, contact, type_id), "objectWriteTraceId": str(i)}
                  for i, (props, contact) in enumerate(items)]
        try:
            answer = self._call(lambda api: getattr(api.crm.objects, object_type).batch_api.create(
                {"inputs": inputs}, _request_timeout=self._timeout))
        except AuthError:
            raise
        except PermanentError:
            logger.info("hubspot rejected a %s batch; creating its %d records one by one",
                        object_type, len(items))
            return [self._create_single(object_type, inp) for inp in inputs]
        outcome: dict[int, Result] = {}
        unmatched: list[str] = []
        for obj in answer.results or []:
            trace = obj.object_write_trace_id
            if trace is not None and trace.isdigit():
                outcome[int(trace)] = Result(id=str(obj.id))
            else:
                unmatched.append(str(obj.id))
        for err in getattr(answer, "errors", None) or []:
            error = classify_hubspot(400, _error_body(err), None)
            for trace in (err.context or {}).get("objectWriteTraceId", []):
                if str(trace).isdigit():
                    outcome[int(trace)] = Result(error=error)
        missing = [i for i in range(len(items)) if i not in outcome]
        if len(missing) == len(unmatched):
            outcome.update({i: Result(id=obj_id) for i, obj_id in zip(missing, unmatched)})
        lost = PermanentError(HUBSPOT, "UNEXPECTED_RESPONSE", None,
                              "the CRM did not report an outcome for this record")
        return [outcome.get(i, Result(error=lost)) for i in range(len(items))]

    def _create_single(self, object_type: str, body: dict[str, Any]) -> Result:
        single = {k: v for k, v in body.items() if k != "objectWriteTraceId"}
        try:
            answer = self._call(lambda api: getattr(api.crm.objects, object_type).basic_api.create(
                single, _request_timeout=self._timeout))
        except AuthError:
            raise
        except PermanentError as error:
            return Result(error=error)
        return Result(id=str(answer.id))
