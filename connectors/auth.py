"""OAuth token flows for both CRMs, and the token cache the clients share.

Salesforce: the JWT bearer flow (an RS256 assertion signed with the Connected App's private key,
``iss`` = consumer key, ``sub`` = username, ``aud`` = login URL) and the client-credentials flow
(consumer key and secret against the org's My Domain). HubSpot: the refresh-token flow of a public
OAuth app (the refresh token may rotate; the caller persists the new one).

Token endpoints answer errors as ``{"error", "error_description"}`` (Salesforce) or
``{"status": "BAD_REFRESH_TOKEN", "message"}`` (HubSpot). They become an ``AuthError`` with our own
readable sentence (a dead letter an admin can act on), or a ``TransientError`` for 5xx/429.
Tokens never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

from connectors.errors import (
    HUBSPOT, SALESFORCE, AuthError, CrmError, TransientError, classify_network, is_network_error,
    parse_retry_after,
)

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 180  # Salesforce accepts an exp at most a few minutes ahead
EXPIRY_SKEW_S = 60.0  # refresh this long before the token's stated expiry (at most 10% of its life)
DEFAULT_LOGIN_URL = "https://login.salesforce.com"
DEFAULT_HUBSPOT_TOKEN_PATH = "/oauth/v1/token"

# Our sentences for the token endpoints' error codes: "<error>[/<description>]" → message.
_TOKEN_MESSAGES: dict[str, str] = {
    "invalid_grant/invalid assertion":
        "the login was refused: the JWT assertion's signature does not match the certificate "
        "uploaded to the Connected App (wrong private key?)",
    "invalid_grant/expired authorization code":
        "the login was refused: the JWT assertion had expired (check the worker's clock)",
    "invalid_grant/audience is invalid":
        "the login was refused: the JWT audience must be the login URL (login.salesforce.com, "
        "test.salesforce.com or the My Domain URL)",
    "invalid_grant/user hasn't approved this consumer":
        "the login was refused: the integration user is not pre-authorized for the Connected App "
        "(profile or permission set)",
    "invalid_grant/expired access/refresh token":
        "the login was refused: the refresh token was revoked or has expired",
    "invalid_grant/no client credentials user enabled":
        "the login was refused: the Connected App has no run-as user for the client credentials flow",
    "invalid_grant": "the login was refused (invalid grant)",
    "invalid_client_id": "the login was refused: the consumer key is unknown",
    "invalid_client": "the login was refused: the consumer key or secret is wrong",
    "unsupported_grant_type": "the login was refused: the Connected App does not allow this OAuth flow",
    "invalid_app_access": "the login was refused: the user may not use the Connected App",
    "BAD_REFRESH_TOKEN": "the login was refused: the HubSpot refresh token was revoked or is unknown",
    "BAD_CLIENT_ID": "the login was refused: the HubSpot app's client id is unknown",
    "BAD_CLIENT_SECRET": "the login was refused: the HubSpot app's client secret is wrong",
}


@dataclass(frozen=True, repr=False)
class Token:
    """An access token, where to use it (Salesforce ``instance_url``) and when it stops working."""

    access_token: str
    instance_url: str | None = None
    expires_at: float | None = None  # epoch seconds; None: until the CRM says otherwise (401)
    lifetime: float | None = None

    def __repr__(self) -> str:
        return f"Token(instance_url={self.instance_url!r}, expires_at={self.expires_at!r})"

    def fresh(self, now: float) -> bool:
        """Usable now, with a margin: refresh before the CRM would refuse it."""
        if self.expires_at is None:
            return True
        skew = min(EXPIRY_SKEW_S, 0.1 * (self.lifetime or EXPIRY_SKEW_S * 10))
        return now < self.expires_at - skew


@dataclass
class TokenCache:
    """Tokens per key (CRM, company); thread-safe, shared by the clients a worker rebuilds."""

    clock: Callable[[], float] = time.time
    _tokens: dict[Hashable, Token] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Hashable) -> Token | None:
        """The cached token if it is still fresh."""
        with self._lock:
            token = self._tokens.get(key)
        return token if token is not None and token.fresh(self.clock()) else None

    def put(self, key: Hashable, token: Token) -> None:
        with self._lock:
            self._tokens[key] = token

    def drop(self, key: Hashable) -> None:
        """Forget a token the CRM rejected."""
        with self._lock:
            self._tokens.pop(key, None)


def token_from(answer: Mapping[str, Any], now: float) -> Token:
    """A ``Token`` from a token endpoint's JSON answer (``expires_in`` optional)."""
    expires_in = answer.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, (int, float, str)) and str(expires_in) else None
    return Token(
        access_token=str(answer["access_token"]),
        instance_url=str(answer["instance_url"]).rstrip("/") if answer.get("instance_url") else None,
        expires_at=now + lifetime if lifetime is not None else None,
        lifetime=lifetime,
    )


