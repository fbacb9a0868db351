"""The JSON control API under ``/__sandbox/`` on the HubSpot port (no auth: loopback only).

Routes (``T``: the route acts on one tenant, chosen by ``?tenant=NAME`` or a ``"tenant"`` key in
the JSON body; without either, the default tenant)::

    GET    /__sandbox/health                    urls, CA file, default session id and token
    GET    /__sandbox/state                     full data snapshot
    POST   /__sandbox/reset                     drop data, counters, faults and added tenants
    GET    /__sandbox/tenants                   [{"tenant", "session_id", "hubspot_token"}]
    POST   /__sandbox/tenants                   {"name", "session_id"?, "hubspot_token"?} -> health
                                                fields with the new tenant's credentials
    POST   /__sandbox/seed                    T seed document -> created ids
    GET    /__sandbox/salesforce/tasks        T created Tasks
    POST   /__sandbox/salesforce/sessions     T {"session_id"}: accept a session id
    POST   /__sandbox/salesforce/expire-session T {"session_id"}: later requests get 401
    GET    /__sandbox/hubspot/meetings|notes|associations  T
    POST   /__sandbox/hubspot/tokens          T {"token"}: accept a token
    POST   /__sandbox/hubspot/revoke-token    T {"token"}: later requests get 401
    POST   /__sandbox/salesforce/connected-apps T {"consumer_key", "certificate"? (PEM), "consumer_secret"?,
                                                "users"? [...], "run_as"?, "refresh_tokens"? {token: user}}
    POST   /__sandbox/salesforce/session-lifetime T {"seconds": N | null}: issued sessions expire
    POST   /__sandbox/hubspot/oauth-apps      T {"client_id", "client_secret", "refresh_token", "rotate"?}
    POST   /__sandbox/hubspot/revoke-refresh-token T {"refresh_token"}
    POST   /__sandbox/hubspot/token-lifetime  T {"seconds": N}: issued access tokens expire
    POST   /__sandbox/hubspot/search-lag      T {"seconds": N}: search finds objects N s after creation
    POST   /__sandbox/clock                     {"skew_seconds": N}: the CRMs' clock runs N s ahead
                                                (negative: behind) of the real one
    GET    /__sandbox/calls                     {"<crm> <METHOD> <route>": count}; all tenants
                                                summed unless ?tenant=
    DELETE /__sandbox/calls                     zero the counters
    GET    /__sandbox/faults                    pending faults
    POST   /__sandbox/faults                    a Fault as JSON (see state.Fault; "tenant" scopes it)
    DELETE /__sandbox/faults                    drop pending faults
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from connectors.sandbox import records
from connectors.sandbox.http import Request, Response
from connectors.sandbox.state import Fault, SandboxState

PREFIX = "/__sandbox"
Action = Callable[[SandboxState, Any, Mapping[str, Any], str | None], Any]


def handle(state: SandboxState, req: Request, info: Mapping[str, Any]) -> Response:
    """Answer one control request; bad input (or an unknown tenant) gets 400 ``{"error": ...}``."""
    path = req.path.removeprefix(PREFIX).rstrip("/") or "/"
    try:
        body = req.json() or {}
        action = _ROUTES.get((req.method, path))
        if action is None:
            return Response(404, {"error": f"no control route {req.method} {path}"})
        tenant = req.param("tenant") or (body.get("tenant") if isinstance(body, dict) else None)
        return Response(200, action(state, body, info, tenant))
    except (ValueError, TypeError, KeyError) as exc:
        return Response(400, {"error": f"{type(exc).__name__}: {exc}"})


def _ok(change: Callable[[SandboxState, Any, str | None], object]) -> Action:
    """An action that changes something and answers ``{"ok": true}``."""
    def action(state: SandboxState, body: Any, info: Mapping[str, Any], tenant: str | None) -> Any:
        change(state, body, tenant)
        return {"ok": True}
    return action


def _credential(crm: str, key: str, method: str) -> Action:
    """Accept or revoke one tenant's session id or token: ``<crm>.<method>(body[key])``."""
    return _ok(lambda state, body, tenant: getattr(getattr(state.tenant(tenant), crm), method)(
        str(body[key])))


