"""Salesforce REST endpoints of the sandbox: SOQL query, Task create, sObject Collections.

Each request is answered from one tenant's org (``server`` picks it by the session id).

Bodies, status codes and error codes follow the real REST API closely enough that
simple-salesforce raises the same exceptions it would against an org.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from connectors.sandbox import soql
from connectors.sandbox.http import Request, Response
from connectors.sandbox.ids import is_salesforce_id, to15
from connectors.sandbox.records import SfPerson, SfUser, now_utc, sf_time
from connectors.sandbox.state import Fault
from connectors.sandbox.tenant import Tenant

API_LIMIT = 15_000
COLLECTION_LIMIT = 200
_PATH = re.compile(r"^/services/data/v(?P<version>\d+\.\d+)/(?P<rest>.*?)/?$")
TASK_FIELDS = frozenset({
    "Subject", "Description", "ActivityDate", "OwnerId", "WhoId", "WhatId", "Status", "Priority",
    "Type", "IsReminderSet", "ReminderDateTime", "CallDisposition", "TaskSubtype",
})
TEXT_LIMITS = {"Subject": 255, "Description": 32_000, "Type": 40, "CallDisposition": 255}
FIELD_LABELS = {"OwnerId": "Assigned To ID", "WhoId": "Name ID", "WhatId": "Related To ID"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def error(status: int, code: str, message: str, fields: list[str] | None = None) -> Response:
    """Salesforce's error body: a list with one ``{message, errorCode, fields}``."""
    return Response(status, [{"message": message, "errorCode": code, "fields": fields or []}])


def route_name(req: Request) -> str:
    """A stable name for counting calls, e.g. ``POST sobjects/Task``."""
    match = _PATH.match(req.path)
    rest = match.group("rest") if match else req.path
    return f"{req.method} {rest}"