def jwt_assertion(consumer_key: str, username: str, audience: str, private_key_pem: bytes | str,
                  now: float | None = None, lifetime: int = ASSERTION_LIFETIME_S) -> str:
    """The signed JWT of Salesforce's bearer flow (RS256)."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": consumer_key, "sub": username, "aud": audience.rstrip("/"),
              "exp": issued + lifetime, "iat": issued, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


def token_error(crm: str, status: int | None, body: Any, headers: Mapping[str, Any] | None = None) -> CrmError:
    """Classify a token endpoint's refusal: 5xx/429 transient, anything else an ``AuthError``."""
    data = body if isinstance(body, Mapping) else {}
    code = str(data.get("error") or data.get("status") or f"HTTP_{status}")
    detail = str(data.get("error_description") or "")
    if status is not None and (status >= 500 or status == 429):
        retry = parse_retry_after(str(headers.get("Retry-After")) if headers and headers.get("Retry-After") else None)
        return TransientError(crm, code, status, "the CRM's login service is temporarily unavailable",
                              retry_after=retry)
    message = (_TOKEN_MESSAGES.get(f"{code}/{detail}") or _TOKEN_MESSAGES.get(code)
               or f"the login was refused ({code})")
    return AuthError(crm, code, status, message)


def _post(crm: str, session: requests.Session, url: str, form: Mapping[str, str], timeout: float,
          now: Callable[[], float]) -> tuple[Token, dict[str, Any]]:
    try:
        resp = session.post(url, data=dict(form), headers={"Accept": "application/json"}, timeout=timeout)
    except Exception as exc:
        if is_network_error(exc):
            raise classify_network(crm, exc) from None
        raise
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        raise token_error(crm, resp.status_code, body, resp.headers)
    return token_from(body, now()), body


def salesforce_jwt(session: requests.Session, *, consumer_key: str, username: str, login_url: str,
                   private_key_file: str, audience: str | None = None, timeout: float = 30.0,
                   clock: Callable[[], float] = time.time) -> Token:
    """Log in with the JWT bearer flow at ``login_url``/services/oauth2/token."""
    try:
        key = Path(private_key_file).read_bytes()
    except OSError:
        raise AuthError(SALESFORCE, "PRIVATE_KEY_UNREADABLE", None,
                        "the private key file named by private_key_file cannot be read") from None
    try:
        assertion = jwt_assertion(consumer_key, username, audience or login_url, key, clock())
    except (ValueError, TypeError, jwt.PyJWTError):
        raise AuthError(SALESFORCE, "PRIVATE_KEY_INVALID", None,
                        "the private key file is not an RSA private key in PEM format") from None
    token, _ = _post(SALESFORCE, session, f"{login_url.rstrip('/')}/services/oauth2/token",
                     {"grant_type": JWT_GRANT, "assertion": assertion}, timeout, clock)
    return token


def salesforce_client_credentials(session: requests.Session, *, consumer_key: str, consumer_secret: str,
                                  my_domain_url: str, timeout: float = 30.0,
                                  clock: Callable[[], float] = time.time) -> Token:
    """Log in with the client-credentials flow (the Connected App's run-as user)."""
    token, _ = _post(SALESFORCE, session, f"{my_domain_url.rstrip('/')}/services/oauth2/token",
                     {"grant_type": "client_credentials", "client_id": consumer_key,
                      "client_secret": consumer_secret}, timeout, clock)
    return token


def hubspot_refresh(session: requests.Session, *, token_url: str, client_id: str, client_secret: str,
                    refresh_token: str, timeout: float = 30.0,
                    clock: Callable[[], float] = time.time) -> tuple[Token, str]:
    """A fresh access token and the refresh token to keep (the same one, or its rotation)."""
    token, body = _post(HUBSPOT, session, token_url,
                        {"grant_type": "refresh_token", "client_id": client_id,
                         "client_secret": client_secret, "refresh_token": refresh_token}, timeout, clock)
    return token, str(body.get("refresh_token") or refresh_token)


def plain_session(ca_bundle: str | None) -> requests.Session:
    """A session that ignores REQUESTS_CA_BUNDLE & co. so ``verify`` really applies."""
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_bundle or True
    return session
