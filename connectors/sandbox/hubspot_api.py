"""HubSpot CRM v3/v4 endpoints of the sandbox: contacts, owners, meetings, notes, associations.

Response bodies carry every field hubspot-api-client's models require, so the real client
deserializes them exactly as it would HubSpot's.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from datetime import datetime
from typing import Any

from connectors.sandbox.http import Request, Response, correlation_id
from connectors.sandbox.state import (
    Fault, HsAssociation, HsContact, HsObject, HsOwner, SandboxState, hs_time, now_utc,
)

RATE_MAX = 190
RATE_INTERVAL_MS = 10_000
BATCH_LIMIT = 100
SEARCH_PAGE_LIMIT = 200
SEARCH_GROUP_LIMIT = 5
SEARCH_FILTER_LIMIT = 6
NOTE_BODY_LIMIT = 65_536
ASSOCIATION_TYPES = {("meetings", "contacts"): 200, ("notes", "contacts"): 202,
                     ("contacts", "meetings"): 199, ("contacts", "notes"): 201}
OBJECT_PROPERTIES = {
    "meetings": frozenset({
        "hs_timestamp", "hs_meeting_title", "hs_meeting_body", "hs_meeting_start_time",
        "hs_meeting_end_time", "hs_meeting_external_url", "hs_meeting_location",
        "hs_meeting_location_type", "hs_meeting_outcome", "hs_internal_meeting_notes",
        "hs_activity_type", "hubspot_owner_id",
    }),
    "notes": frozenset({"hs_timestamp", "hs_note_body", "hubspot_owner_id", "hs_attachment_ids"}),
}
DATETIME_PROPERTIES = frozenset({"hs_timestamp", "hs_meeting_start_time", "hs_meeting_end_time"})
DEFAULT_CONTACT_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate",
                              "lastname")
_V3_OBJECT = re.compile(r"^/crm/v3/objects/(?P<type>meetings|notes)(?P<batch>/batch/create)?/?$")
_OBJECT_SEARCH = re.compile(r"^/crm/v3/objects/(?P<type>meetings|notes)/search/?$")
_V4_DEFAULT = re.compile(
    r"^/crm/v4/objects/(?P<from>\w+)/(?P<id>[^/]+)/associations/default/(?P<to>\w+)/(?P<to_id>[^/]+)/?$"
)
_CONTACT_BY_ID = re.compile(r"^/crm/v3/objects/contacts/(?P<id>[^/]+)/?$")


def error(status: int, category: str, message: str, **extra: Any) -> Response:
    """HubSpot's error body."""
    return Response(status, {"status": "error", "message": message, "correlationId": correlation_id(),
                             "category": category, **extra})


def _property_errors(problems: list[dict[str, str]]) -> str:
    return "Property values were not valid: " + json.dumps(
        [{"isValid": False, "message": p["message"], "error": p["error"], "name": p["name"]}
         for p in problems]
    )


def route_name(req: Request) -> str:
    """A stable name for counting calls, with ids replaced by ``{id}``."""
    path = req.path.rstrip("/")
    if match := _V4_DEFAULT.match(path):
        path = f"/crm/v4/objects/{match['from']}/{{id}}/associations/default/{match['to']}/{{id}}"
    elif (match := _CONTACT_BY_ID.match(path)) and match["id"] not in {"search", "batch"}:
        path = "/crm/v3/objects/contacts/{id}"
    return f"{req.method} {path}"


def fault_response(fault: Fault) -> Response:
    """The answer for an injected error fault."""
    status = fault.status or 500
    if status == 429:
        resp = error(429, "RATE_LIMITS", "You have reached your ten_secondly_rolling limit.",
                     errorType="RATE_LIMIT", policyName="TEN_SECONDLY_ROLLING", groupName="sandbox")
    elif status == 401:
        resp = error(401, "INVALID_AUTHENTICATION", "Authentication credentials not found.")
    elif status >= 500:
        resp = error(status, fault.error_code or "INTERNAL_ERROR", "internal error")
    else:
        resp = error(status, fault.error_code or "VALIDATION_ERROR", "injected error")
    if fault.retry_after is not None:
        resp.headers["Retry-After"] = f"{fault.retry_after:g}"
    return resp


