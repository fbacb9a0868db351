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
                                      (public OAuth app; a rotated refresh token is kept in the token directory)
                                   plus "action_id_property"?

Every URL a secret is sent to must be https on the CRM's own domains (``EndpointPolicy``; the
operator's ``CRM_SYNC_CRM_ALLOWED_HOSTS`` may name more), and ``private_key_file`` must resolve
inside the directory that holds the credentials file: a file naming another host or another
tenant's key is refused (``EndpointRefused``, ``CredentialsInvalid``), as a permanent error.

The secrets directory is mounted read-only in both shipped deployments, so a rotated HubSpot
refresh token goes to the writable token directory (``token_dir``: ``<dir>/<company>/<crm>.json``),
which is read back over the mounted file for as long as the mounted file still holds the token it
replaced (a new authorization mounted later wins). ``refresh_lease`` serialises refreshers of one
company, across threads and, through an ``fcntl`` lock on the shared token directory, replicas.

A company without its own directory has no credentials (``CredentialsMissing``, naming the file
to create): ``_default/`` belongs to some other org, so using it silently would write one
company's bookings into another company's CRM. Only with ``allow_default=True`` (demos and tests)
does a company with **no directory at all** use the files under ``_default/``; a company
directory that exists but lacks a CRM's file never falls back to the default's.

Files are re-read when they change on disk (secret rotation) and when ``invalidate()`` or
``reload()`` is called, which the connectors do after a 401. Secrets never appear in ``repr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from connectors.errors import HUBSPOT, SALESFORCE, PermanentError, TransientError

DEFAULT_HUBSPOT_BASE_URL = "https://api.hubapi.com"
DEFAULT_DIRECTORY = "_default"
_COMPANY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CredentialsMissing(PermanentError):
    """No usable credentials file for this company and CRM."""

    def __init__(self, crm: str, reason: str = "no credentials are configured for this CRM") -> None:
        super().__init__(crm, "CREDENTIALS_MISSING", None, reason)


class CredentialsInvalid(PermanentError):
    """The credentials file exists but cannot be used (bad JSON or missing keys)."""

    def __init__(self, crm: str, reason: str, code: str = "CREDENTIALS_INVALID") -> None:
        super().__init__(crm, code, None, reason)


class EndpointRefused(CredentialsInvalid):
    """A credentials file, or a CRM's token answer, names a URL its secrets must not be sent to."""

    def __init__(self, crm: str, reason: str) -> None:
        super().__init__(crm, reason, "ENDPOINT_REFUSED")


# ---- where secrets may go ---------------------------------------------------------------------------

# The CRMs' own API, login and My Domain hosts. ``*.x`` matches any host below ``x``, not ``x`` itself.
CRM_DOMAINS: dict[str, tuple[str, ...]] = {
    SALESFORCE: ("*.salesforce.com", "*.force.com"),
    HUBSPOT: ("api.hubapi.com", "*.hubapi.com", "api.hubspot.com"),
}
_HOST = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# Strict on purpose: no user info, backslash, whitespace or control character, so the host checked
# here is the host every HTTP library connects to.
_URL = re.compile(rf"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>{_HOST}\.?|\[[0-9A-Fa-f:.]+\])"
                  r"(?::(?P<port>[0-9]{1,5}))?(?P<rest>[/?#][^\s\\\x00-\x1f\x7f]*)?")
_ENTRY = re.compile(rf"(?:(?P<scheme>https?)://)?(?P<host>(?:\*\.)?{_HOST}|\[[0-9A-Fa-f:.]+\])")


def _host_matches(host: str, pattern: str) -> bool:
    return host.endswith(pattern[1:]) if pattern.startswith("*.") else host == pattern


