"""Who may use the console: a users file with scrypt-hashed passwords and a role each (or, behind
oauth2-proxy, the proxy's trusted headers), signed session cookies, a per-session CSRF token, and
the throttle on failed logins.

The users file is JSON, `{"alice": {"role": "admin", "password": "scrypt$…"}}`; a hash comes from
`crm-sync console --hash-password` (the password on stdin), so no clear password is ever stored.
The file is read again whenever it changes, and a session is only as good as the entry it was
issued for: a changed password or role, a removed user, a logout, or an idle browser ends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

from processors.config import CONSOLE_ROLES

ROLES = CONSOLE_ROLES
# scrypt cost: 2^14 × 8 × 1 is ~16 MiB and ~50 ms a login here, the stdlib's documented baseline.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# A users-file hash cheaper than the baseline is refused at start; one dearer than this much
# memory would let the file make every login a memory bomb.
SCRYPT_MAX_BYTES = 64 * 2**20
SESSION_SECONDS = 8 * 3600
MIN_PASSWORD_LENGTH = 12
MAX_NAME_LENGTH = 200
MAX_PASSWORD_LENGTH = 1024

log = logging.getLogger(__name__)


class AuthError(ValueError):
    """A users file that cannot be used (shown as one line at start)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def same(a: str, b: str) -> bool:
    """Constant-time equality for any text a browser may send (compare_digest takes only ASCII str)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def password_problem(password: str) -> str | None:
    """Why `password` is too weak to be hashed (or to log in with), or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(set(password)) < 5:
        return "a password needs at least 5 different characters"
    return None


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def hash_problem(stored: str) -> str | None:
    """Why a users-file hash is weaker (or dearer) than this console accepts, or None."""
    try:
        scheme, n_text, r_text, p_text, salt, digest = stored.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt_bytes, digest_bytes = _unb64(salt), _unb64(digest)
    except ValueError:
        return "a scrypt password hash (crm-sync console --hash-password)"
    if scheme != "scrypt" or n & (n - 1) or n < SCRYPT_N or r < SCRYPT_R or not 1 <= p <= 4:
        return f"a scrypt hash with n >= {SCRYPT_N}, r >= {SCRYPT_R}, p 1..4"
    if 128 * n * r * p > SCRYPT_MAX_BYTES:
        return f"a scrypt hash needing at most {SCRYPT_MAX_BYTES >> 20} MiB"
    if len(salt_bytes) < 16 or len(digest_bytes) < 32:
        return "a scrypt hash with a 16-byte salt and a 32-byte digest"
    return None


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(expected), maxmem=2 * SCRYPT_MAX_BYTES,
        )
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def may_change(self) -> bool:
        return self.role == "admin"


def _parse(raw: object, where: str) -> dict[str, tuple[str, str]]:
    if not isinstance(raw, dict) or not raw:
        raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: {where} must map user names to {{role, password}}")
    entries: dict[str, tuple[str, str]] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or not str(entry.get("password", "")).startswith("scrypt$"):
            raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: user {name!r} needs a role ({'/'.join(ROLES)}) and a scrypt password hash")
        if problem := hash_problem(entry["password"]):
            raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: user {name!r}: expected {problem}")
        entries[name] = (entry["role"], entry["password"])
    return entries


class Users:
    """The users file: read at start (a bad file stops the start) and again whenever it changes.

    A file that turns bad while running lets nobody in until it is mended (it may be half
    written, or a user was meant to be removed)."""

    def __init__(self, entries: dict[str, tuple[str, str]], path: Path | None = None) -> None:
        self._entries = entries  # name -> (role, password hash)
        self._path = path
        self._stamp = self._file_stamp()
        self._lock = threading.Lock()
        # A constant-time answer for unknown names too: they are checked against a real hash.
        self._dummy = hash_password(secrets.token_hex(8))

    @classmethod
    def load(cls, path: Path) -> "Users":
        return cls(cls._read(path), path)

    @staticmethod
    def _read(path: Path) -> dict[str, tuple[str, str]]:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: cannot read {path}: {exc}") from None
        return _parse(raw, str(path))

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _current(self) -> dict[str, tuple[str, str]]:
        if self._path is None:
            return self._entries
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._entries = self._read(self._path)
                    log.info("console users file read again", extra={"users": len(self._entries)})
                except AuthError as exc:
                    self._entries = {}
                    log.error("console users file unusable, nobody may log in", extra={"reason": str(exc)})
            return self._entries

    def entry(self, name: str) -> tuple[str, str] | None:
        """(role, password hash) of `name` as the file says now."""
        return self._current().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        role, stored = self._current().get(name, ("", self._dummy))
        ok = verify_password(password, stored)
        return User(name, role) if ok and role else None