def rate_headers(state: SandboxState, token: str | None) -> dict[str, str]:
    """Rolling ten-second usage headers for ``token`` (reported, not enforced)."""
    now = time.monotonic()
    window = state.hubspot.rate_windows.setdefault(token or "", deque())
    window.append(now)
    while window and window[0] < now - RATE_INTERVAL_MS / 1000:
        window.popleft()
    return {
        "X-HubSpot-RateLimit-Max": str(RATE_MAX),
        "X-HubSpot-RateLimit-Remaining": str(max(0, RATE_MAX - len(window))),
        "X-HubSpot-RateLimit-Interval-Milliseconds": str(RATE_INTERVAL_MS),
    }


def handle(state: SandboxState, req: Request, fault: Fault | None = None) -> Response:
    """Answer one HubSpot API request, or with ``fault``'s injected error."""
    with state.lock:
        resp = fault_response(fault) if fault else _route(state, req)
        resp.headers.update(rate_headers(state, req.bearer()))
        return resp


def _route(state: SandboxState, req: Request) -> Response:
    if req.bearer() not in state.hubspot.tokens:
        return error(401, "INVALID_AUTHENTICATION",
                     "Authentication credentials not found. This API supports OAuth 2.0 "
                     "authentication and you can find more details at "
                     "https://developers.hubspot.com/docs/methods/auth/oauth-overview")
    path = req.path.rstrip("/")
    try:
        body = req.json() if req.method in {"POST", "PUT"} else None
    except ValueError:
        return error(400, "VALIDATION_ERROR", "Invalid input JSON on line 1")
    if req.method == "POST" and path == "/crm/v3/objects/contacts/search":
        return _search_contacts(state, body or {})
    if req.method == "POST" and path == "/crm/v3/objects/contacts/batch/read":
        return _batch_read_contacts(state, body or {})
    if req.method == "GET" and path == "/crm/v3/owners":
        return _owners(state, req)
    if req.method == "GET" and (match := _CONTACT_BY_ID.match(path)):
        return _get_contact(state, req, match["id"])
    if req.method == "POST" and (match := _OBJECT_SEARCH.match(path)):
        return _search_objects(state, match["type"], body or {})
    if req.method == "POST" and (match := _V3_OBJECT.match(path)):
        if match["batch"]:
            return _batch_create(state, match["type"], body or {})
        return _create_one(state, match["type"], body or {})
    if req.method == "PUT" and (match := _V4_DEFAULT.match(path)):
        return _associate_default(state, match["from"], match["id"], match["to"], match["to_id"])
    return error(404, "OBJECT_NOT_FOUND", f"Resource not found: {req.method} {path}")


def _contact_body(contact: HsContact, properties: list[str] | None) -> dict[str, Any]:
    base = {"createdate": contact.created_at, "lastmodifieddate": contact.created_at,
            "hs_object_id": contact.id, **contact.properties}
    names = list(properties) if properties else list(DEFAULT_CONTACT_PROPERTIES)
    props = {name: base.get(name) for name in names}
    props.setdefault("hs_object_id", contact.id)
    props.setdefault("createdate", contact.created_at)
    props.setdefault("lastmodifieddate", contact.created_at)
    return {"id": contact.id, "properties": props, "createdAt": contact.created_at,
            "updatedAt": contact.created_at, "archived": False}


def _filter_matches(contact: HsContact, flt: dict[str, Any]) -> bool:
    name = flt.get("propertyName")
    value = (contact.properties.get(name) if name != "hs_object_id" else contact.id) or ""
    if flt.get("operator") == "EQ":
        return value.casefold() == str(flt.get("value", "")).casefold()
    return value.casefold() in {str(v).casefold() for v in flt.get("values") or []}


