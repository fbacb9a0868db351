"""The sandbox's OAuth token endpoints, speaking the real flows over HTTP.

Salesforce ``POST /services/oauth2/token`` (form-encoded):
  - ``urn:ietf:params:oauth:grant-type:jwt-bearer``: the assertion's RS256 signature is checked
    against the certificate (or public key) of the Connected App named by ``iss``, and ``aud``,
    ``sub`` (a pre-authorized user) and ``exp``;
  - ``client_credentials``: consumer key and secret, the app's run-as user;
  - ``refresh_token``: a refresh token the app issued (seeded).
HubSpot ``POST /oauth/v1/token`` (``grant_type=refresh_token``), with optional rotation and
revocation; ``GET /oauth/v1/access-tokens/<token>`` and
``POST /oauth/v2/private-apps/get/access-token-info`` (token introspection, scopes).

Errors are the CRMs' own bodies, e.g. Salesforce ``{"error": "invalid_grant",
"error_description": "invalid assertion"}`` and HubSpot ``{"status": "BAD_REFRESH_TOKEN", ...}``.
Issued sessions and access tokens expire after the tenant's configured lifetime.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography import x509

from connectors.sandbox.http import Request, Response, correlation_id
from connectors.sandbox.state import SandboxState
from connectors.sandbox.tenant import Tenant

SALESFORCE_TOKEN_PATH = "/services/oauth2/token"
HUBSPOT_TOKEN_PATH = "/oauth/v1/token"
HUBSPOT_TOKEN_INFO_PREFIX = "/oauth/v1/access-tokens/"
HUBSPOT_PRIVATE_APP_INFO = "/oauth/v2/private-apps/get/access-token-info"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STANDARD_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


def is_token_route(crm: str, path: str) -> bool:
    """True for the paths this module answers (they need no Bearer credentials)."""
    if crm == "salesforce":
        return path.rstrip("/") == SALESFORCE_TOKEN_PATH
    return (path.rstrip("/") in (HUBSPOT_TOKEN_PATH, HUBSPOT_PRIVATE_APP_INFO)
            or path.startswith(HUBSPOT_TOKEN_INFO_PREFIX))


def _form(req: Request) -> dict[str, str]:
    parsed = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def _sf_error(error: str, description: str, status: int = 400) -> Response:
    return Response(status, {"error": error, "error_description": description})


def _public_key(pem: str) -> Any:
    """A certificate's public key (what admins upload), or a bare public key PEM."""
    data = pem.encode("utf-8")
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return data


def salesforce_token(state: SandboxState, req: Request, base_url: str) -> tuple[Tenant | None, Response]:
    """Answer ``/services/oauth2/token``; the tenant is the one whose Connected App is named."""
    form = _form(req)
    grant = form.get("grant_type", "")
    if grant == JWT_GRANT:
        return _jwt_bearer(state, form.get("assertion", ""), base_url)
    if grant == "client_credentials":
        tenant, app = state.salesforce_app(form.get("client_id", ""))
        if app is None or tenant is None:
            return None, _sf_error("invalid_client_id", "client identifier invalid")
        if not app.consumer_secret or not secrets.compare_digest(app.consumer_secret, form.get("client_secret", "")):
            return tenant, _sf_error("invalid_client", "invalid client credentials")
        if not app.run_as:
            return tenant, _sf_error("invalid_grant", "no client credentials user enabled")
        return tenant, _issue(tenant, base_url, app.run_as)
    if grant == "refresh_token":
        tenant, app = state.salesforce_app(form.get("client_id", ""))
        if app is None or tenant is None:
            return None, _sf_error("invalid_client_id", "client identifier invalid")
        user = app.refresh_tokens.get(form.get("refresh_token", ""))
        if user is None:
            return tenant, _sf_error("invalid_grant", "expired access/refresh token")
        return tenant, _issue(tenant, base_url, user)
    return None, _sf_error("unsupported_grant_type", "grant type not supported")


