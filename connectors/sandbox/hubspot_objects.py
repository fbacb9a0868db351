"""HubSpot meetings, notes and their associations in the sandbox (CRM v3 objects, v4 associations).

Associations are stored once, in the direction they were made (inline at create time or through
the v4 default PUT), and read in both directions, as HubSpot's are.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from connectors.sandbox.http import Request, Response
from connectors.sandbox.hubspot_common import (
    BATCH_LIMIT, batch_answer, batch_times, error, not_found, search_page,
)
from connectors.sandbox.records import HsAssociation, HsObject, hs_time, now_utc, parse_time
from connectors.sandbox.tenant import Tenant

NOTE_BODY_LIMIT = 65_536
ASSOCIATION_READ_LIMIT = 1_000
ASSOCIATION_PAGE = 500
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
SINGULAR = {"contacts": "contact", "meetings": "meeting", "notes": "note"}
_V3_OBJECT = re.compile(
    r"^/crm/v3/objects/(?P<type>meetings|notes)(?:/batch/(?P<batch>create|read))?/?$")
_OBJECT_SEARCH = re.compile(r"^/crm/v3/objects/(?P<type>meetings|notes)/search/?$")
V4_DEFAULT = re.compile(
    r"^/crm/v4/objects/(?P<from>\w+)/(?P<id>[^/]+)/associations/default/(?P<to>\w+)/(?P<to_id>[^/]+)/?$"
)
_V4_BATCH_READ = re.compile(r"^/crm/v4/associations/(?P<from>\w+)/(?P<to>\w+)/batch/read/?$")


def route(tenant: Tenant, req: Request, path: str, body: dict[str, Any]) -> Response | None:
    """The answer for a meetings/notes/associations request, or None if the path is not one."""
    if req.method == "POST" and (match := _OBJECT_SEARCH.match(path)):
        return _search_objects(tenant, match["type"], body)
    if req.method == "POST" and (match := _V3_OBJECT.match(path)):
        if match["batch"] == "create":
            return _batch_create(tenant, match["type"], body)
        if match["batch"] == "read":
            return _batch_read(tenant, match["type"], body)
        return _create_one(tenant, match["type"], body)
    if req.method == "PUT" and (match := V4_DEFAULT.match(path)):
        return _associate_default(tenant, match["from"], match["id"], match["to"], match["to_id"])
    if req.method == "POST" and (match := _V4_BATCH_READ.match(path)):
        return _read_associations(tenant, match["from"], match["to"], body)
    return None


def _object_body(obj: HsObject, properties: list[str]) -> dict[str, Any]:
    """A meeting or note as HubSpot returns it: the asked properties plus its default ones."""
    props = {"hs_createdate": obj.created_at, "hs_lastmodifieddate": obj.created_at,
             "hs_object_id": obj.id, **{name: obj.properties.get(name) for name in properties}}
    return {"id": obj.id, "properties": props, "createdAt": obj.created_at,
            "updatedAt": obj.created_at, "archived": False}


def _search_objects(tenant: Tenant, object_type: str, body: dict[str, Any]) -> Response:
    """Meetings/notes by property (EQ/IN), as the sink's external-id check asks."""
    groups = body.get("filterGroups") or []

    def matches(props: dict[str, str], flt: dict[str, Any]) -> bool:
        value = props.get(flt.get("propertyName", "")) or ""
        if flt.get("operator") == "EQ":
            return value == str(flt.get("value", ""))
        if flt.get("operator") == "IN":
            return value in {str(v) for v in flt.get("values") or []}
        return False

    indexed_before = now_utc() - timedelta(seconds=tenant.hubspot.search_lag_seconds)
    found = [
        o for o in tenant.hubspot.objects.values()
        if o.object_type == object_type and parse_time(o.created_at) <= indexed_before
        and (not groups or any(all(matches(o.properties, f) for f in g.get("filters") or []) for g in groups))
    ]
    wanted = body.get("properties") or []
    return search_page(found, body, lambda obj: _object_body(obj, wanted))