def _search_contacts(state: SandboxState, body: dict[str, Any]) -> Response:
    groups = body.get("filterGroups") or []
    limit = int(body.get("limit") or 10)
    if len(groups) > SEARCH_GROUP_LIMIT or limit > SEARCH_PAGE_LIMIT:
        return error(400, "VALIDATION_ERROR",
                     f"There was a problem with the request: at most {SEARCH_GROUP_LIMIT} filter "
                     f"groups and {SEARCH_PAGE_LIMIT} results per page are allowed")
    for group in groups:
        filters = group.get("filters") or []
        if len(filters) > SEARCH_FILTER_LIMIT:
            return error(400, "VALIDATION_ERROR", "too many filters in a filter group")
        for flt in filters:
            if flt.get("operator") not in {"EQ", "IN"}:
                return error(400, "VALIDATION_ERROR",
                             f"Operator {flt.get('operator')} is not supported by this sandbox")
    found = [
        c for c in state.hubspot.contacts.values()
        if not groups or any(all(_filter_matches(c, f) for f in g.get("filters") or []) for g in groups)
    ]
    offset = int(body.get("after") or 0)
    page = found[offset : offset + limit]
    result: dict[str, Any] = {"total": len(found),
                              "results": [_contact_body(c, body.get("properties")) for c in page]}
    if offset + limit < len(found):
        result["paging"] = {"next": {"after": str(offset + limit)}}
    return Response(200, result)


def _search_objects(state: SandboxState, object_type: str, body: dict[str, Any]) -> Response:
    """Meetings/notes by property (EQ/IN), as the sink's external-id check asks."""
    groups = body.get("filterGroups") or []
    limit = int(body.get("limit") or 10)
    if len(groups) > SEARCH_GROUP_LIMIT or limit > SEARCH_PAGE_LIMIT:
        return error(400, "VALIDATION_ERROR", "too many filter groups or results per page")

    def matches(props: dict[str, str], flt: dict[str, Any]) -> bool:
        value = props.get(flt.get("propertyName", "")) or ""
        if flt.get("operator") == "EQ":
            return value == str(flt.get("value", ""))
        if flt.get("operator") == "IN":
            return value in {str(v) for v in flt.get("values") or []}
        return False

    found = [
        o for o in state.hubspot.objects.values()
        if o.object_type == object_type
        and (not groups or any(all(matches(o.properties, f) for f in g.get("filters") or []) for g in groups))
    ]
    offset = int(body.get("after") or 0)
    page = found[offset : offset + limit]
    wanted = body.get("properties") or []
    result: dict[str, Any] = {
        "total": len(found),
        "results": [
            {"id": o.id, "properties": {"hs_object_id": o.id, **{k: o.properties.get(k) for k in wanted}},
             "createdAt": o.created_at, "updatedAt": o.created_at, "archived": False}
            for o in page
        ],
    }
    if offset + limit < len(found):
        result["paging"] = {"next": {"after": str(offset + limit)}}
    return Response(200, result)


def _find_contact(state: SandboxState, key: str, id_property: str | None) -> HsContact | None:
    if not id_property or id_property == "hs_object_id":
        return state.hubspot.contacts.get(key)
    return next((c for c in state.hubspot.contacts.values()
                 if (c.properties.get(id_property) or "").casefold() == key.casefold()), None)


def _batch_times() -> dict[str, str]:
    stamp = hs_time(now_utc())
    return {"status": "COMPLETE", "requestedAt": stamp, "startedAt": stamp, "completedAt": stamp}