@dataclass(frozen=True)
class EndpointPolicy:
    """https to the CRM's own domains, plus the operator's allow-list (``CRM_SYNC_CRM_ALLOWED_HOSTS``):
    ``host`` or ``*.domain`` entries allow https to them; ``http://host`` also allows plain http to
    that one host (the CRM sandbox serves HubSpot over http). Nothing allows http by default."""

    allowed: tuple[str, ...] = ()
    allowed_http: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | Iterable[str] | None) -> EndpointPolicy:
        """``"sandbox.internal, *.proxy.example, http://127.0.0.1"``; a bad entry is a ValueError."""
        entries = text.split(",") if isinstance(text, str) else list(text or ())
        https: list[str] = []
        http: list[str] = []
        for raw in (e.strip() for e in entries):
            found = _ENTRY.fullmatch(raw) if raw else None
            if raw and found is None:
                raise ValueError(f"CRM_SYNC_CRM_ALLOWED_HOSTS: expected host, *.domain or http://host, got {raw!r}")
            if found is None:
                continue
            host = found["host"].lower()
            https.append(host)
            if found["scheme"] == "http":
                if host.startswith("*."):
                    raise ValueError(f"CRM_SYNC_CRM_ALLOWED_HOSTS: plain http needs one named host, got {raw!r}")
                http.append(host)
        return cls(tuple(dict.fromkeys(https)), tuple(dict.fromkeys(http)))

    def check(self, crm: str, name: str, url: str) -> str:
        """``url`` without its trailing slash if ``crm``'s secrets may go there, else ``EndpointRefused``
        naming the key, scheme and host (never the path or query, which may carry a token)."""
        found = _URL.fullmatch(url.strip()) if isinstance(url, str) else None
        if found is None:
            raise EndpointRefused(crm, f"{name} is refused: not a plain https://host URL "
                                       "(user info, spaces and backslashes are not allowed)")
        scheme, host = found["scheme"].lower(), found["host"].lower().rstrip(".")
        where = f"{name} {scheme}://{host}"
        if scheme == "http" and host not in self.allowed_http or scheme not in ("http", "https"):
            raise EndpointRefused(crm, f"{where} is refused: only https is allowed (plain http only to a "
                                       "host CRM_SYNC_CRM_ALLOWED_HOSTS lists as http://host)")
        domains = CRM_DOMAINS.get(crm, ())
        if not any(_host_matches(host, p) for p in (*domains, *self.allowed)):
            raise EndpointRefused(crm, f"{where} is refused: not a {crm} host ({', '.join(domains)}) "
                                       "nor in CRM_SYNC_CRM_ALLOWED_HOSTS")
        return url.strip().rstrip("/")

    def check_instance(self, name: str, instance: str) -> str:
        """A Salesforce ``instance_url``, which may be a bare ``host[:port]`` (https implied)."""
        self.check(SALESFORCE, name, instance if "://" in instance else f"https://{instance}")
        return instance.strip().rstrip("/")


STRICT = EndpointPolicy()


