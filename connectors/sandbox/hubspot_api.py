"""HubSpot CRM v3/v4 endpoints of the sandbox: the router, auth, faults, rate headers, contacts, owners.

Meetings, notes and associations live in ``hubspot_objects``. Response bodies carry every field
hubspot-api-client's models require, so the real client deserializes them exactly as it would
HubSpot's. Each request is answered from one tenant's portal (``server`` picks it by the token).
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Any

from connectors.sandbox import hubspot_objects
from connectors.sandbox.http import Request, Response
from connectors.sandbox.hubspot_common import (
    BATCH_LIMIT, SEARCH_FILTER_LIMIT, batch_answer, batch_times, error, not_found, search_page,
)
from connectors.sandbox.records import HsContact, HsOwner, hs_time, now_utc
from connectors.sandbox.state import Fault
from connectors.sandbox.tenant import Tenant

RATE_MAX = 190
RATE_INTERVAL_MS = 10_000
DEFAULT_CONTACT_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate",
                              "lastname")
_CONTACT_BY_ID = re.compile(r"^/crm/v3/objects/contacts/(?P<id>[^/]+)/?$")
_PROPERTY = re.compile(r"^/crm/v3/properties/(?P<type>meetings|notes|contacts)(?:/(?P<name>[^/]+))?$")


def route_name(req: Request) -> str:
    """A stable name for counting calls, with ids replaced by ``{id}``."""
    path = req.path.rstrip("/")
    if match := hubspot_objects.V4_DEFAULT.match(path):
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


def rate_headers(tenant: Tenant, token: str | None) -> dict[str, str]:
    """Rolling ten-second usage headers for ``token`` (reported, not enforced)."""
    now = time.monotonic()
    window = tenant.hubspot.rate_windows.setdefault(token or "", deque())
    window.append(now)
    while window and window[0] < now - RATE_INTERVAL_MS / 1000:
        window.popleft()
    tenant.hubspot.daily_usage += 1
    return {
        "X-HubSpot-RateLimit-Daily": str(tenant.hubspot.daily_limit),
        "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, tenant.hubspot.daily_limit - tenant.hubspot.daily_usage)),
        "X-HubSpot-RateLimit-Max": str(RATE_MAX),
        "X-HubSpot-RateLimit-Remaining": str(max(0, RATE_MAX - len(window))),
        "X-HubSpot-RateLimit-Interval-Milliseconds": str(RATE_INTERVAL_MS),
    }


def handle(tenant: Tenant, req: Request, fault: Fault | None = None) -> Response:
    """Answer one HubSpot API request, or with ``fault``'s injected error."""
    with tenant.lock:
        if fault is not None and fault.commit:
            _route(tenant, req)
        if fault is not None and fault.commit and 200 <= (fault.status or 0) < 300:
            resp = Response(fault.status or 200, {**batch_times(), "results": []})
        else:
            resp = fault_response(fault) if fault else _route(tenant, req)
        resp.headers.update(rate_headers(tenant, req.bearer()))
        return resp


def _route(tenant: Tenant, req: Request) -> Response:
    token = req.bearer()
    if not tenant.hubspot.valid_token(token):
        if token in tenant.hubspot.token_expiry:
            return error(401, "EXPIRED_AUTHENTICATION",
                         "The OAuth token used to make this call expired. Refresh it and retry.")
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
        return _search_contacts(tenant, body or {})
    if req.method == "POST" and path == "/crm/v3/objects/contacts/batch/read":
        return _batch_read_contacts(tenant, body or {})
    if req.method == "GET" and path == "/crm/v3/owners":
        return _owners(tenant, req)
    if req.method == "GET" and (match := _CONTACT_BY_ID.match(path)):
        return _get_contact(tenant, req, match["id"])
    if match := _PROPERTY.match(path):
        return _properties(tenant, req, match["type"], match["name"], body or {})
    answer = hubspot_objects.route(tenant, req, path, body or {})
    if answer is not None:
        return answer
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
    name = str(flt.get("propertyName") or "")
    value = (contact.properties.get(name) if name != "hs_object_id" else contact.id) or ""
    if flt.get("operator") == "EQ":
        return value.casefold() == str(flt.get("value", "")).casefold()
    return value.casefold() in {str(v).casefold() for v in flt.get("values") or []}