def _batch_read_contacts(state: SandboxState, body: dict[str, Any]) -> Response:
    inputs = body.get("inputs") or []
    if len(inputs) > BATCH_LIMIT:
        return error(400, "VALIDATION_ERROR", f"Batch input cannot exceed {BATCH_LIMIT} inputs")
    results, missing = [], []
    for item in inputs:
        key = str(item.get("id", ""))
        contact = _find_contact(state, key, body.get("idProperty"))
        if contact is None:
            missing.append(key)
        else:
            results.append(_contact_body(contact, body.get("properties")))
    out: dict[str, Any] = {**_batch_times(), "results": results}
    if not missing:
        return Response(200, out)
    out["numErrors"] = 1
    out["errors"] = [{"status": "error", "category": "OBJECT_NOT_FOUND",
                      "message": "Could not get some CONTACT objects, they may be deleted or not "
                                 "exist. Check that ids are valid.",
                      "context": {"ids": missing}, "links": {}, "errors": []}]
    return Response(207, out)


def _get_contact(state: SandboxState, req: Request, key: str) -> Response:
    contact = _find_contact(state, key, req.param("idProperty"))
    if contact is None:
        return Response(404, b"")
    props = (req.param("properties") or "").split(",") if req.param("properties") else None
    return Response(200, _contact_body(contact, props))


def _owner_body(owner: HsOwner) -> dict[str, Any]:
    stamp = hs_time(now_utc())
    return {"id": owner.id, "email": owner.email, "type": "PERSON", "firstName": owner.first_name,
            "lastName": owner.last_name, "userId": owner.user_id,
            "userIdIncludingInactive": owner.user_id, "createdAt": stamp, "updatedAt": stamp,
            "archived": False, "teams": []}


def _owners(state: SandboxState, req: Request) -> Response:
    email = req.param("email")
    owners = [o for o in state.hubspot.owners.values()
              if email is None or o.email.casefold() == email.casefold()]
    limit = int(req.param("limit") or 100)
    offset = int(req.param("after") or 0)
    result: dict[str, Any] = {"results": [_owner_body(o) for o in owners[offset : offset + limit]]}
    if offset + limit < len(owners):
        result["paging"] = {"next": {"after": str(offset + limit)}}
    return Response(200, result)