def _key_inside(directory: Path, key_file: str, only: str | None = None) -> str:
    """The real path of ``key_file`` (relative to ``directory``) if it lies inside ``directory``;
    in the flat layout, where every company's files share one directory, it must also be the
    company's own ``<company>.salesforce.key`` (``only``)."""
    base = os.path.realpath(directory)
    joined = target = ""
    if "\x00" not in key_file:  # an embedded NUL names no file
        joined = os.path.normpath(os.path.join(base, key_file))
        target = os.path.realpath(joined)
    if only is not None and joined != os.path.join(base, only):
        raise CredentialsInvalid(SALESFORCE, f"private_key_file must be {only} (the flat layout: one directory "
                                             "for every company, so each names its own key)")
    if not target or os.path.commonpath([base, target]) != base:
        raise CredentialsInvalid(SALESFORCE, "private_key_file must name a file inside this company's "
                                             f"secrets directory ({directory})")
    return target


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
    # Where the token endpoint may send the session next (a token answer's ``instance_url``).
    endpoints: EndpointPolicy = STRICT

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

    def login_endpoint(self) -> tuple[str, str]:
        """``(key, url)`` of where the flow logs in: the key of the file that names it, and the URL."""
        if self.auth_type == "jwt":
            return "login_url", self.token_base_url
        if self.my_domain_url and self.auth_type == "client_credentials":
            return "my_domain_url", self.token_base_url
        return "domain", f"https://{self.domain or 'login'}.salesforce.com"

    def instance_for(self, token_instance: str | None) -> str:
        """The API URL for an OAuth session: the token answer's ``instance_url`` if it is a Salesforce
        host (a token answer is trusted no more than the file), else the configured one."""
        if token_instance:
            return self.endpoints.check_instance("the token answer's instance_url", token_instance)
        return self.instance_url or self.token_base_url

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
    def from_dict(cls, data: dict[str, Any], endpoints: EndpointPolicy = STRICT,
                  directory: Path | None = None, key_name: str | None = None) -> SalesforceCredentials:
        """Validate a parsed ``salesforce.json``: its flow, its URLs, and (given the directory that
        holds it) that ``private_key_file`` lies inside that directory."""
        known = {k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__ and k != "endpoints" and v}
        creds = cls(**known, endpoints=endpoints)
        if creds.auth_type == "session" and not (creds.instance_url and creds.session_id):
            raise CredentialsInvalid(
                "salesforce",
                "salesforce.json needs instance_url and session_id, username/password/"
                "security_token, or consumer_key/consumer_secret/domain",
            )
        if creds.auth_type == "client_credentials" and not (creds.domain or creds.my_domain_url):
            raise CredentialsInvalid("salesforce", "client credentials need my_domain_url (or domain)")
        if creds.instance_url:
            endpoints.check_instance("instance_url", creds.instance_url)
        if creds.can_login:
            endpoints.check(SALESFORCE, *creds.login_endpoint())
        if creds.auth_type == "jwt" and directory is not None:
            creds = dataclasses.replace(creds, private_key_file=_key_inside(directory, creds.private_key_file or "", key_name))
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
    endpoints: EndpointPolicy = STRICT

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
    def from_dict(cls, data: dict[str, Any], endpoints: EndpointPolicy = STRICT,
                  directory: Path | None = None, key_name: str | None = None) -> HubSpotCredentials:
        """Validate a parsed ``hubspot.json``: its flow and the URLs its token and secrets go to."""
        oauth = {k: str(data[k]) for k in ("client_id", "client_secret", "refresh_token", "token_url")
                 if data.get(k)}
        token = data.get("access_token")
        complete = all(k in oauth for k in ("client_id", "client_secret", "refresh_token"))
        if not complete and (not token or not isinstance(token, str)):
            raise CredentialsInvalid(
                "hubspot", "hubspot.json needs an access_token, or client_id/client_secret/refresh_token")
        base_url = endpoints.check(HUBSPOT, "base_url", str(data.get("base_url") or DEFAULT_HUBSPOT_BASE_URL))
        if "token_url" in oauth:
            oauth["token_url"] = endpoints.check(HUBSPOT, "token_url", oauth["token_url"])
        prop = data.get("action_id_property")
        return cls(access_token=str(token or ""), base_url=base_url,
                   action_id_property=str(prop) if prop else None, endpoints=endpoints, **oauth)


C = TypeVar("C", SalesforceCredentials, HubSpotCredentials)


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, ...]
    value: SalesforceCredentials | HubSpotCredentials


_CLASSES: dict[str, type[SalesforceCredentials] | type[HubSpotCredentials]] = {
    SALESFORCE: SalesforceCredentials, HUBSPOT: HubSpotCredentials,
}
LEASE_WAIT_S = 60.0  # a refresh is one HTTP call of at most 30 s; past this, try again later


def _digest(value: Any) -> str:
    """What a rotation remembers of the mounted value it replaced: never the value itself."""
    return hashlib.sha256(str(value or "").encode()).hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, -1)
    return (stat.st_mtime_ns, stat.st_size)


