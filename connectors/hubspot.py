"""The HubSpot I/O shell over hubspot-api-client: contact/owner lookups, meetings and notes.

Also what a contact is already linked to (``associated_objects``), for crash reconciliation.

Every failure leaves as a ``connectors.errors.CrmError`` (``ApiException`` is classified by
status and body, whichever generated sub-package raised it). On a 401 the client re-reads its
credentials once (``reload``) and retries; a second 401 is an ``AuthError`` (permanent).
urllib3's own retries are switched off: ``connectors.retry`` is the one retry policy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from hubspot import HubSpot
from hubspot.discovery.discovery_base import DiscoveryBase
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.objects.meetings.exceptions import ApiException as MeetingsApiException
from hubspot.crm.objects.notes.exceptions import ApiException as NotesApiException
from hubspot.crm.owners.exceptions import ApiException as OwnersApiException
from urllib3.util.retry import Retry

from connectors import auth
from connectors.base import CrmClient, chunks, unique_lower
from connectors.credentials import HubSpotCredentials
from connectors.errors import (
    HUBSPOT, AuthError, CrmError, PermanentError, Result, classify_hubspot, classify_network,
)

__all__ = ["HubSpotClient", "Result"]

logger = logging.getLogger(__name__)

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
ENGAGEMENT_TYPES = ("meetings", "notes")
NO_ASSOCIATIONS = "crm.associations.NO_ASSOCIATIONS_FOUND"
NOT_FOUND = "OBJECT_NOT_FOUND"


_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)", re.IGNORECASE)


def _benign(benign: str, category: Any, sub_category: Any, message: Any) -> bool:
    """An error that only says "nothing there": ``benign`` as its category or sub-category, or,
    for associations, a message saying none are associated (HubSpot words it several ways)."""
    if benign in (category, sub_category):
        return True
    text = str(message or "").lower()
    return benign == NO_ASSOCIATIONS and ("no associations" in text or (text.startswith("no ") and "associated with" in text))


def _raise_batch_errors(answer: Any, benign: str) -> None:
    """Raise the first per-input error of a 207 answer unless it is ``benign`` (a lookup that
    half failed must not read as "nothing there")."""
    for err in getattr(answer, "errors", None) or []:
        if not _benign(benign, err.category, err.sub_category, err.message):
            raise classify_hubspot(None, _error_body(err), None)


def _body(raw: Any) -> dict[str, Any]:
    """An ``ApiException`` body (JSON text) as a dict; ``{}`` when it is not one."""
    try:
        data = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _none_associated(read: Callable[[], Any]) -> Any:
    """The v4 batch read, or None when HubSpot answered the whole batch with a 404 that only says
    none of the inputs has associations: that is "none found", not a failure."""
    try:
        return read()
    except AssociationsApiException as exc:
        data = _body(exc.body)
        errors = [data, *(e for e in data.get("errors") or [] if isinstance(e, dict))]
        if exc.status == 404 and any(
            _benign(NO_ASSOCIATIONS, e.get("category"), e.get("subCategory"), e.get("message")) for e in errors
        ):
            return None
        raise


def existing_id(message: Any) -> str | None:
    """The object a unique-value conflict names (``... already exists. Existing ID: 123``)."""
    found = _EXISTING_ID.search(str(message or ""))
    return found.group(1) if found else None


class HubSpotClient(CrmClient[HubSpotCredentials, HubSpot]):
    """One company's HubSpot connection; blocking, meant to run in an executor thread.

    With OAuth credentials the access token comes from ``tokens`` (shared per company by the
    worker) and is refreshed shortly before it expires, under ``lease`` (the credential store's
    per-company refresh lease, which yields the latest credentials); a rotated refresh token goes
    to ``persist`` (the store's token directory) before the lease is released.
    """

    crm = HUBSPOT
    _api: HubSpot | None = None
    _api_token: str | None = None

    def __init__(
        self,
        creds: HubSpotCredentials,
        ca_bundle: str | None = None,
        *,
        reload: Callable[[], HubSpotCredentials] | None = None,
        timeout: float = 30.0,
        throttle: Callable[[], None] | None = None,
        tokens: auth.TokenCache | None = None,
        token_key: Hashable = "",
        persist: Callable[[dict[str, Any]], None] | None = None,
        lease: Callable[[], contextlib.AbstractContextManager[HubSpotCredentials | None]] | None = None,
    ) -> None:
        super().__init__(creds, ca_bundle, reload=reload, timeout=timeout, throttle=throttle)
        self._tokens = tokens if tokens is not None else auth.TokenCache()
        self._token_key = token_key
        self._persist = persist
        self._lease = lease or (lambda: contextlib.nullcontext(None))
        self._refresh_lock = threading.Lock()
        self.refreshes = 0  # token refreshes made by this client
        self.rate_headers: dict[str, str] = {}  # the last response's X-HubSpot-RateLimit-* headers

    def _remember(self, headers: Mapping[str, Any] | None) -> None:
        """Keep the rate-limit headers (interval and daily quota) of the last response."""
        if not headers:
            return
        found = {str(k).lower(): str(v) for k, v in headers.items()
                 if str(k).lower().startswith("x-hubspot-ratelimit-")}
        if found:
            self.rate_headers = found

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """``(used, limit)`` of the daily quota from the last response's headers, if it had them."""
        daily = self.rate_headers.get("x-hubspot-ratelimit-daily")
        remaining = self.rate_headers.get("x-hubspot-ratelimit-daily-remaining")
        if not (daily and remaining and daily.isdigit() and remaining.isdigit()):
            return None
        return max(0, int(daily) - int(remaining)), int(daily)

    def _api_factory(self, package: Any, api_name: str, config: dict[str, Any]) -> Any:
        """hubspot-api-client's own factory, with each response's headers remembered."""
        api = DiscoveryBase._default_api_factory(package, api_name, config)
        client = api.api_client
        original = client.request

        def request(*args: Any, **kwargs: Any) -> Any:
            response = original(*args, **kwargs)
            self._remember(response.getheaders())
            return response

        client.request = request
        return api

    def _cache_key(self) -> Hashable:
        """The company's key plus the app and portal: new credentials never reuse an old token."""
        return (self._token_key, self._creds.client_id, self._creds.base_url)

    def access_token(self) -> str:
        """The token for the next request: the private-app token, or a fresh OAuth one."""
        creds = self._creds
        if creds.auth_type != "oauth":
            return creds.access_token
        key = self._cache_key()
        token = self._tokens.get(key)
        if token is not None:
            return token.access_token
        with self._refresh_lock, self._lease() as latest:
            token = self._tokens.get(key)
            if token is not None:
                return token.access_token
            # Another replica may have rotated the refresh token while this one waited for the lease.
            creds = self._creds = latest or creds
            self.refreshes += 1
            with auth.plain_session(self._ca_bundle) as session:
                token, refresh = auth.hubspot_refresh(
                    session, token_url=creds.oauth_token_url, client_id=creds.client_id or "",
                    client_secret=creds.client_secret or "", refresh_token=creds.refresh_token or "",
                    timeout=self._timeout)
            if refresh != creds.refresh_token:
                # Kept in memory first: the old refresh token is dead, whatever happens to the file.
                self._creds = HubSpotCredentials(**{**creds.__dict__, "refresh_token": refresh})
                self._save_refresh_token(refresh)
            self._tokens.put(key, token)
            return token.access_token

    def _save_refresh_token(self, refresh: str) -> None:
        """Write the rotated refresh token back (atomically, by ``persist``), or say loudly that a
        restart would lose it."""
        if self._persist is None:
            logger.warning("hubspot rotated the refresh token and nothing persists it: update hubspot.json")
            return
        try:
            self._persist({"refresh_token": refresh})
        except (OSError, CrmError):
            logger.error("hubspot rotated the refresh token but it could not be kept; "
                         "this worker keeps working, a restart would need a new authorization", exc_info=True)
            return
        logger.info("hubspot rotated the refresh token; the new one was kept")

    def _connect(self, token: str) -> HubSpot:
        """``host`` drives the generated APIs and ``base_url`` ``api_request()``: set both."""
        return HubSpot(
            access_token=token,
            host=self._creds.base_url,
            base_url=self._creds.base_url,
            ssl_ca_cert=self._ca_bundle,
            retry=Retry(total=0, redirect=0, raise_on_status=False),
            api_factory=self._api_factory,
        )

    def _handle(self) -> HubSpot:
        token = self.access_token()
        if self._api is None or token != self._api_token:
            self._api, self._api_token = self._connect(token), token
        return self._api

    def _classify(self, exc: Exception) -> CrmError | None:
        """By status and body, whichever generated sub-package raised; no status = no answer."""
        if not isinstance(exc, API_EXCEPTIONS):
            return None
        if not exc.status:
            return classify_network(HUBSPOT, Exception(exc.reason))
        self._remember(exc.headers)
        return classify_hubspot(exc.status, exc.body, exc.headers)

    def _reauthenticate(self) -> bool:
        """OAuth: refresh the access token (once); a private-app token can only be re-read."""
        if self._creds.auth_type == "oauth":
            self._tokens.drop(self._cache_key())
            if self._reload is not None:
                self._creds = self._reload()
            self._api = None
            return True
        if self._reload is None:
            return False
        self._creds, self._api = self._reload(), None
        return True

    # -- preflight and preparation (``crm-sync crm check`` / ``prepare``) --

    def token_info(self) -> dict[str, Any]:
        """``GET /oauth/v1/access-tokens/<token>``: the token's scopes, hub id and expiry."""
        token = self.access_token()
        return self._call(lambda api: self._json(api.api_request(
            {"method": "GET", "path": f"/oauth/v1/access-tokens/{token}"})))

    def private_app_info(self) -> dict[str, Any]:
        """``POST /oauth/v2/private-apps/get/access-token-info``: a private app token's scopes."""
        token = self.access_token()
        return self._call(lambda api: self._json(api.api_request(
            {"method": "POST", "path": "/oauth/v2/private-apps/get/access-token-info",
             "body": {"tokenKey": token}})))

    def property_info(self, object_type: str, name: str) -> dict[str, Any] | None:
        """``GET /crm/v3/properties/{objectType}/{name}``, or None when it does not exist."""
        def read(api: HubSpot) -> dict[str, Any] | None:
            answer = api.api_request({"method": "GET", "path": f"/crm/v3/properties/{object_type}/{name}"})
            return None if answer.status_code == 404 else self._json(answer)

        return self._call(read)

    def create_unique_property(self, object_type: str, name: str, label: str) -> dict[str, Any]:
        """A single-line text property with ``hasUniqueValue`` (meetings or notes)."""
        body = {"name": name, "label": label, "type": "string", "fieldType": "text",
                "groupName": f"{object_type[:-1]}information", "hasUniqueValue": True,
                "description": "crm-sync's action id: makes creates idempotent"}
        return self._call(lambda api: self._json(api.api_request(
            {"method": "POST", "path": f"/crm/v3/properties/{object_type}", "body": body})))

    def _json(self, answer: Any) -> dict[str, Any]:
        """``api_request`` returns a ``requests.Response`` and raises nothing: classify here."""
        self._remember(answer.headers)
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code >= 300:
            raise classify_hubspot(answer.status_code, body, answer.headers)
        return body if isinstance(body, dict) else {}

    def find_contacts(self, emails: Iterable[str]) -> dict[str, str]:
        """Contacts by (primary) email via batch read: ``{email_lower: contact_id}``."""
        found: dict[str, str] = {}
        for chunk in chunks(unique_lower(emails), BATCH_LIMIT):
            body = {
                "idProperty": "email",
                "inputs": [{"id": e} for e in chunk],
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
        A unique-value property is read through batch read with ``idProperty``, which sees an
        object as soon as it exists; HubSpot's search index lags writes by seconds, so search is
        only the fallback for a property without unique values (and a create that then meets the
        unique-value conflict is resolved to the existing object, ``_create_chunk``).
        """
        wanted = list(dict.fromkeys(values))
        try:
            return self._read_by_property(object_type, prop, wanted)
        except PermanentError as exc:
            if exc.code != "VALIDATION_ERROR" and exc.status != 400:
                raise
            logger.warning("hubspot %s property %s is not a unique identifier: searching (lags writes)",
                           object_type, prop)
            return self._search_by_property(object_type, prop, wanted)

    def _read_by_property(self, object_type: str, prop: str, values: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in chunks(values, BATCH_LIMIT):
            body = {"idProperty": prop, "inputs": [{"id": v} for v in chunk], "properties": [prop],
                    "propertiesWithHistory": []}
            answer = self._call(lambda api: getattr(api.crm.objects, object_type).batch_api.read(
                body, archived=False, _request_timeout=self._timeout))
            _raise_batch_errors(answer, NOT_FOUND)
            for obj in answer.results or []:
                value = (obj.properties or {}).get(prop)
                if value:
                    found.setdefault(value, str(obj.id))
        return found

    def _search_by_property(self, object_type: str, prop: str, values: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in chunks(values, SEARCH_IN_LIMIT):
            body = {
                "filterGroups": [
                    {"filters": [{"propertyName": prop, "operator": "IN", "values": list(chunk)}]}
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

    def associated_objects(self, object_type: str, contact_ids: Iterable[str],
                           properties: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Each contact's associated meetings or notes: ``{contact_id: [{"id", "properties"}]}``.

        Crash reconciliation without an external-id field: unlike search, which lags writes by
        seconds, the v4 associations read plus a batch read sees an object as soon as it exists.
        Every contact id is a key (``[]`` when it has none); ``properties`` holds the asked ones
        plus HubSpot's defaults (``hs_object_id``, ``hs_createdate``, ``hs_lastmodifieddate``).
        """
        if object_type not in ENGAGEMENT_TYPES:
            raise ValueError(f"object_type must be one of {ENGAGEMENT_TYPES}, not {object_type!r}")
        linked = self._associated_ids(object_type, contact_ids)
        wanted = list(dict.fromkeys(obj_id for ids in linked.values() for obj_id in ids))
        objects = self._read_objects(object_type, wanted, properties)
        return {contact: [objects[i] for i in ids if i in objects] for contact, ids in linked.items()}

    def _associated_ids(self, to_type: str, contact_ids: Iterable[str]) -> dict[str, list[str]]:
        """Associated ids per contact via the v4 batch read, following each contact's pages."""
        linked: dict[str, list[str]] = {str(c): [] for c in contact_ids}
        pending = [{"id": contact} for contact in linked]
        while pending:
            following: list[dict[str, str]] = []
            for chunk in chunks(pending, BATCH_LIMIT):
                body = {"inputs": list(chunk)}
                answer = self._call(lambda api: _none_associated(lambda: api.crm.associations.v4.batch_api.get_page(
                    "contacts", to_type, body, _request_timeout=self._timeout)))
                if answer is None:
                    continue
                _raise_batch_errors(answer, NO_ASSOCIATIONS)
                for result in answer.results or []:
                    contact = str(result._from.id)
                    linked.setdefault(contact, []).extend(str(to.to_object_id) for to in result.to or [])
                    after = result.paging.next.after if result.paging and result.paging.next else None
                    if after:
                        following.append({"id": contact, "after": after})
            pending = following
        return {contact: list(dict.fromkeys(ids)) for contact, ids in linked.items()}

    def _read_objects(self, object_type: str, ids: Sequence[str],
                      properties: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Meetings or notes by id through batch read; ids that no longer exist are left out."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(ids, BATCH_LIMIT):
            body = {"inputs": [{"id": obj_id} for obj_id in chunk], "properties": list(properties),
                    "propertiesWithHistory": []}
            answer = self._call(lambda api: getattr(api.crm.objects, object_type).batch_api.read(
                body, archived=False, _request_timeout=self._timeout))
            _raise_batch_errors(answer, NOT_FOUND)
            for obj in answer.results or []:
                found[str(obj.id)] = {"id": str(obj.id), "properties": dict(obj.properties or {})}
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
        for chunk in chunks(items, BATCH_LIMIT):
            results.extend(self._create_chunk(object_type, type_id, chunk))
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
        # An answer without a body (a status the client has no model for) reports no outcome.
        for obj in getattr(answer, "results", None) or []:
            trace = obj.object_write_trace_id
            if trace is not None and trace.isdigit():
                outcome[int(trace)] = Result(id=str(obj.id))
            else:
                unmatched.append(str(obj.id))
        for err in getattr(answer, "errors", None) or []:
            found = existing_id(err.message)
            result = Result(id=found, existing=True) if found else Result(error=classify_hubspot(400, _error_body(err), None))
            for trace in (err.context or {}).get("objectWriteTraceId", []):
                if str(trace).isdigit():
                    outcome[int(trace)] = result
        missing = [i for i in range(len(items)) if i not in outcome]
        if len(missing) == len(unmatched):
            outcome.update({i: Result(id=obj_id) for i, obj_id in zip(missing, unmatched)})
        lost = PermanentError(HUBSPOT, "UNEXPECTED_RESPONSE", None,
                              "the CRM did not report an outcome for this record")
        return [outcome.get(i, Result(error=lost)) for i in range(len(items))]

    def _create_single(self, object_type: str, body: dict[str, Any]) -> Result:
        single = {k: v for k, v in body.items() if k != "objectWriteTraceId"}

        def create(api: HubSpot) -> Any:
            try:
                return getattr(api.crm.objects, object_type).basic_api.create(single, _request_timeout=self._timeout)
            except API_EXCEPTIONS as exc:
                found = existing_id(_body(exc.body).get("message")) if exc.status == 409 else None
                if found is None:
                    raise
                return found

        try:
            answer = self._call(create)
        except AuthError:
            raise
        except PermanentError as error:
            return Result(error=error)
        if isinstance(answer, str):
            return Result(id=answer, existing=True)
        return Result(id=str(answer.id))
