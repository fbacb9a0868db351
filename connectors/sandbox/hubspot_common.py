"""HubSpot's wire shapes shared by the sandbox's HubSpot handlers: errors, batch envelopes, pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from connectors.sandbox.http import Response, correlation_id
from connectors.sandbox.records import hs_time, now_utc

T = TypeVar("T")
BATCH_LIMIT = 100
SEARCH_PAGE_LIMIT = 200
SEARCH_GROUP_LIMIT = 5
SEARCH_FILTER_LIMIT = 6


def error(status: int, category: str, message: str, **extra: Any) -> Response:
    """HubSpot's error body."""
    return Response(status, {"status": "error", "message": message, "correlationId": correlation_id(),
                             "category": category, **extra})


def batch_times() -> dict[str, str]:
    """The status and timestamps every batch answer carries."""
    stamp = hs_time(now_utc())
    return {"status": "COMPLETE", "requestedAt": stamp, "startedAt": stamp, "completedAt": stamp}


def batch_answer(results: list[dict[str, Any]], errors: list[dict[str, Any]], ok: int = 200) -> Response:
    """``ok`` with the results, or 207 Multi-Status with ``numErrors``/``errors`` as well."""
    out: dict[str, Any] = {**batch_times(), "results": results}
    if not errors:
        return Response(ok, out)
    return Response(207, {**out, "numErrors": len(errors), "errors": errors})


def not_found(object_name: str, ids: Sequence[str]) -> dict[str, Any]:
    """The per-batch error for ids a batch read could not find (``object_name``: ``CONTACT``…)."""
    return {"status": "error", "category": "OBJECT_NOT_FOUND",
            "message": f"Could not get some {object_name} objects, they may be deleted or not "
                       "exist. Check that ids are valid.",
            "context": {"ids": list(ids)}, "links": {}, "errors": []}


def search_page(found: Sequence[T], body: dict[str, Any],
                render: Callable[[T], dict[str, Any]]) -> Response:
    """One page of a search answer (``limit``/``after`` from the body), or 400 for too large a one."""
    groups = body.get("filterGroups") or []
    limit = int(body.get("limit") or 10)
    if len(groups) > SEARCH_GROUP_LIMIT or limit > SEARCH_PAGE_LIMIT:
        return error(400, "VALIDATION_ERROR",
                     f"There was a problem with the request: at most {SEARCH_GROUP_LIMIT} filter "
                     f"groups and {SEARCH_PAGE_LIMIT} results per page are allowed")
    offset = int(body.get("after") or 0)
    result: dict[str, Any] = {"total": len(found),
                              "results": [render(item) for item in found[offset : offset + limit]]}
    if offset + limit < len(found):
        result["paging"] = {"next": {"after": str(offset + limit)}}
    return Response(200, result)