def _write_atomically(path: Path, data: dict[str, Any], mode: int) -> None:
    """A temp file in the same directory, fsync'd, then renamed: the old file or the new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CredentialStore:
    """Reads and caches credentials per company; thread-safe (connectors run in executors)."""

    def __init__(
        self, secrets_dir: str | os.PathLike[str] | None = None, *, allow_default: bool = False,
        allowed_hosts: str | Iterable[str] | None = None, token_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """``allowed_hosts``: ``CRM_SYNC_CRM_ALLOWED_HOSTS`` (``EndpointPolicy.parse``, ValueError if
        malformed); ``token_dir``: where rotated tokens are kept (writable; shared by replicas)."""
        self.secrets_dir = Path(secrets_dir or os.environ.get("CRM_SYNC_SECRETS_DIR") or "secrets")
        self.allow_default = allow_default
        self.endpoints = EndpointPolicy.parse(allowed_hosts)
        self.token_dir = Path(token_dir) if token_dir else None
        self._cache: dict[Path, _Cached] = {}
        self._lock = threading.Lock()
        self._leases: dict[Path, threading.Lock] = {}

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
        """Merge ``changes`` into the company's ``<crm>.json`` atomically, keeping the file's mode:
        the field ``crm prepare`` created, written by an operator where the file is writable.
        Rotated tokens go to ``rotate`` instead."""
        path = self._path(company_id, crm)
        with self._lock:
            data = self._read(company_id, crm, path)
            mode = path.stat().st_mode & 0o777
            data.update(changes)
            _write_atomically(path, data, mode or 0o600)
            self._cache.pop(path, None)

    def rotate(self, company_id: str, crm: str, changes: dict[str, Any]) -> None:
        """Keep rotated values (a new refresh token) in the token directory, atomically and 0600,
        with a digest of the mounted values they replace; the mounted file is never written."""
        path = self._path(company_id, crm)
        if self.token_dir is None:
            raise CredentialsInvalid(crm, "a rotated token cannot be kept: no token directory "
                                          "(CRM_SYNC_TOKEN_DIR) is configured")
        kept = self._kept(path, crm)
        with self._lock:
            mounted = self._read(company_id, crm, path)
            previous = self._overlay(kept, mounted)
            values = {**(previous or {}), **changes}
            replaces = {key: _digest(mounted.get(key)) for key in values}
            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomically(kept, {"replaces": replaces, "values": values, "rotated_at": int(time.time())}, 0o600)
            self._cache.pop(path, None)

    @contextlib.contextmanager
    def refresh_lease(self, company_id: str, crm: str) -> Iterator[SalesforceCredentials | HubSpotCredentials]:
        """Hold the company's refresh lease and yield its credentials read afresh: whoever refreshes
        next uses the token the previous holder rotated to. Threads wait on a lock; replicas on an
        exclusive ``flock`` of ``<token_dir>/<company>/<crm>.lock``, for at most ``LEASE_WAIT_S``
        (then a ``TransientError``: try again later)."""
        path = self._path(company_id, crm)
        with self._lock:
            local = self._leases.setdefault(path, threading.Lock())
        if not local.acquire(timeout=LEASE_WAIT_S):
            raise TransientError(crm, "TOKEN_LEASE_BUSY", None, "another refresh of this company's token is under way")
        try:
            with self._file_lease(path, crm):
                self.invalidate(company_id, crm)
                yield self._get(company_id, crm, _CLASSES[crm])
        finally:
            local.release()

    @contextlib.contextmanager
    def _file_lease(self, path: Path, crm: str) -> Iterator[None]:
        if self.token_dir is None:
            yield
            return
        lock = self._kept(path, crm).with_suffix(".lock")
        try:
            lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise TransientError(crm, "TOKEN_DIR_UNAVAILABLE", None, "the token directory (CRM_SYNC_TOKEN_DIR) "
                                 f"cannot hold the refresh lease: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + LEASE_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TransientError(crm, "TOKEN_LEASE_BUSY", None,
                                             "another worker is refreshing this company's token") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def salesforce_password_companies(self) -> list[str]:
        """Companies whose salesforce.json uses the username-password flow (being retired)."""
        found = []
        for company, path in self._companies("salesforce"):
            try:
                creds = self._get(company, "salesforce", SalesforceCredentials) if company != DEFAULT_DIRECTORY \
                    else SalesforceCredentials.from_dict(json.loads(path.read_text(encoding="utf-8")),
                                                         self.endpoints, path.parent)
            except (PermanentError, OSError, ValueError):
                continue
            if creds.auth_type == "password":
                found.append(company)
        return found

    def refused(self) -> Iterator[tuple[str, str, CredentialsInvalid]]:
        """``(company, crm, error)`` for every company file that cannot be used as it stands (a
        refused endpoint, a foreign key file, bad JSON): named at start-up, before a delivery fails."""
        for crm, cls in _CLASSES.items():
            for company, path in self._companies(crm):
                if company == DEFAULT_DIRECTORY or not _COMPANY_ID.match(company):
                    continue
                try:
                    self._get(company, crm, cls)
                except CredentialsInvalid as error:
                    yield company, crm, error
                except PermanentError:
                    continue

    def invalidate(self, company_id: str, crm: str) -> None:
        """Forget one cached file, e.g. after the CRM answered 401."""
        with self._lock:
            self._cache.pop(self._path(company_id, crm), None)

    def reload(self) -> None:
        """Forget everything cached; the next lookups read the files again."""
        with self._lock:
            self._cache.clear()

    def _path(self, company_id: str, crm: str) -> Path:
        """``<company>/<crm>.json``; else, in the flat layout, ``<company>.<crm>.json`` in the
        secrets directory itself (one Kubernetes Secret mounted whole, updated in place by the
        kubelet: adding a company adds keys, not a volume); else ``_default/`` where allowed."""
        if not _COMPANY_ID.match(company_id) or company_id == DEFAULT_DIRECTORY:
            raise CredentialsMissing(crm, "the company id cannot name a secrets directory")
        directory = self.secrets_dir / company_id
        if not directory.is_dir():
            flat = self.secrets_dir / f"{company_id}.{crm}.json"
            if flat.exists():
                return flat
            if self.allow_default and not any((self.secrets_dir / f"{company_id}.{c}.json").exists() for c in _CLASSES):
                directory = self.secrets_dir / DEFAULT_DIRECTORY
        return directory / f"{crm}.json"

    def _owner(self, path: Path, crm: str) -> str:
        """Whose file it is: the directory's name, or in the flat layout the file's company part."""
        if path.parent == self.secrets_dir:
            return path.name[: -len(f".{crm}.json")]
        return path.parent.name

    def _companies(self, crm: str) -> Iterator[tuple[str, Path]]:
        """Every company with a file for ``crm``, in either layout (never ``_default``)."""
        for path in sorted(self.secrets_dir.glob(f"*/{crm}.json")):
            yield path.parent.name, path
        for path in sorted(self.secrets_dir.glob(f"*.{crm}.json")):
            yield path.name[: -len(f".{crm}.json")], path

    def _missing(self, company_id: str, crm: str) -> CredentialsMissing:
        """Says which file to create: paths and ids only, never a file's content."""
        wanted = self.secrets_dir / company_id / f"{crm}.json"
        return CredentialsMissing(crm, f"no {crm} credentials for this company: create {wanted}")

    def _kept(self, path: Path, crm: str) -> Path:
        """Where rotations of the file at ``path`` are kept (by the directory it came from, so
        companies sharing ``_default`` share its rotations)."""
        assert self.token_dir is not None
        return self.token_dir / self._owner(path, crm) / f"{crm}.json"

    @staticmethod
    def _overlay(kept: Path, mounted: dict[str, Any]) -> dict[str, Any] | None:
        """The kept values if they still apply: the mounted file holds what they replaced."""
        try:
            data = json.loads(kept.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        values, replaces = (data.get("values"), data.get("replaces")) if isinstance(data, dict) else (None, None)
        if not (isinstance(values, dict) and isinstance(replaces, dict) and set(values) == set(replaces)):
            return None
        if any(_digest(mounted.get(key)) != replaces[key] for key in values):
            return None  # a new authorization was mounted since: it wins
        return values

    def _read(self, company_id: str, crm: str, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._missing(company_id, crm) from None
        except (OSError, ValueError):
            raise CredentialsInvalid(crm, f"{crm}.json is not readable JSON") from None
        if not isinstance(data, dict):
            raise CredentialsInvalid(crm, f"{crm}.json must hold a JSON object")
        return data

    def _get(self, company_id: str, crm: str, cls: type[C]) -> C:
        path = self._path(company_id, crm)
        stamp = _stamp(path)
        if stamp[1] < 0:
            raise self._missing(company_id, crm)
        kept = self._kept(path, crm) if self.token_dir is not None else None
        if kept is not None:
            stamp += _stamp(kept)
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp and isinstance(cached.value, cls):
            return cached.value
        data = self._read(company_id, crm, path)
        if kept is not None:
            data.update(self._overlay(kept, data) or {})
        flat = path.parent == self.secrets_dir
        value = cls.from_dict(data, self.endpoints, path.parent, f"{company_id}.salesforce.key" if flat else None)
        with self._lock:
            self._cache[path] = _Cached(stamp, value)
        return value
