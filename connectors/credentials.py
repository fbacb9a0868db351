"""Per-company CRM credentials read from the secrets directory.

Layout (``$CRM_SYNC_SECRETS_DIR``, default ``./secrets``)::

    <company_id>/salesforce.json   {"instance_url": ..., "session_id": ...}
                                   or {"username", "password", "security_token", "domain"?}
                                   or {"consumer_key", "consumer_secret", "domain" | "my_domain_url"}
                                      (client credentials)
                                   or {"consumer_key", "username", "private_key_file",
                                       "login_url"?: "https://login.salesforce.com"}   (JWT bearer)
                                   plus "action_id_field"? (written by ``crm-sync crm prepare``)
    <company_id>/hubspot.json      {"access_token": ..., "base_url"?: "https://api.hubapi.com"}
                                   or {"client_id", "client_secret", "refresh_token", "token_url"?}
                                      (public OAuth app; a rotated refresh token is written back)
                                   plus "action_id_property"?

A company without its own directory has no credentials (``CredentialsMissing``, naming the file
to create): ``_default/`` belongs to some other org, so using it silently would write one
company's bookings into another company's CRM. Only with ``allow_default=True`` (demos and tests)
does a company with **no directory at all** use the files under ``_default/``; a company
directory that exists but lacks a CRM's file never falls back to the default's.

Files are re-read when they change on disk (secret rotation) and when ``invalidate()`` or
``reload()`` is called, which the connectors do after a 401. Secrets never appear in ``repr``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from connectors.errors import PermanentError

DEFAULT_HUBSPOT_BASE_URL = "https://api.hubapi.com"
DEFAULT_DIRECTORY = "_default"
_COMPANY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CredentialsMissing(PermanentError):
    """No usable credentials file for this company and CRM."""

    def __init__(self, crm: str, reason: str = "no credentials are configured for this CRM") -> None:
        super().__init__(crm, "CREDENTIALS_MISSING", None, reason)


class CredentialsInvalid(PermanentError):
    """The credentials file exists but cannot be used (bad JSON or missing keys)."""

    def __init__(self, crm: str, reason: str) -> None:
        super().__init__(crm, "CREDENTIALS_INVALID", None, reason)


@dataclass(frozen=True, repr=False)
class SalesforceCredentials:
    """Either a session (``instance_url`` + ``session_id``) or a login configuration."""

    instance_url: str | None = None
    session_id: str | None = None
    username: str | None = None
    password: str | None = None
    security_token: str | None = None
    consumer_key: str | None = None
    consumer_secret: str | None = None
    domain: str | None = None
    # The org's External ID field on Task holding our action id (idempotent creates), if it has one.
    action_id_field: str | None = None
    # JWT bearer: the PEM private key whose certificate is uploaded to the Connected App.
    private_key_file: str | None = None
    login_url: str | None = None
    # Client credentials: the org's My Domain URL (``domain`` is the older, host-prefix form).
    my_domain_url: str | None = None

    @property
    def auth_type(self) -> str:
        """``session``, ``password``, ``jwt`` or ``client_credentials``."""
        if self.username and self.password:
            return "password"
        if self.consumer_key and self.username and self.private_key_file:
            return "jwt"
        if self.consumer_key and self.consumer_secret:
            return "client_credentials"
        return "session"

    @property
    def oauth(self) -> bool:
        """True for the flows this project runs itself against ``/services/oauth2/token``."""
        return self.auth_type in ("jwt", "client_credentials")

    @property
    def token_base_url(self) -> str:
        """Where the token endpoint lives: the login URL (JWT) or the My Domain URL."""
        if self.auth_type == "jwt":
            return (self.login_url or "https://login.salesforce.com").rstrip("/")
        return (self.my_domain_url or f"https://{self.domain}.salesforce.com").rstrip("/")

    @property
    def can_login(self) -> bool:
        """True when a fresh session can be obtained without operator action."""
        return self.auth_type != "session"

    def salesforce_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``simple_salesforce.Salesforce``."""
        if self.auth_type == "password":
            kwargs = {
                "username": self.username or "",
                "password": self.password or "",
                "security_token": self.security_token or "",
            }
        elif self.auth_type == "client_credentials":
            kwargs = {
                "consumer_key": self.consumer_key or "",
                "consumer_secret": self.consumer_secret or "",
            }
        else:
            kwargs = {"session_id": self.session_id or "", "instance_url": self.instance_url or ""}
        if self.domain and self.auth_type != "session":
            kwargs["domain"] = self.domain
        return kwargs

    def __repr__(self) -> str:
        return f"SalesforceCredentials(instance_url={self.instance_url!r}, auth={self.auth_type!r})"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SalesforceCredentials:
        """Validate a parsed ``salesforce.json``."""
        known = {k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__ and v}
        creds = cls(**known)
        if creds.auth_type == "session" and not (creds.instance_url and creds.session_id):
            raise CredentialsInvalid(
                "salesforce",
                "salesforce.json needs instance_url and session_id, username/password/"
                "security_token, or consumer_key/consumer_secret/domain",
            )
        if creds.auth_type == "client_credentials" and not (creds.domain or creds.my_domain_url):
            raise CredentialsInvalid("salesforce", "client credentials need my_domain_url (or domain)")
        for name in ("login_url", "my_domain_url"):
            value = getattr(creds, name)
            if value and not value.startswith("https://"):
                raise CredentialsInvalid("salesforce", f"{name} must be an https:// URL")
        return creds