def _batch_read(tenant: Tenant, object_type: str, body: dict[str, Any]) -> Response:
    """Meetings/notes by id, or by a unique-value property (``idProperty``), straight from the
    object store (no search lag); ids that do not exist come back as one OBJECT_NOT_FOUND error."""
    inputs = body.get("inputs") or []
    if len(inputs) > BATCH_LIMIT:
        return error(400, "VALIDATION_ERROR", f"Batch input cannot exceed {BATCH_LIMIT} inputs")
    id_property = body.get("idProperty") or "hs_object_id"
    if id_property != "hs_object_id" and id_property not in tenant.hubspot.unique_properties.get(object_type, set()):
        return error(400, "VALIDATION_ERROR", f"{id_property} is not a unique identifier property of {object_type}")
    by_value = {o.properties.get(id_property): o for o in tenant.hubspot.objects.values()
                if o.object_type == object_type and id_property != "hs_object_id"}
    wanted = list(body.get("properties") or [])
    if id_property != "hs_object_id" and id_property not in wanted:
        wanted.append(id_property)
    results, missing = [], []
    for item in inputs:
        key = str(item.get("id", ""))
        obj = tenant.hubspot.objects.get(key) if id_property == "hs_object_id" else by_value.get(key)
        if obj is None or obj.object_type != object_type:
            missing.append(key)
        else:
            results.append(_object_body(obj, wanted))
    errors = [not_found(SINGULAR[object_type].upper(), missing)] if missing else []
    return batch_answer(results, errors)


def _linked(tenant: Tenant, from_type: str, from_id: str, to_type: str) -> dict[str, list[int]]:
    """``{to_id: [type ids]}`` for one record, whichever direction each association was made in."""
    this_way = ASSOCIATION_TYPES[(from_type, to_type)]
    linked: dict[str, list[int]] = {}
    for assoc in tenant.hubspot.associations:
        if (assoc.from_type, assoc.from_id, assoc.to_type) == (from_type, from_id, to_type):
            to_id, type_id = assoc.to_id, assoc.type_id
        elif (assoc.from_type, assoc.to_type, assoc.to_id) == (to_type, from_type, from_id):
            to_id, type_id = assoc.from_id, this_way
        else:
            continue
        types = linked.setdefault(to_id, [])
        if type_id not in types:
            types.append(type_id)
    return linked


def _read_associations(tenant: Tenant, from_type: str, to_type: str, body: dict[str, Any]) -> Response:
    """v4 batch read: per input its associated records, ``ASSOCIATION_PAGE`` at a time (``after``).

    A record with none is not an empty result but a NO_ASSOCIATIONS_FOUND error (207), as in HubSpot.
    """
    if (from_type, to_type) not in ASSOCIATION_TYPES:
        return error(400, "VALIDATION_ERROR", f"No associations from {from_type} to {to_type}",
                     subCategory="crm.associations.INVALID_ASSOCIATION_TYPE")
    inputs = body.get("inputs") or []
    if len(inputs) > ASSOCIATION_READ_LIMIT:
        return error(400, "VALIDATION_ERROR",
                     f"Batch input cannot exceed {ASSOCIATION_READ_LIMIT} inputs")
    results, errors = [], []
    for item in inputs:
        from_id = str(item.get("id", ""))
        linked = _linked(tenant, from_type, from_id, to_type)
        if not linked:
            errors.append({
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "subCategory": "crm.associations.NO_ASSOCIATIONS_FOUND",
                "message": f"No {SINGULAR[to_type]} is associated with {SINGULAR[from_type]} {from_id}.",
                "context": {"fromObjectId": [from_id], "fromObjectType": [SINGULAR[from_type]],
                            "toObjectType": [SINGULAR[to_type]]},
                "links": {}, "errors": [],
            })
            continue
        ids = list(linked)
        offset = int(item.get("after") or 0)
        result: dict[str, Any] = {"from": {"id": from_id}, "to": [
            {"toObjectId": int(to_id) if to_id.isdigit() else to_id,
             "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": t, "label": None}
                                  for t in linked[to_id]]}
            for to_id in ids[offset : offset + ASSOCIATION_PAGE]
        ]}
        if offset + ASSOCIATION_PAGE < len(ids):
            result["paging"] = {"next": {"after": str(offset + ASSOCIATION_PAGE)}}
        results.append(result)
    return batch_answer(results, errors)


