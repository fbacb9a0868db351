"""Who may use the console: a users file with scrypt-hashed passwords and a role each, signed
session cookies, and a per-session CSRF token.

The users file is JSON, `{"alice": {"role": "admin", "password": "scrypt$…"}}`; a hash comes from
`crm-sync console --hash-password` (the password on stdin), so no clear password is ever stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

ROLES = ("admin", "viewer")
# scrypt cost: 2^14 × 8 × 1 is ~16 MiB and ~50 ms a login here, the stdlib's documented baseline.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_SECONDS = 8 * 3600


class AuthError(ValueError):
    """A users file that cannot be used (shown as one line at start)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def may_change(self) -> bool:
        return self.role == "admin"


class Users:
    """The users file, read once at start."""

    def __init__(self, entries: dict[str, tuple[str, str]]) -> None:
        self._entries = entries  # name -> (role, password hash)
        # A constant-time answer for unknown names too: they are checked against a real hash.
        self._dummy = hash_password(secrets.token_hex(8))

    @classmethod
    def load(cls, path: Path) -> "Users":
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: cannot read {path}: {exc}") from None
        if not isinstance(raw, dict) or not raw:
            raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: {path} must map user names to {{role, password}}")
        entries: dict[str, tuple[str, str]] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict) or entry.get("role") not in ROLES or not str(entry.get("password", "")).startswith("scrypt$"):
                raise AuthError(f"CRM_SYNC_CONSOLE_USERS_FILE: user {name!r} needs a role ({'/'.join(ROLES)}) and a scrypt password hash")
            entries[name] = (entry["role"], entry["password"])
        return cls(entries)

    def authenticate(self, name: str, password: str) -> User | None:
        role, stored = self._entries.get(name, ("", self._dummy))
        ok = verify_password(password, stored)
        return User(name, role) if ok and role else None


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires: int


class Sessions:
    """Stateless sessions: the cookie carries user, role, CSRF token and expiry, HMAC-signed."""

    def __init__(self, secret: str | None) -> None:
        # Without a configured secret, sessions last as long as the process.
        self._key = (secret or secrets.token_hex(32)).encode()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, user: User, now: float | None = None) -> tuple[str, Session]:
        session = Session(user, secrets.token_urlsafe(24), int((now or time.time()) + SESSION_SECONDS))
        payload = _b64(json.dumps({"u": user.name, "r": user.role, "c": session.csrf, "e": session.expires}).encode())
        return f"{payload}.{self._sign(payload)}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(User(str(data["u"]), str(data["r"])), str(data["c"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < (now or time.time()) or session.user.role not in ROLES:
            return None
        return session

    def seal(self, text: str) -> str:
        """`text` signed (not secret): a one-shot message carried by a cookie across a redirect."""
        payload = _b64(text.encode())
        return f"{payload}.{self._sign('seal' + payload)}"

    def unseal(self, sealed: str) -> str | None:
        payload, _, signature = sealed.rpartition(".")
        if not payload or not hmac.compare_digest(signature, self._sign("seal" + payload)):
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
        return bool(nonce) and hmac.compare_digest(signature, self._sign(purpose + nonce))


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")