def _valid_datetime(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _validate(state: SandboxState, object_type: str, item: dict[str, Any]) -> Response | None:
    """None when ``item`` (``properties`` + ``associations``) is valid, else the 400 answer."""
    props = item.get("properties")
    if not isinstance(props, dict):
        return error(400, "VALIDATION_ERROR", "Invalid input JSON: properties must be an object")
    problems: list[dict[str, str]] = []
    for name, value in props.items():
        if name not in OBJECT_PROPERTIES[object_type] and name not in state.hubspot.custom_properties:
            problems.append({"name": name, "error": "PROPERTY_DOESNT_EXIST",
                             "message": f'Property "{name}" does not exist'})
        elif name in DATETIME_PROPERTIES and not _valid_datetime(str(value)):
            problems.append({"name": name, "error": "INVALID_DATE",
                             "message": f"{value} was not a valid long or ISO 8601 datetime"})
        elif name == "hubspot_owner_id" and str(value) not in state.hubspot.owners:
            problems.append({"name": name, "error": "INVALID_OWNER_ID",
                             "message": f"{value} is not a valid owner id"})
        elif name == "hs_note_body" and len(str(value)) > NOTE_BODY_LIMIT:
            problems.append({"name": name, "error": "MAX_CHARACTERS_EXCEEDED",
                             "message": f"hs_note_body exceeds the {NOTE_BODY_LIMIT} character limit"})
    if "hs_timestamp" not in props:
        problems.append({"name": "hs_timestamp", "error": "REQUIRED_FIELD",
                         "message": "hs_timestamp is required"})
    if problems:
        return error(400, "VALIDATION_ERROR", _property_errors(problems),
                     errors=[{"message": p["message"], "code": p["error"], "in": p["name"]}
                             for p in problems])
    for assoc in item.get("associations") or []:
        to_id = str((assoc.get("to") or {}).get("id", ""))
        types = assoc.get("types") or []
        wanted = ASSOCIATION_TYPES[(object_type, "contacts")]
        if not types or any(t.get("associationTypeId") != wanted for t in types):
            return error(400, "VALIDATION_ERROR", "One or more association types are invalid",
                         subCategory="crm.associations.INVALID_ASSOCIATION_TYPE")
        if to_id not in state.hubspot.contacts:
            return error(400, "VALIDATION_ERROR", f"One or more associations are invalid: {to_id}",
                         subCategory="crm.associations.INVALID_OBJECT_IDS",
                         context={"ids": [to_id]})
    return None


def _store(state: SandboxState, object_type: str, item: dict[str, Any]) -> dict[str, Any]:
    obj_id = state.hubspot.next_id("objects")
    stamp = hs_time(now_utc())
    props = {k: str(v) for k, v in item["properties"].items()}
    state.hubspot.objects[obj_id] = HsObject(obj_id, object_type, props, stamp)
    for assoc in item.get("associations") or []:
        for kind in assoc.get("types") or []:
            state.hubspot.associations.append(HsAssociation(
                object_type, obj_id, "contacts", str(assoc["to"]["id"]), int(kind["associationTypeId"])))
    body = {"id": obj_id, "createdAt": stamp, "updatedAt": stamp, "archived": False,
            "properties": {**props, "hs_createdate": stamp, "hs_lastmodifieddate": stamp,
                           "hs_object_id": obj_id}}
    if item.get("objectWriteTraceId"):
        body["objectWriteTraceId"] = item["objectWriteTraceId"]
    return body


def _create_one(state: SandboxState, object_type: str, body: dict[str, Any]) -> Response:
    problem = _validate(state, object_type, body)
    return problem or Response(201, _store(state, object_type, body))


def _batch_create(state: SandboxState, object_type: str, body: dict[str, Any]) -> Response:
    inputs = body.get("inputs") or []
    if len(inputs) > BATCH_LIMIT:
        return error(400, "VALIDATION_ERROR", f"Batch input cannot exceed {BATCH_LIMIT} inputs")
    results, errors = [], []
    for item in inputs:
        problem = _validate(state, object_type, item)
        if problem is None:
            results.append(_store(state, object_type, item))
            continue
        detail = problem.body
        trace = item.get("objectWriteTraceId")
        errors.append({
            "status": "error", "category": detail["category"], "message": detail["message"],
            "context": {"objectWriteTraceId": [str(trace)]} if trace else detail.get("context", {}),
            "links": {}, "errors": detail.get("errors", []),
            **({"subCategory": detail["subCategory"]} if "subCategory" in detail else {}),
        })
    out: dict[str, Any] = {**_batch_times(), "results": results}
    if not errors:
        return Response(201, out)
    return Response(207, {**out, "numErrors": len(errors), "errors": errors})


def _associate_default(state: SandboxState, from_type: str, from_id: str, to_type: str,
                       to_id: str) -> Response:
    type_id = ASSOCIATION_TYPES.get((from_type, to_type))
    if type_id is None:
        return error(400, "VALIDATION_ERROR", f"No default association from {from_type} to {to_type}",
                     subCategory="crm.associations.INVALID_ASSOCIATION_TYPE")

    def exists(kind: str, key: str) -> bool:
        if kind == "contacts":
            return key in state.hubspot.contacts
        obj = state.hubspot.objects.get(key)
        return obj is not None and obj.object_type == kind

    if not (exists(from_type, from_id) and exists(to_type, to_id)):
        return error(400, "VALIDATION_ERROR", "One or more associations are invalid",
                     subCategory="crm.associations.INVALID_OBJECT_IDS")
    state.hubspot.associations.append(HsAssociation(from_type, from_id, to_type, to_id, type_id))
    spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
    return Response(200, {**_batch_times(), "results": [
        {"from": {"id": from_id}, "to": {"id": to_id}, "associationSpec": spec}]})