def _in(address: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header (a request's headers are a multidict; a plain mapping has one)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [headers[name]] if name in headers else []


def _printable(text: str) -> bool:
    return bool(text) and len(text) <= MAX_NAME_LENGTH and text.isprintable()


@dataclass(frozen=True)
class TrustedHeaders:
    """Single sign-on behind oauth2-proxy: the proxy authenticates, and says who in
    X-Forwarded-User (or -Email) and X-Forwarded-Groups. Those headers are believed only from
    the configured proxy addresses; the role is the best one the groups map to."""

    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    roles: Mapping[str, str]

    def from_proxy(self, remote: str | None) -> bool:
        return _in(remote, self.proxies)

    def user(self, headers: Mapping[str, str]) -> User | None:
        """The user the proxy names, with a role; None when it names nobody, names twice (a
        header the client smuggled beside the proxy's) or no group has a role."""
        values = {name: _all(headers, name) for name in ("X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups")}
        if any(len(v) > 1 for v in values.values()):
            return None
        name = ((values["X-Forwarded-User"] or values["X-Forwarded-Email"] or [""])[0]).strip()
        if not _printable(name):
            return None
        groups = {g.strip() for g in (values["X-Forwarded-Groups"] or [""])[0].split(",")}
        found = {self.roles[g] for g in groups if g in self.roles}
        role = next((r for r in ROLES if r in found), None)
        return User(name, role) if role else None


def client_address(remote: str | None, forwarded_for: str | None, proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """Whom to throttle: the peer, or behind a trusted proxy the address it forwarded for."""
    if forwarded_for and _in(remote, proxies):
        last = forwarded_for.split(",")[-1].strip()
        if _in(last, [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]):
            return last
    return remote or "?"


class LoginThrottle:
    """Failed logins per user name and per client address in a sliding window: past the limit a
    login is refused before any password is hashed, until the oldest failure leaves the window.
    Bounded memory: at most `max_keys` names and addresses are remembered."""

    def __init__(self, per_user: int, per_address: int, window: float, max_keys: int = 10_000) -> None:
        self._limits = {"u": per_user, "a": per_address}
        self._window = window
        self._max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def retry_after(self, user: str, address: str, now: float) -> float:
        """Seconds until a login for `user` from `address` may be tried; 0 when it may now."""
        wait = 0.0
        for key in (("u", user), ("a", address)):
            times = self._recent(key, now)
            if len(times) >= self._limits[key[0]]:
                wait = max(wait, times[-self._limits[key[0]]] + self._window - now)
        return wait

    def failed(self, user: str, address: str, now: float) -> None:
        if len(self._failures) >= self._max_keys:
            self._prune(now)
        for key in (("u", user), ("a", address)):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times

    def succeeded(self, user: str) -> None:
        self._failures.pop(("u", user), None)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._failures if not self._recent(k, now)]:
            del self._failures[key]
        while len(self._failures) >= self._max_keys:  # still full: forget the oldest
            del self._failures[min(self._failures, key=lambda k: self._failures[k][-1])]


class Logouts:
    """When each user last logged out (microseconds). Kept in a file when given one, so a restart,
    or another console process sharing the volume, still ends the sessions from before a logout;
    the file is read again whenever it changes. Entries older than a session's 8 hours are dropped."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._at: dict[str, int] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        if self._path is None:
            return
        try:
            st = os.stat(self._path)
        except OSError:
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            raw = json.loads(self._path.read_text())
            for name, at in raw.items():  # another process's logouts too; the later one counts
                self._at[str(name)] = max(int(at), self._at.get(str(name), -1))
        except (OSError, ValueError, TypeError, AttributeError):
            log.warning("console logouts file unreadable, keeping what this process knows", extra={"path": str(self._path)})

    def of(self, name: str) -> int:
        with self._lock:
            self._refresh()
            return self._at.get(name, -1)

    def record(self, name: str, at: int) -> None:
        with self._lock:
            self._refresh()
            oldest = at - SESSION_SECONDS * 1_000_000
            self._at = {k: v for k, v in self._at.items() if v > oldest}
            self._at[name] = max(at, self._at.get(name, -1))
            if self._path is None:
                return
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}")
                temporary.write_text(json.dumps(self._at))
                os.replace(temporary, self._path)
            except OSError as exc:
                log.warning("console logouts file not written: a restart forgets this logout", extra={"reason": str(exc)})


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires: int
    issued: int = 0  # microseconds: logouts after this end it
    active: int = 0  # seconds: the last request, for the idle timeout
    stamp: str = ""  # the user's generation when issued (password hash and role)


class Sessions:
    """Stateless sessions: the cookie carries user, role, CSRF token, expiry, last activity and the
    user's generation, HMAC-signed. A logout is remembered per user (`Logouts`), and ends every
    session of that user issued before it."""

    def __init__(self, secret: str | None, idle_seconds: float = SESSION_SECONDS, logouts: Logouts | None = None) -> None:
        # Without a configured secret, sessions last as long as the process.
        self._key = (secret or secrets.token_hex(32)).encode()
        self.idle_seconds = idle_seconds
        self._logouts = logouts or Logouts()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("utf-8", "surrogatepass"), hashlib.sha256).digest())

    def stamp(self, user: User, credential: str) -> str:
        """A user's generation: changes when the role or the password hash does."""
        return self._sign(f"generation\0{user.name}\0{user.role}\0{credential}")[:22]

    def _encode(self, session: Session) -> str:
        payload = _b64(json.dumps({
            "u": session.user.name, "r": session.user.role, "c": session.csrf, "e": session.expires,
            "i": session.issued, "a": session.active, "g": session.stamp,
        }).encode())
        return f"{payload}.{self._sign(payload)}"

    def issue(self, user: User, credential: str = "", now: float | None = None) -> tuple[str, Session]:
        at = time.time() if now is None else now
        session = Session(user, secrets.token_urlsafe(24), int(at + SESSION_SECONDS), int(at * 1e6), int(at), self.stamp(user, credential))
        return self._encode(session), session

    def refresh(self, session: Session, now: float | None = None) -> str:
        """The same session, active now (the idle timeout starts again)."""
        return self._encode(replace(session, active=int(time.time() if now is None else now)))

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        at = time.time() if now is None else now
        if not cookie or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not same(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(
                User(str(data["u"]), str(data["r"])), str(data["c"]), int(data["e"]), int(data["i"]), int(data["a"]), str(data["g"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < at or session.user.role not in ROLES or at - session.active > self.idle_seconds:
            return None
        if session.issued <= self._logouts.of(session.user.name):
            return None
        return session

    def end(self, user: User, now: float | None = None) -> None:
        """Logout: every session of `user` issued until now is over."""
        self._logouts.record(user.name, int((time.time() if now is None else now) * 1e6))

    def seal(self, text: str) -> str:
        """`text` signed (not secret): a one-shot message carried by a cookie across a redirect."""
        payload = _b64(text.encode())
        return f"{payload}.{self._sign('seal' + payload)}"

    def unseal(self, sealed: str) -> str | None:
        payload, _, signature = sealed.rpartition(".")
        if not payload or not same(signature, self._sign("seal" + payload)):
            return None
        try:
            return _unb64(payload).decode()
        except ValueError:
            return None

    def token(self, purpose: str) -> str:
        """A signed token for forms shown before a session exists (the login form)."""
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign(purpose + nonce)}"

    def check_token(self, purpose: str, token: str) -> bool:
        nonce, _, signature = token.partition(".")
        return bool(nonce) and same(signature, self._sign(purpose + nonce))


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and same(session.csrf, submitted or "")
