"""One error classification for both CRMs.

Every failure a connector sees becomes a ``CrmError``: ``TransientError`` (retry with backoff),
``AuthError`` (the connector re-authenticates and retries once; if it still fails the
credentials are revoked, which is permanent) or ``PermanentError`` (dead-letter it).

Messages are our own short, human-readable sentences (Zoho-style) chosen by error code: the
CRMs' raw texts can echo queries or record values (emails), so they are never copied into
``message`` and must never be logged.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions
from simple_salesforce.exceptions import SalesforceError

SALESFORCE = "salesforce"
HUBSPOT = "hubspot"


@dataclass(eq=False)
class CrmError(Exception):
    """A classified CRM failure; ``code`` is the CRM's own code or ``HTTP_<status>``."""

    crm: str
    code: str
    status: int | None
    message: str
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        Exception.__init__(self, f"{self.crm} {self.code}: {self.message}")

    def __str__(self) -> str:
        return f"{self.crm} {self.code}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """PII-free description for dead letters and failure history."""
        return {
            "crm": self.crm,
            "error_class": type(self).__name__,
            "code": self.code,
            "status": self.status,
            "message": self.message,
            "fields": list(self.fields),
        }


@dataclass(eq=False)
class TransientError(CrmError):
    """Retrying later can succeed; ``retry_after`` is the CRM's requested wait in seconds."""

    retry_after: float | None = None


@dataclass(eq=False)
class PermanentError(CrmError):
    """Retrying the same request cannot succeed."""


@dataclass(eq=False)
class AuthError(PermanentError):
    """Expired or invalid credentials.

    Transient once: the connector re-logs in or re-reads the credentials and retries a single
    time. If it surfaces from a connector, the credentials are revoked: permanent.
    """


@dataclass(frozen=True)
class Result:
    """One record's outcome in a batch create: the new ``id``, or the classified ``error``."""

    id: str | None = None
    error: CrmError | None = None
    existing: bool = False  # the CRM refused a duplicate and named the object it already had

    @property
    def ok(self) -> bool:
        return self.error is None


_MESSAGES: dict[str, str] = {
    "INVALID_CROSS_REFERENCE_KEY": "a referenced record does not exist or is not accessible",
    "INVALID_OWNER_ID": "a referenced record does not exist or is not accessible",
    "INVALID_OBJECT_IDS": "a referenced record does not exist or is not accessible",
    "ENTITY_IS_DELETED": "a referenced record was deleted",
    "REQUIRED_FIELD_MISSING": "a required field is missing",
    "REQUIRED_FIELD": "a required field is missing",
    "STRING_TOO_LONG": "a text value is too long for the field",
    "MAX_CHARACTERS_EXCEEDED": "a text value is too long for the field",
    "MALFORMED_ID": "a record id is malformed",
    "DUPLICATES_DETECTED": "the record is a duplicate of an existing record",
    "DUPLICATE_VALUE": "the record is already linked or the value already exists",
    "CONFLICT": "the record is already linked or already exists",
    "INVALID_FIELD": "a field does not exist on the record type",
    "PROPERTY_DOESNT_EXIST": "a field does not exist on the record type",
    "JSON_PARSER_ERROR": "a value has the wrong format for the field",
    "INVALID_TYPE_ON_FIELD_IN_RECORD": "a value has the wrong type for the field",
    "INVALID_DATE": "a value has the wrong format for the field",
    "INVALID_DATETIME": "a value has the wrong format for the field",
    "INVALID_INTEGER": "a text value was mapped to a number field",
    "INVALID_FLOAT": "a text value was mapped to a number field",
    "INVALID_OPTION": "a value is not one of the field's options",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": "a value is not one of the field's options",
    "FIELD_INTEGRITY_EXCEPTION": "a field value is not allowed",
    "INVALID_ASSOCIATION_TYPE": "the records cannot be linked that way",
    "MALFORMED_QUERY": "the CRM rejected the lookup query as malformed",
    "INVALID_TYPE": "the record type is not available in the CRM",
    "NOT_FOUND": "the CRM resource was not found",
    "OBJECT_NOT_FOUND": "the CRM resource was not found",
    "INSUFFICIENT_ACCESS": "the integration user lacks permission for this operation",
    "MISSING_SCOPES": "the integration lacks the permission (scope) for this operation",
    "VALIDATION_ERROR": "the CRM rejected the values",
    "INVALID_SESSION_ID": "the credentials were revoked or expired",
    "INVALID_AUTHENTICATION": "the credentials were revoked or expired",
    "REQUEST_LIMIT_EXCEEDED": "the CRM's API request limit was reached",
    "RATE_LIMIT": "the CRM's API request limit was reached",
    "UNABLE_TO_LOCK_ROW": "the record is locked by another update",
    "LOCKED": "the record is locked by another update",
    "SERVER_UNAVAILABLE": "the CRM is temporarily unavailable",
    "UNKNOWN_EXCEPTION": "the CRM had an internal error",
    "NETWORK": "the CRM could not be reached (network error or timeout)",
    "TLS_VERIFY_FAILED": "the CRM's TLS certificate is not trusted (check CRM_SYNC_CA_BUNDLE)",
}

SALESFORCE_TRANSIENT_CODES = frozenset(
    {"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION"}
)
SALESFORCE_AUTH_CODES = frozenset({"INVALID_SESSION_ID", "INVALID_AUTH_HEADER"})
TRANSIENT_STATUSES = frozenset({408, 423, 425, 429, 500, 502, 503, 504})