def fault_response(fault: Fault) -> Response:
    """The answer for an injected error fault."""
    status = fault.status or 500
    if status in {403, 429} or fault.error_code == "REQUEST_LIMIT_EXCEEDED":
        resp = error(403, fault.error_code or "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    elif status == 401:
        resp = error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    elif status == 503:
        resp = error(503, fault.error_code or "SERVER_UNAVAILABLE", "Server temporarily unavailable")
    elif status >= 500:
        resp = error(status, fault.error_code or "UNKNOWN_EXCEPTION",
                     "An unexpected error occurred. Please include this ErrorId if you contact "
                     "support: 1234567890-12345 (-123456789)")
    else:
        resp = error(status, fault.error_code or "UNABLE_TO_LOCK_ROW",
                     "unable to obtain exclusive access to this record or 1 records")
    if fault.retry_after is not None:
        resp.headers["Retry-After"] = f"{fault.retry_after:g}"
    return resp


def handle(tenant: Tenant, req: Request, fault: Fault | None = None) -> Response:
    """Answer one Salesforce REST request, or with ``fault``'s injected error."""
    with tenant.lock:
        tenant.salesforce.api_usage += 1
        if fault is not None and fault.commit:
            _route(tenant, req)
        if fault is not None and fault.commit and 200 <= (fault.status or 0) < 300:
            resp = Response(fault.status or 200, [])
        else:
            resp = fault_response(fault) if fault else _route(tenant, req)
        resp.headers["Sforce-Limit-Info"] = f"api-usage={tenant.salesforce.api_usage}/{tenant.salesforce.api_limit}"
        return resp


def _route(tenant: Tenant, req: Request) -> Response:
    if not tenant.salesforce.valid_session(req.bearer()):
        return error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    match = _PATH.match(req.path)
    if match is None:
        return error(404, "NOT_FOUND", "The requested resource does not exist")
    version, rest = match.group("version"), match.group("rest")
    if req.method == "GET" and rest == "query":
        return _query(tenant, req, version)
    if req.method == "POST" and rest == "sobjects/Task":
        return _create_task(tenant, req)
    if req.method == "POST" and rest == "composite/sobjects":
        return _collection(tenant, req)
    if req.method == "GET" and rest == "limits":
        return _limits(tenant)
    if req.method == "GET" and rest == "sobjects/Task/describe":
        return _describe_task(tenant)
    if req.method == "POST" and rest == "tooling/sobjects/CustomField":
        return _create_custom_field(tenant, req)
    return error(404, "NOT_FOUND", "The requested resource does not exist")


def _limits(tenant: Tenant) -> Response:
    """``/limits``: the org's daily API allocation and what is left of it."""
    sf = tenant.salesforce
    return Response(200, {
        "DailyApiRequests": {"Max": sf.api_limit, "Remaining": max(0, sf.api_limit - sf.api_usage)},
        "DailyBulkApiBatches": {"Max": 15_000, "Remaining": 15_000},
    })


def _describe_task(tenant: Tenant) -> Response:
    """``sobjects/Task/describe``: createable, and each field's external-id / unique flags."""
    sf = tenant.salesforce
    fields = [{"name": name, "type": "string", "createable": True, "externalId": False,
               "unique": False, "custom": False} for name in sorted(TASK_FIELDS)]
    fields += [{"name": name, "type": "string", "createable": True, "externalId": True,
                "unique": name in sf.task_unique_fields, "custom": True}
               for name in sorted(sf.task_custom_fields)]
    return Response(200, {"name": "Task", "label": "Task", "createable": sf.task_createable,
                          "queryable": True, "fields": fields})


_CUSTOM_FIELD = re.compile(r"^(Activity|Task)\.(?P<name>[A-Za-z][A-Za-z0-9_]*__c)$")


def _create_custom_field(tenant: Tenant, req: Request) -> Response:
    """Tooling API ``CustomField`` create: an Activity/Task text field (External ID, Unique)."""
    try:
        body = req.json() or {}
    except ValueError:
        return error(400, "JSON_PARSER_ERROR", "Unexpected character at [line:1, column:1]")
    match = _CUSTOM_FIELD.match(str(body.get("FullName", "")))
    metadata = body.get("Metadata") or {}
    if match is None:
        return error(400, "INVALID_FIELD", "FullName must be Activity.<Name>__c")
    if metadata.get("type") != "Text" or not metadata.get("length"):
        return error(400, "FIELD_INTEGRITY_EXCEPTION", "Text fields need a length")
    name = match["name"]
    sf = tenant.salesforce
    if name in sf.task_custom_fields:
        return error(400, "DUPLICATE_DEVELOPER_NAME", f"There is already a field named {name} on Activity.")
    sf.task_custom_fields.add(name)
    if metadata.get("unique"):
        sf.task_unique_fields.add(name)
    return Response(201, {"id": sf.next_id("CustomField"), "success": True, "errors": [],
                          "warnings": [], "infos": []})


def _user_record(user: SfUser) -> dict[str, Any]:
    return {
        "Id": user.id, "Email": user.email, "IsActive": user.active, "Name": user.name or user.email,
        "Username": user.email, "LastModifiedDate": sf_time(now_utc()),
    }


def _person_record(person: SfPerson) -> dict[str, Any]:
    return {
        "Id": person.id, "OwnerId": person.owner_id, "Email": person.email,
        "LastModifiedDate": person.last_modified, "FirstName": person.first_name,
        "LastName": person.last_name, "Name": f"{person.first_name} {person.last_name}".strip(),
        "IsConverted": person.is_converted,
    }


def _query(tenant: Tenant, req: Request, version: str) -> Response:
    text = req.param("q")
    if not text:
        return error(400, "MALFORMED_QUERY", "unexpected token: <EOF>")
    try:
        query = soql.parse(text, {"Task": frozenset(tenant.salesforce.task_custom_fields)})
    except soql.SoqlError as exc:
        return error(400, exc.code, exc.message)
    if query.sobject == "User":
        rows = [_user_record(u) for u in tenant.salesforce.users.values()]
    elif query.sobject == "Task":
        rows = [{"Id": t.id, "CreatedDate": t.created_at, **t.fields} for t in tenant.salesforce.tasks]
    else:
        rows = [_person_record(p) for p in tenant.salesforce.people.values() if p.sobject == query.sobject]
    rows = [row for row in rows if soql.matches(row, query)]
    if query.order_by:
        key = query.order_by
        rows.sort(key=lambda row: (row.get(key) is None, str(row.get(key))), reverse=query.descending)
    if query.limit is not None:
        rows = rows[: query.limit]
    records = [
        {
            "attributes": {"type": query.sobject,
                           "url": f"/services/data/v{version}/sobjects/{query.sobject}/{row['Id']}"},
            **{name: row.get(name) for name in query.fields},
        }
        for row in rows
    ]
    return Response(200, {"totalSize": len(records), "done": True, "records": records})


def _task_errors(tenant: Tenant, fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation errors for one Task as ``{errorCode, message, fields}`` dicts."""
    allowed = TASK_FIELDS | tenant.salesforce.task_custom_fields
    errors: list[dict[str, Any]] = []

    def add(code: str, message: str, names: list[str]) -> None:
        errors.append({"errorCode": code, "message": message, "fields": names})

    for name in fields:
        if name != "attributes" and name not in allowed:
            add("INVALID_FIELD", f"No such column '{name}' on sobject of type Task", [])
    if errors:
        return errors
    for name, limit in TEXT_LIMITS.items():
        value = fields.get(name)
        if isinstance(value, str) and len(value) > limit:
            add("STRING_TOO_LONG",
                f"{name}: data value too large: {value[:20]}... (max length={limit})", [name])
    for name in sorted(tenant.salesforce.task_unique_fields):
        value = fields.get(name)
        clash = next((t for t in tenant.salesforce.tasks if value and t.fields.get(name) == value), None)
        if clash is not None:
            add("DUPLICATE_VALUE",
                f"duplicate value found: {name} duplicates value on record with id: {clash.id}", [name])
    activity = fields.get("ActivityDate")
    if activity is not None and not _valid_date(activity):
        add("JSON_PARSER_ERROR",
            f"Cannot deserialize instance of date from VALUE_STRING value {activity} or request may "
            "be missing a required field at [line:1, column:1]", [])
    for name, kinds in (("OwnerId", {"User"}), ("WhoId", {"Contact", "Lead"}), ("WhatId", set())):
        value = fields.get(name)
        if value is None:
            continue
        label = FIELD_LABELS[name]
        if not is_salesforce_id(value):
            add("MALFORMED_ID", f"{label}: id value of incorrect type: {value}", [name])
        elif not _reference_exists(tenant, str(value), kinds):
            add("INVALID_CROSS_REFERENCE_KEY", f"{label}: invalid cross reference id", [name])
    return errors


def _valid_date(value: object) -> bool:
    if not isinstance(value, str) or not _DATE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _reference_exists(tenant: Tenant, value: str, kinds: set[str]) -> bool:
    key = to15(value)
    if "User" in kinds:
        user = tenant.salesforce.users.get(key)
        return user is not None and user.active
    person = tenant.salesforce.people.get(key)
    return person is not None and person.sobject in kinds


def _create_task(tenant: Tenant, req: Request) -> Response:
    try:
        fields = req.json()
    except ValueError:
        return error(400, "JSON_PARSER_ERROR", "Unexpected character at [line:1, column:1]")
    if not isinstance(fields, dict):
        return error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of Task from the body")
    errors = _task_errors(tenant, fields)
    if errors:
        return Response(400, errors)
    return Response(201, {"id": tenant.salesforce.add_task(fields), "success": True, "errors": []})


def _collection(tenant: Tenant, req: Request) -> Response:
    try:
        body = req.json()
    except ValueError:
        return error(400, "JSON_PARSER_ERROR", "Unexpected character at [line:1, column:1]")
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        return error(400, "JSON_PARSER_ERROR", "records: the body needs a records array")
    if len(records) > COLLECTION_LIMIT:
        return error(400, "EXCEEDED_ID_LIMIT",
                     "record limit reached. cannot submit more than 200 records into this call")
    for record in records:
        kind = record.get("attributes", {}).get("type") if isinstance(record, dict) else None
        if not kind:
            return error(400, "INVALID_TYPE", "Must send a concrete entity type.")
    checked = [
        _task_errors(tenant, r) if r["attributes"]["type"] == "Task"
        else [{"errorCode": "INVALID_TYPE", "message": "sObject type not supported", "fields": []}]
        for r in records
    ]
    all_or_none = bool(body.get("allOrNone", False))
    if all_or_none and any(checked):
        rolled_back = [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "message": "Record rolled back because not all records were valid and the "
                                   "request was using AllOrNone header", "fields": []}]
        return Response(200, [
            {"success": False, "errors": _as_status(errs) if errs else rolled_back}
            for errs in checked
        ])
    results = []
    for record, errs in zip(records, checked):
        if errs:
            results.append({"success": False, "errors": _as_status(errs)})
        else:
            results.append({"id": tenant.salesforce.add_task(record), "success": True, "errors": []})
    return Response(200, results)


def _as_status(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collections name the code ``statusCode`` instead of ``errorCode``."""
    return [{"statusCode": e["errorCode"], "message": e["message"], "fields": e["fields"]} for e in errors]