def _jwt_bearer(state: SandboxState, assertion: str, base_url: str) -> tuple[Tenant | None, Response]:
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, _sf_error("invalid_grant", "invalid assertion")
    tenant, app = state.salesforce_app(str(unverified.get("iss", "")))
    if app is None or tenant is None:
        return None, _sf_error("invalid_client_id", "client identifier invalid")
    audiences = [*STANDARD_AUDIENCES, base_url.rstrip("/")]
    try:
        claims = jwt.decode(assertion, _public_key(app.certificate), algorithms=["RS256"],
                            audience=audiences, options={"require": ["iss", "sub", "aud", "exp"]})
    except jwt.ExpiredSignatureError:
        return tenant, _sf_error("invalid_grant", "expired authorization code")
    except jwt.InvalidAudienceError:
        return tenant, _sf_error("invalid_grant", "audience is invalid")
    except (jwt.PyJWTError, ValueError):
        return tenant, _sf_error("invalid_grant", "invalid assertion")
    username = str(claims["sub"])
    if username not in app.users:
        return tenant, _sf_error("invalid_grant", "user hasn't approved this consumer")
    return tenant, _issue(tenant, base_url, username)


def _issue(tenant: Tenant, base_url: str, username: str) -> Response:
    session = f"00Dsandbox-{tenant.name}!{secrets.token_urlsafe(24)}"
    tenant.salesforce.issue_session(session)
    issued = int(time.time() * 1000)
    return Response(200, {
        "access_token": session, "instance_url": base_url.rstrip("/"),
        "id": f"{base_url.rstrip('/')}/id/00D000000000001AAA/005000000000001AAA",
        "token_type": "Bearer", "issued_at": str(issued), "scope": "api",
        "signature": secrets.token_urlsafe(32),
    })


def _hs_error(status: int, code: str, message: str) -> Response:
    return Response(status, {"status": code, "message": message, "correlationId": correlation_id(),
                             "requestId": correlation_id()})


def hubspot_token(state: SandboxState, req: Request) -> tuple[Tenant | None, Response]:
    """Answer ``/oauth/v1/token`` (refresh grant) and the two introspection routes."""
    path = req.path.rstrip("/")
    if path.startswith(HUBSPOT_TOKEN_INFO_PREFIX):
        return _token_info(state, path.removeprefix(HUBSPOT_TOKEN_INFO_PREFIX))
    if path == HUBSPOT_PRIVATE_APP_INFO:
        try:
            body = req.json() or {}
        except ValueError:
            body = {}
        return _token_info(state, str(body.get("tokenKey", "")), private_app=True)
    form = _form(req)
    if form.get("grant_type") != "refresh_token":
        return None, _hs_error(400, "BAD_GRANT_TYPE", "grant_type must be refresh_token here")
    tenant, app = state.hubspot_app(form.get("client_id", ""))
    if tenant is None or app is None:
        return None, _hs_error(400, "BAD_CLIENT_ID", "missing or unknown client id")
    if not secrets.compare_digest(app.client_secret, form.get("client_secret", "")):
        return tenant, _hs_error(400, "BAD_CLIENT_SECRET", "missing or invalid client secret")
    refresh = form.get("refresh_token", "")
    if refresh not in app.refresh_tokens:
        return tenant, _hs_error(400, "BAD_REFRESH_TOKEN", "missing or invalid refresh token")
    hs = tenant.hubspot
    access = f"CNsandbox-{tenant.name}-{secrets.token_urlsafe(24)}"
    hs.issue_token(access)
    if app.rotate:
        app.refresh_tokens.discard(refresh)
        refresh = f"rt-{tenant.name}-{secrets.token_urlsafe(16)}"
        app.refresh_tokens.add(refresh)
    return tenant, Response(200, {"token_type": "bearer", "refresh_token": refresh,
                                  "access_token": access, "expires_in": int(hs.token_lifetime)
                                  if hs.token_lifetime >= 1 else hs.token_lifetime})


def _token_info(state: SandboxState, token: str, *, private_app: bool = False) -> tuple[Tenant | None, Response]:
    tenant = state.tenant_for("hubspot", token)
    if not tenant.hubspot.valid_token(token):
        return tenant, _hs_error(404, "NOT_FOUND", "The access token is unknown or has expired")
    scopes = sorted(tenant.hubspot.token_scopes.get(token, tenant.hubspot.scopes))
    if private_app:
        return tenant, Response(200, {"userId": 1, "hubId": 1000 + len(tenant.name), "appId": 1,
                                      "scopes": scopes})
    expires = tenant.hubspot.token_expiry.get(token)
    return tenant, Response(200, {
        "token": token, "user": "integration@sandbox.invalid", "hub_domain": f"{tenant.name}.sandbox",
        "scopes": scopes, "hub_id": 1000 + len(tenant.name), "app_id": 1, "user_id": 1,
        "token_type": "access",
        "expires_in": max(0, int(expires - time.time())) if expires else 1800,
    })