def human_message(code: str, status: int | None) -> str:
    """Our sentence for a code; falls back to a generic one naming only the code."""
    key = "INSUFFICIENT_ACCESS" if code.startswith("INSUFFICIENT_ACCESS") else code
    if key in _MESSAGES:
        return _MESSAGES[key]
    if status is not None and status >= 500:
        return "the CRM had an internal error"
    if status == 429:
        return _MESSAGES["RATE_LIMIT"]
    return f"the CRM rejected the request ({code})"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    if not headers:
        return None
    lowered = name.lower()
    for key, value in headers.items():
        if str(key).lower() == lowered:
            return str(value)
    return None


def _make(
    crm: str,
    code: str,
    status: int | None,
    *,
    transient: bool,
    fields: tuple[str, ...] = (),
    retry_after: float | None = None,
) -> CrmError:
    message = human_message(code, status)
    if fields:
        message = f"{message} ({', '.join(fields)})"
    if code in SALESFORCE_AUTH_CODES or code == "INVALID_AUTHENTICATION" or status == 401:
        return AuthError(crm, code, status, message, fields)
    if transient:
        return TransientError(crm, code, status, message, fields, retry_after)
    return PermanentError(crm, code, status, message, fields)


def classify_salesforce_errors(
    status: int | None,
    errors: Any,
    headers: Mapping[str, Any] | None = None,
) -> CrmError:
    """Classify a Salesforce error list (``errorCode`` or, in collections, ``statusCode``)."""
    first: Mapping[str, Any] = {}
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        first = errors[0]
    elif isinstance(errors, Mapping):
        first = errors
    code = str(first.get("errorCode") or first.get("statusCode") or "") or _status_code(status)
    raw_fields = first.get("fields") or ()
    fields = tuple(str(f) for f in raw_fields) if isinstance(raw_fields, list) else ()
    transient = code in SALESFORCE_TRANSIENT_CODES or status in TRANSIENT_STATUSES
    return _make(
        SALESFORCE,
        code,
        status,
        transient=transient,
        fields=fields,
        retry_after=parse_retry_after(_header(headers, "Retry-After")),
    )


def classify_salesforce(
    exc: SalesforceError, headers: Mapping[str, Any] | None = None
) -> CrmError:
    """Classify a simple-salesforce exception (its ``content`` is the error list)."""
    content: Any = exc.content
    if isinstance(content, (bytes, str)):
        try:
            content = json.loads(content)
        except ValueError:
            content = None
    status = getattr(exc, "status", None)
    return classify_salesforce_errors(status if isinstance(status, int) else None, content, headers)


def _status_code(status: int | None) -> str:
    return f"HTTP_{status}" if status else "UNKNOWN"


def _hubspot_body(body: Any) -> Mapping[str, Any]:
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    return body if isinstance(body, Mapping) else {}


def _hubspot_validation(body: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The first property error name and field from a VALIDATION_ERROR body."""
    sub = str(body.get("subCategory") or "")
    if sub:
        return sub.rsplit(".", 1)[-1], ()
    details: list[Any] = []
    message = str(body.get("message") or "")
    start = message.find("[")
    if start >= 0:
        try:
            parsed = json.loads(message[start:])
            details = parsed if isinstance(parsed, list) else []
        except ValueError:
            details = []
    errors = body.get("errors")
    if not details and isinstance(errors, list):
        details = errors
    for item in details:
        if isinstance(item, Mapping):
            name = item.get("error") or item.get("code")
            field_name = item.get("name") or item.get("in")
            if name:
                return str(name), (str(field_name),) if field_name else ()
    return "VALIDATION_ERROR", ()


def classify_hubspot(
    status: int | None, body: Any = None, headers: Mapping[str, Any] | None = None
) -> CrmError:
    """Classify a HubSpot error response by status, ``category`` and property error names."""
    data = _hubspot_body(body)
    category = str(data.get("category") or "")
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    if status == 429:
        if retry_after is None and _header(headers, "X-HubSpot-RateLimit-Remaining") == "0":
            interval = _header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
            retry_after = float(interval) / 1000.0 if interval and interval.isdigit() else None
        return _make(HUBSPOT, "HTTP_429", status, transient=True, retry_after=retry_after)
    if status == 401 or category == "INVALID_AUTHENTICATION":
        return _make(HUBSPOT, "INVALID_AUTHENTICATION", status, transient=False)
    if status is not None and (status >= 500 or status in TRANSIENT_STATUSES):
        return _make(HUBSPOT, _status_code(status), status, transient=True, retry_after=retry_after)
    if category == "VALIDATION_ERROR":
        code, fields = _hubspot_validation(data)
        return _make(HUBSPOT, code, status, transient=False, fields=fields)
    if status == 409:
        return _make(HUBSPOT, "CONFLICT", status, transient=False)
    if category:
        return _make(HUBSPOT, category, status, transient=False)
    return _make(HUBSPOT, _status_code(status), status, transient=False)


NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def is_network_error(exc: BaseException) -> bool:
    """True for connection failures and timeouts from requests, urllib3 or sockets."""
    return isinstance(exc, NETWORK_ERRORS)


def classify_network(crm: str, exc: BaseException) -> CrmError:
    """Network errors are transient, except a certificate the CA bundle does not trust."""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return _make(crm, "TLS_VERIFY_FAILED", None, transient=False)
    return _make(crm, "NETWORK", None, transient=True)