def _add_tenant(state: SandboxState, body: Any, info: Mapping[str, Any], tenant: str | None) -> Any:
    created = state.add_tenant(str(body["name"]), session_id=body.get("session_id"),
                               hubspot_token=body.get("hubspot_token"))
    return {**info, **created.credentials()}


def _list_tenants(state: SandboxState, body: Any, info: Mapping[str, Any], tenant: str | None) -> Any:
    with state.lock:
        return [t.credentials() for t in state.tenants.values()]


def _list_faults(state: SandboxState, body: Any, info: Mapping[str, Any], tenant: str | None) -> Any:
    with state.lock:
        return [asdict(f) for f in state.faults]


_ROUTES: dict[tuple[str, str], Action] = {
    ("GET", "/health"): lambda state, body, info, tenant: {"ok": True, **info},
    ("GET", "/state"): lambda state, body, info, tenant: state.to_dict(),
    ("POST", "/reset"): _ok(lambda state, body, tenant: state.reset()),
    ("GET", "/tenants"): _list_tenants,
    ("POST", "/tenants"): _add_tenant,
    ("POST", "/seed"): lambda state, body, info, tenant: state.seed(body, tenant),
    ("GET", "/salesforce/tasks"): lambda state, body, info, tenant:
        state.tenant(tenant).salesforce.list_tasks(),
    ("POST", "/salesforce/sessions"): _credential("salesforce", "session_id", "add_session"),
    ("POST", "/salesforce/expire-session"): _credential("salesforce", "session_id", "expire_session"),
    ("GET", "/hubspot/meetings"): lambda state, body, info, tenant:
        state.tenant(tenant).hubspot.list_meetings(),
    ("GET", "/hubspot/notes"): lambda state, body, info, tenant:
        state.tenant(tenant).hubspot.list_notes(),
    ("GET", "/hubspot/associations"): lambda state, body, info, tenant:
        state.tenant(tenant).hubspot.list_associations(),
    ("POST", "/hubspot/tokens"): _credential("hubspot", "token", "add_token"),
    ("POST", "/hubspot/revoke-token"): _credential("hubspot", "token", "revoke_token"),
    ("POST", "/salesforce/connected-apps"): _ok(lambda state, body, tenant: state.tenant(tenant).salesforce.add_connected_app(
        str(body["consumer_key"]), certificate=str(body.get("certificate", "")),
        consumer_secret=str(body.get("consumer_secret", "")), users=list(body.get("users", [])),
        run_as=str(body.get("run_as", "")), refresh_tokens=dict(body.get("refresh_tokens", {})))),
    ("POST", "/salesforce/session-lifetime"): _ok(lambda state, body, tenant: setattr(
        state.tenant(tenant).salesforce, "session_lifetime",
        None if body.get("seconds") is None else float(body["seconds"]))),
    ("POST", "/hubspot/oauth-apps"): _ok(lambda state, body, tenant: state.tenant(tenant).hubspot.add_oauth_app(
        str(body["client_id"]), str(body["client_secret"]), str(body["refresh_token"]),
        rotate=bool(body.get("rotate", False)))),
    ("POST", "/hubspot/revoke-refresh-token"): _credential("hubspot", "refresh_token", "revoke_refresh_token"),
    ("POST", "/hubspot/token-lifetime"): _ok(lambda state, body, tenant: setattr(
        state.tenant(tenant).hubspot, "token_lifetime", float(body["seconds"]))),
    ("POST", "/hubspot/search-lag"): _ok(lambda state, body, tenant: setattr(
        state.tenant(tenant).hubspot, "search_lag_seconds", float(body["seconds"]))),
    ("POST", "/clock"): _ok(lambda state, body, tenant: setattr(records, "clock_skew_seconds", float(body["skew_seconds"]))),
    ("GET", "/calls"): lambda state, body, info, tenant: state.call_counts(tenant),
    ("DELETE", "/calls"): _ok(lambda state, body, tenant: state.clear_calls()),
    ("GET", "/faults"): _list_faults,
    ("POST", "/faults"): _ok(lambda state, body, tenant: state.inject(Fault(**{**body, "tenant": tenant}))),
    ("DELETE", "/faults"): _ok(lambda state, body, tenant: state.clear_faults()),
}