@dataclass(frozen=True, repr=False)
class HubSpotCredentials:
    """A private-app token, or a public OAuth app's client id/secret and refresh token."""

    access_token: str = ""
    base_url: str = DEFAULT_HUBSPOT_BASE_URL
    # The portal's unique meeting/note property holding our action id, if it has one.
    action_id_property: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = None
    token_url: str | None = None

    @property
    def auth_type(self) -> str:
        """``oauth`` (refresh token) or ``private_app`` (a static token)."""
        if self.client_id and self.client_secret and self.refresh_token:
            return "oauth"
        return "private_app"

    @property
    def oauth_token_url(self) -> str:
        return self.token_url or f"{self.base_url}/oauth/v1/token"

    def __repr__(self) -> str:
        return f"HubSpotCredentials(base_url={self.base_url!r})"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HubSpotCredentials:
        """Validate a parsed ``hubspot.json``."""
        oauth = {k: str(data[k]) for k in ("client_id", "client_secret", "refresh_token", "token_url")
                 if data.get(k)}
        token = data.get("access_token")
        complete = all(k in oauth for k in ("client_id", "client_secret", "refresh_token"))
        if not complete and (not token or not isinstance(token, str)):
            raise CredentialsInvalid(
                "hubspot", "hubspot.json needs an access_token, or client_id/client_secret/refresh_token")
        base_url = str(data.get("base_url") or DEFAULT_HUBSPOT_BASE_URL).rstrip("/")
        prop = data.get("action_id_property")
        return cls(access_token=str(token or ""), base_url=base_url,
                   action_id_property=str(prop) if prop else None, **oauth)


C = TypeVar("C", SalesforceCredentials, HubSpotCredentials)


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]
    value: SalesforceCredentials | HubSpotCredentials


class CredentialStore:
    """Reads and caches credentials per company; thread-safe (connectors run in executors)."""

    def __init__(
        self, secrets_dir: str | os.PathLike[str] | None = None, *, allow_default: bool = False
    ) -> None:
        self.secrets_dir = Path(secrets_dir or os.environ.get("CRM_SYNC_SECRETS_DIR") or "secrets")
        self.allow_default = allow_default
        self._cache: dict[Path, _Cached] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"CredentialStore(secrets_dir={str(self.secrets_dir)!r}, "
                f"allow_default={self.allow_default!r})")

    def salesforce(self, company_id: str, *, fresh: bool = False) -> SalesforceCredentials:
        """The company's Salesforce credentials; ``fresh`` re-reads the file (after a 401)."""
        if fresh:
            self.invalidate(company_id, "salesforce")
        return self._get(company_id, "salesforce", SalesforceCredentials)

    def hubspot(self, company_id: str, *, fresh: bool = False) -> HubSpotCredentials:
        """The company's HubSpot credentials; ``fresh`` re-reads the file (after a 401)."""
        if fresh:
            self.invalidate(company_id, "hubspot")
        return self._get(company_id, "hubspot", HubSpotCredentials)

    def update(self, company_id: str, crm: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the company's ``<crm>.json`` atomically (a temp file in the same
        directory, then a rename), keeping the file's mode (0600 for a new one): a crash leaves
        the old file or the new one, never half of either. Used for a rotated refresh token and
        the field ``crm prepare`` created."""
        path = self._path(company_id, crm)
        with self._lock:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                mode = path.stat().st_mode & 0o777
            except FileNotFoundError:
                raise self._missing(company_id, crm) from None
            except (OSError, ValueError):
                raise CredentialsInvalid(crm, f"{crm}.json is not readable JSON") from None
            if not isinstance(data, dict):
                raise CredentialsInvalid(crm, f"{crm}.json must hold a JSON object")
            data.update(changes)
            fd, tmp = tempfile.mkstemp(prefix=f".{crm}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=2)
                    out.write("\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, mode or 0o600)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            self._cache.pop(path, None)

    def salesforce_password_companies(self) -> list[str]:
        """Companies whose salesforce.json uses the username-password flow (being retired)."""
        found = []
        for path in sorted(self.secrets_dir.glob("*/salesforce.json")):
            company = path.parent.name
            try:
                creds = self._get(company, "salesforce", SalesforceCredentials) if company != DEFAULT_DIRECTORY \
                    else SalesforceCredentials.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (PermanentError, OSError, ValueError):
                continue
            if creds.auth_type == "password":
                found.append(company)
        return found

    def invalidate(self, company_id: str, crm: str) -> None:
        """Forget one cached file, e.g. after the CRM answered 401."""
        with self._lock:
            self._cache.pop(self._path(company_id, crm), None)

    def reload(self) -> None:
        """Forget everything cached; the next lookups read the files again."""
        with self._lock:
            self._cache.clear()

    def _path(self, company_id: str, crm: str) -> Path:
        if not _COMPANY_ID.match(company_id) or company_id == DEFAULT_DIRECTORY:
            raise CredentialsMissing(crm, "the company id cannot name a secrets directory")
        directory = self.secrets_dir / company_id
        if self.allow_default and not directory.is_dir():
            directory = self.secrets_dir / DEFAULT_DIRECTORY
        return directory / f"{crm}.json"

    def _missing(self, company_id: str, crm: str) -> CredentialsMissing:
        """Says which file to create: paths and ids only, never a file's content."""
        wanted = self.secrets_dir / company_id / f"{crm}.json"
        return CredentialsMissing(crm, f"no {crm} credentials for this company: create {wanted}")

    def _get(self, company_id: str, crm: str, cls: type[C]) -> C:
        path = self._path(company_id, crm)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise self._missing(company_id, crm) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp and isinstance(cached.value, cls):
            return cached.value
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._missing(company_id, crm) from None
        except (OSError, ValueError):
            raise CredentialsInvalid(crm, f"{crm}.json is not readable JSON") from None
        if not isinstance(data, dict):
            raise CredentialsInvalid(crm, f"{crm}.json must hold a JSON object")
        value = cls.from_dict(data)
        with self._lock:
            self._cache[path] = _Cached(stamp, value)
        return value
