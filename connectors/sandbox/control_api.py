"""The JSON control API under ``/__sandbox/`` on the HubSpot port (no auth: loopback only).

Routes::

    GET    /__sandbox/health                    urls, CA file, default session id and token
    GET    /__sandbox/state                     full data snapshot
    POST   /__sandbox/reset                     drop data, counters and faults
    POST   /__sandbox/seed                      seed document -> created ids
    GET    /__sandbox/salesforce/tasks          created Tasks
    POST   /__sandbox/salesforce/sessions       {"session_id"}: accept a session id
    POST   /__sandbox/salesforce/expire-session {"session_id"}: later requests get 401
    GET    /__sandbox/hubspot/meetings|notes|associations
    POST   /__sandbox/hubspot/tokens            {"token"}: accept a token
    POST   /__sandbox/hubspot/revoke-token      {"token"}: later requests get 401
    GET    /__sandbox/calls                     {"<crm> <METHOD> <route>": count}
    DELETE /__sandbox/calls                     zero the counters
    GET    /__sandbox/faults                    pending faults
    POST   /__sandbox/faults                    a Fault as JSON (see state.Fault)
    DELETE /__sandbox/faults                    drop pending faults
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from connectors.sandbox.http import Request, Response
from connectors.sandbox.state import Fault, SandboxState

PREFIX = "/__sandbox"


def handle(state: SandboxState, req: Request, info: Mapping[str, Any]) -> Response:
    """Answer one control request; bad input gets 400 ``{"error": ...}``."""
    path = req.path.removeprefix(PREFIX).rstrip("/") or "/"
    try:
        body = req.json() or {}
        action = _ROUTES.get((req.method, path))
        if action is None:
            return Response(404, {"error": f"no control route {req.method} {path}"})
        return Response(200, action(state, body, info))
    except (ValueError, TypeError, KeyError) as exc:
        return Response(400, {"error": f"{type(exc).__name__}: {exc}"})


Action = Callable[[SandboxState, Any, Mapping[str, Any]], Any]


def _reset(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
    state.reset()
    return {"ok": True}


def _clear_calls(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
    with state.lock:
        state.calls.clear()
    return {"ok": True}


def _add_fault(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
    state.inject(Fault(**body))
    return {"ok": True}


def _clear_faults(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
    state.clear_faults()
    return {"ok": True}


def _list_faults(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
    with state.lock:
        return [asdict(f) for f in state.faults]


def _session(add: bool) -> Action:
    def action(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
        session_id = str(body["session_id"])
        if add:
            state.salesforce.add_session(session_id)
        else:
            state.salesforce.expire_session(session_id)
        return {"ok": True}
    return action


def _token(add: bool) -> Action:
    def action(state: SandboxState, body: Any, info: Mapping[str, Any]) -> Any:
        token = str(body["token"])
        if add:
            state.hubspot.add_token(token)
        else:
            state.hubspot.revoke_token(token)
        return {"ok": True}
    return action


_ROUTES: dict[tuple[str, str], Action] = {
    ("GET", "/health"): lambda state, body, info: {"ok": True, **info},
    ("GET", "/state"): lambda state, body, info: state.to_dict(),
    ("POST", "/reset"): _reset,
    ("POST", "/seed"): lambda state, body, info: state.seed(body),
    ("GET", "/salesforce/tasks"): lambda state, body, info: state.salesforce.list_tasks(),
    ("POST", "/salesforce/sessions"): _session(add=True),
    ("POST", "/salesforce/expire-session"): _session(add=False),
    ("GET", "/hubspot/meetings"): lambda state, body, info: state.hubspot.list_meetings(),
    ("GET", "/hubspot/notes"): lambda state, body, info: state.hubspot.list_notes(),
    ("GET", "/hubspot/associations"): lambda state, body, info: state.hubspot.list_associations(),
    ("POST", "/hubspot/tokens"): _token(add=True),
    ("POST", "/hubspot/revoke-token"): _token(add=False),
    ("GET", "/calls"): lambda state, body, info: state.call_counts(),
    ("DELETE", "/calls"): _clear_calls,
    ("GET", "/faults"): _list_faults,
    ("POST", "/faults"): _add_fault,
    ("DELETE", "/faults"): _clear_faults,
}