def _search_contacts(tenant: Tenant, body: dict[str, Any]) -> Response:
    groups = body.get("filterGroups") or []
    for group in groups:
        filters = group.get("filters") or []
        if len(filters) > SEARCH_FILTER_LIMIT:
            return error(400, "VALIDATION_ERROR", "too many filters in a filter group")
        for flt in filters:
            if flt.get("operator") not in {"EQ", "IN"}:
                return error(400, "VALIDATION_ERROR",
                             f"Operator {flt.get('operator')} is not supported by this sandbox")
    found = [
        c for c in tenant.hubspot.contacts.values()
        if not groups or any(all(_filter_matches(c, f) for f in g.get("filters") or []) for g in groups)
    ]
    return search_page(found, body, lambda contact: _contact_body(contact, body.get("properties")))


def _find_contact(tenant: Tenant, key: str, id_property: str | None) -> HsContact | None:
    if not id_property or id_property == "hs_object_id":
        return tenant.hubspot.contacts.get(key)
    return next((c for c in tenant.hubspot.contacts.values()
                 if (c.properties.get(id_property) or "").casefold() == key.casefold()), None)


def _batch_read_contacts(tenant: Tenant, body: dict[str, Any]) -> Response:
    inputs = body.get("inputs") or []
    if len(inputs) > BATCH_LIMIT:
        return error(400, "VALIDATION_ERROR", f"Batch input cannot exceed {BATCH_LIMIT} inputs")
    results, missing = [], []
    for item in inputs:
        key = str(item.get("id", ""))
        contact = _find_contact(tenant, key, body.get("idProperty"))
        if contact is None:
            missing.append(key)
        else:
            results.append(_contact_body(contact, body.get("properties")))
    return batch_answer(results, [not_found("CONTACT", missing)] if missing else [])


def _get_contact(tenant: Tenant, req: Request, key: str) -> Response:
    contact = _find_contact(tenant, key, req.param("idProperty"))
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


def _owners(tenant: Tenant, req: Request) -> Response:
    email = req.param("email")
    owners = [o for o in tenant.hubspot.owners.values()
              if email is None or o.email.casefold() == email.casefold()]
    limit = int(req.param("limit") or 100)
    offset = int(req.param("after") or 0)
    result: dict[str, Any] = {"results": [_owner_body(o) for o in owners[offset : offset + limit]]}
    if offset + limit < len(owners):
        result["paging"] = {"next": {"after": str(offset + limit)}}
    return Response(200, result)


def _property_body(tenant: Tenant, object_type: str, name: str) -> dict[str, Any]:
    stamp = hs_time(now_utc())
    definition = tenant.hubspot.property_defs.get((object_type, name), {})
    return {"name": name, "label": definition.get("label", name), "type": "string", "fieldType": "text",
            "groupName": definition.get("groupName", f"{object_type[:-1]}information"),
            "hasUniqueValue": name in tenant.hubspot.unique_properties.get(object_type, set()),
            "calculated": False, "externalOptions": False, "hidden": False, "formField": False,
            "options": [], "createdAt": stamp, "updatedAt": stamp, "archived": False}


def _properties(tenant: Tenant, req: Request, object_type: str, name: str | None,
                body: dict[str, Any]) -> Response:
    """CRM v3 properties: read one, or create one (``hasUniqueValue`` makes its values unique)."""
    created = {n for (_, n) in tenant.hubspot.property_defs}
    mine = {n for (t, n) in tenant.hubspot.property_defs if t == object_type}
    # Seeded custom properties exist on every object type; created ones on their own type only.
    known = (hubspot_objects.OBJECT_PROPERTIES.get(object_type, frozenset())
             | mine | (tenant.hubspot.custom_properties - created))
    if req.method == "GET" and name:
        if name not in known:
            return error(404, "OBJECT_NOT_FOUND", f"Unable to find property {name} on {object_type}")
        return Response(200, _property_body(tenant, object_type, name))
    if req.method == "POST" and not name:
        new = str(body.get("name") or "")
        if not re.match(r"^[a-z][a-z0-9_]*$", new) or not body.get("label") or not body.get("type"):
            return error(400, "VALIDATION_ERROR", "Property name, label, type and fieldType are required")
        if new in known:
            return error(409, "OBJECT_ALREADY_EXISTS", f"A property named '{new}' already exists.")
        tenant.hubspot.custom_properties.add(new)
        tenant.hubspot.property_defs[(object_type, new)] = {"label": body["label"],
                                                            "groupName": body.get("groupName")}
        if body.get("hasUniqueValue"):
            tenant.hubspot.unique_properties.setdefault(object_type, set()).add(new)
        return Response(201, _property_body(tenant, object_type, new))
    return error(405, "METHOD_NOT_ALLOWED", f"{req.method} is not supported here")
