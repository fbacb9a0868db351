"""Classification of Salesforce, HubSpot and network failures into one error model."""

from __future__ import annotations

import json

import pytest
import requests
import urllib3.exceptions
from simple_salesforce.exceptions import (
    SalesforceExpiredSession, SalesforceGeneralError, SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)

from connectors.errors import (
    AuthError, PermanentError, TransientError, classify_hubspot, classify_network,
    classify_salesforce, classify_salesforce_errors, parse_retry_after,
)


def sf_error(cls: type, status: int, code: str, fields: list[str] | None = None) -> Exception:
    content = [{"message": "secret@example.com is in here", "errorCode": code, "fields": fields or []}]
    return cls("https://x/services/data/v59.0/query", status, "query", content)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("INVALID_CROSS_REFERENCE_KEY", "a referenced record does not exist or is not accessible"),
        ("STRING_TOO_LONG", "a text value is too long for the field"),
        ("REQUIRED_FIELD_MISSING", "a required field is missing"),
        ("MALFORMED_ID", "a record id is malformed"),
        ("DUPLICATES_DETECTED", "the record is a duplicate of an existing record"),
        ("INVALID_FIELD", "a field does not exist on the record type"),
    ],
)
def test_salesforce_permanent_codes(code: str, message: str) -> None:
    error = classify_salesforce(sf_error(SalesforceMalformedRequest, 400, code))
    assert type(error) is PermanentError
    assert (error.crm, error.code, error.status, error.message) == ("salesforce", code, 400, message)


def test_salesforce_messages_never_copy_crm_text() -> None:
    error = classify_salesforce(sf_error(SalesforceMalformedRequest, 400, "STRING_TOO_LONG", ["Subject"]))
    assert "@" not in str(error) and "@" not in json.dumps(error.as_dict())
    assert error.fields == ("Subject",)
    assert error.message == "a text value is too long for the field (Subject)"


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (SalesforceRefusedRequest, 403, "REQUEST_LIMIT_EXCEEDED"),
        (SalesforceMalformedRequest, 400, "UNABLE_TO_LOCK_ROW"),
        (SalesforceGeneralError, 500, "UNKNOWN_EXCEPTION"),
        (SalesforceGeneralError, 503, "SERVER_UNAVAILABLE"),
    ],
)
def test_salesforce_transient_codes(cls: type, status: int, code: str) -> None:
    error = classify_salesforce(sf_error(cls, status, code), {"Retry-After": "7"})
    assert isinstance(error, TransientError)
    assert (error.code, error.retry_after) == (code, 7.0)


def test_salesforce_expired_session_is_auth_error() -> None:
    error = classify_salesforce(sf_error(SalesforceExpiredSession, 401, "INVALID_SESSION_ID"))
    assert isinstance(error, AuthError) and isinstance(error, PermanentError)
    assert error.message == "the credentials were revoked or expired"


def test_salesforce_non_json_bodies_fall_back_to_status() -> None:
    html = SalesforceGeneralError("https://x", 502, "query", b"<html>bad gateway</html>")
    assert classify_salesforce(html).code == "HTTP_502"
    assert isinstance(classify_salesforce(html), TransientError)
    refused = SalesforceRefusedRequest("https://x", 403, "x", [{"errorCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                                                                "message": "m"}])
    assert classify_salesforce(refused).message == "the integration user lacks permission for this operation"


def test_collection_record_errors_use_status_code() -> None:
    error = classify_salesforce_errors(None, [{"statusCode": "INVALID_CROSS_REFERENCE_KEY",
                                               "message": "m", "fields": ["WhoId"]}])
    assert type(error) is PermanentError and error.fields == ("WhoId",)
    lock = classify_salesforce_errors(None, [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "m"}])
    assert isinstance(lock, TransientError)


def test_unknown_code_gets_generic_message() -> None:
    error = classify_salesforce_errors(400, [{"errorCode": "FANCY_NEW_CODE", "message": "m"}])
    assert error.message == "the CRM rejected the request (FANCY_NEW_CODE)"


def test_hubspot_429_uses_retry_after_then_interval_headers() -> None:
    body = {"status": "error", "message": "limit", "policyName": "TEN_SECONDLY_ROLLING"}
    error = classify_hubspot(429, json.dumps(body).encode(), {"Retry-After": "3"})
    assert isinstance(error, TransientError) and (error.code, error.retry_after) == ("HTTP_429", 3.0)
    headers = {"X-HubSpot-RateLimit-Remaining": "0", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}
    assert classify_hubspot(429, body, headers).retry_after == 10.0
    assert classify_hubspot(429, body, {}).retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 423])
def test_hubspot_server_errors_are_transient(status: int) -> None:
    assert isinstance(classify_hubspot(status, b"", None), TransientError)


def test_hubspot_401_is_auth_error() -> None:
    body = {"status": "error", "message": "m", "category": "INVALID_AUTHENTICATION"}
    error = classify_hubspot(401, body, None)
    assert isinstance(error, AuthError) and error.code == "INVALID_AUTHENTICATION"


def test_hubspot_validation_error_reads_embedded_property_errors() -> None:
    details = [{"isValid": False, "message": "x is not a valid owner id", "error": "INVALID_OWNER_ID",
                "name": "hubspot_owner_id"}]
    body = {"status": "error", "category": "VALIDATION_ERROR",
            "message": "Property values were not valid: " + json.dumps(details)}
    error = classify_hubspot(400, body, None)
    assert type(error) is PermanentError
    assert (error.code, error.fields) == ("INVALID_OWNER_ID", ("hubspot_owner_id",))
    assert error.message.startswith("a referenced record does not exist")


def test_hubspot_validation_sub_category_and_conflict() -> None:
    body = {"category": "VALIDATION_ERROR", "subCategory": "crm.associations.INVALID_OBJECT_IDS"}
    assert classify_hubspot(400, body, None).code == "INVALID_OBJECT_IDS"
    conflict = classify_hubspot(409, {"category": "CONFLICT", "message": "m"}, None)
    assert conflict.message == "the record is already linked or already exists"
    assert classify_hubspot(403, {"category": "MISSING_SCOPES"}, None).code == "MISSING_SCOPES"


def test_network_errors_are_transient_but_untrusted_certificates_are_not() -> None:
    for exc in (requests.ConnectionError("refused"), requests.Timeout("slow"),
                urllib3.exceptions.ProtocolError("reset"), TimeoutError()):
        error = classify_network("hubspot", exc)
        assert isinstance(error, TransientError) and error.code == "NETWORK"
    tls = classify_network("salesforce", requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED]"))
    assert type(tls) is PermanentError and tls.code == "TLS_VERIFY_FAILED"


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