def _valid_datetime(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _property_errors(problems: list[dict[str, str]]) -> str:
    return "Property values were not valid: " + json.dumps(
        [{"isValid": False, "message": p["message"], "error": p["error"], "name": p["name"]}
         for p in problems]
    )


def _validate(tenant: Tenant, object_type: str, item: dict[str, Any]) -> Response | None:
    """None when ``item`` (``properties`` + ``associations``) is valid, else the 400 answer."""
    props = item.get("properties")
    if not isinstance(props, dict):
        return error(400, "VALIDATION_ERROR", "Invalid input JSON: properties must be an object")
    problems: list[dict[str, str]] = []
    for name, value in props.items():
        if name not in OBJECT_PROPERTIES[object_type] and name not in tenant.hubspot.custom_properties:
            problems.append({"name": name, "error": "PROPERTY_DOESNT_EXIST",
                             "message": f'Property "{name}" does not exist'})
        elif name in DATETIME_PROPERTIES and not _valid_datetime(str(value)):
            problems.append({"name": name, "error": "INVALID_DATE",
                             "message": f"{value} was not a valid long or ISO 8601 datetime"})
        elif name == "hubspot_owner_id" and str(value) not in tenant.hubspot.owners:
            problems.append({"name": name, "error": "INVALID_OWNER_ID",
                             "message": f"{value} is not a valid owner id"})
        elif name == "hs_note_body" and len(str(value)) > NOTE_BODY_LIMIT:
            problems.append({"name": name, "error": "MAX_CHARACTERS_EXCEEDED",
                             "message": f"hs_note_body exceeds the {NOTE_BODY_LIMIT} character limit"})
    if "hs_timestamp" not in props:
        problems.append({"name": "hs_timestamp", "error": "REQUIRED_FIELD",
                         "message": "hs_timestamp is required"})
    for name in sorted(tenant.hubspot.unique_properties.get(object_type, ())):
        value = props.get(name)
        clash = next((o for o in tenant.hubspot.objects.values() if value and o.object_type == object_type
                      and o.properties.get(name) == str(value)), None)
        if clash is not None:
            return error(409, "CONFLICT",
                         f"A {SINGULAR[object_type]} with the unique property {name} set to this value "
                         f"already exists. Existing ID: {clash.id}")
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
        if to_id not in tenant.hubspot.contacts:
            return error(400, "VALIDATION_ERROR", f"One or more associations are invalid: {to_id}",
                         subCategory="crm.associations.INVALID_OBJECT_IDS",
                         context={"ids": [to_id]})
    return None


def _store(tenant: Tenant, object_type: str, item: dict[str, Any]) -> dict[str, Any]:
    obj_id = tenant.hubspot.next_id("objects")
    stamp = hs_time(now_utc())
    props = {k: str(v) for k, v in item["properties"].items()}
    tenant.hubspot.objects[obj_id] = HsObject(obj_id, object_type, props, stamp)
    for assoc in item.get("associations") or []:
        for kind in assoc.get("types") or []:
            tenant.hubspot.associations.append(HsAssociation(
                object_type, obj_id, "contacts", str(assoc["to"]["id"]), int(kind["associationTypeId"])))
    body = {"id": obj_id, "createdAt": stamp, "updatedAt": stamp, "archived": False,
            "properties": {**props, "hs_createdate": stamp, "hs_lastmodifieddate": stamp,
                           "hs_object_id": obj_id}}
    if item.get("objectWriteTraceId"):
        body["objectWriteTraceId"] = item["objectWriteTraceId"]
    return body


def _create_one(tenant: Tenant, object_type: str, body: dict[str, Any]) -> Response:
    problem = _validate(tenant, object_type, body)
    return problem or Response(201, _store(tenant, object_type, body))


def _batch_create(tenant: Tenant, object_type: str, body: dict[str, Any]) -> Response:
    inputs = body.get("inputs") or []
    if len(inputs) > BATCH_LIMIT:
        return error(400, "VALIDATION_ERROR", f"Batch input cannot exceed {BATCH_LIMIT} inputs")
    results, errors = [], []
    for item in inputs:
        problem = _validate(tenant, object_type, item)
        if problem is None:
            results.append(_store(tenant, object_type, item))
            continue
        detail = problem.body
        trace = item.get("objectWriteTraceId")
        errors.append({
            "status": "error", "category": detail["category"], "message": detail["message"],
            "context": {"objectWriteTraceId": [str(trace)]} if trace else detail.get("context", {}),
            "links": {}, "errors": detail.get("errors", []),
            **({"subCategory": detail["subCategory"]} if "subCategory" in detail else {}),
        })
    return batch_answer(results, errors, ok=201)


def _associate_default(tenant: Tenant, from_type: str, from_id: str, to_type: str,
                       to_id: str) -> Response:
    type_id = ASSOCIATION_TYPES.get((from_type, to_type))
    if type_id is None:
        return error(400, "VALIDATION_ERROR", f"No default association from {from_type} to {to_type}",
                     subCategory="crm.associations.INVALID_ASSOCIATION_TYPE")

    def exists(kind: str, key: str) -> bool:
        if kind == "contacts":
            return key in tenant.hubspot.contacts
        obj = tenant.hubspot.objects.get(key)
        return obj is not None and obj.object_type == kind

    if not (exists(from_type, from_id) and exists(to_type, to_id)):
        return error(400, "VALIDATION_ERROR", "One or more associations are invalid",
                     subCategory="crm.associations.INVALID_OBJECT_IDS")
    tenant.hubspot.associations.append(HsAssociation(from_type, from_id, to_type, to_id, type_id))
    spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
    return Response(200, {**batch_times(), "results": [
        {"from": {"id": from_id}, "to": {"id": to_id}, "associationSpec": spec}]})
