"""The console's HTTP side (aiohttp, Jinja2 with autoescape): every page reads and every form
changes through the CLI's library API — SettingsAdmin (settings topic, audited with the user's
name), FailureAdmin / read_dead_letters (dead-letter topic) and the history topic's report.

The library calls are blocking Kafka reads and transactions, so each runs in a worker thread.
Forms post back and redirect (post/redirect/get); a one-shot signed cookie carries the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import json
import re
import ssl
import time
import uuid
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import parse_qs, quote, urlencode
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from processors.codec import Codec, DecodeError
from processors.config import Config, ConfigError
from processors.domain.mapping import mapping_sources
from processors.domain.history import DEFAULT_TIMEZONE, KEEP_DAYS, company_timezone, fold, local_day, report
from processors.domain.model import Crm, EventType, ValidationError
from processors.domain.rules import SettingsError, company_key, meeting_type_key
from processors.ops.admin import SettingsAdmin
from processors.ops.console import views
from processors.ops.console.auth import (
    MAX_NAME_LENGTH, MAX_PASSWORD_LENGTH, LoginThrottle, Logouts, Session, Sessions, TrustedHeaders, User, Users, client_address, csrf_ok,
    password_problem,
)
from processors.ops.console.labels import LANGUAGES, label
from processors.ops.backfill import backfill as run_backfill
from processors.ops.dlq import Failure, FailureAdmin, filter_failures, read_dead_letters
from processors.ops.preview import last_booking, preview
from processors.state.history import read_records
from processors.worker import logs

HERE = Path(__file__).parent
SESSION_COOKIE, LOGIN_COOKIE, FLASH_COOKIE, LANG_COOKIE = "crm_sync_session", "crm_sync_login", "crm_sync_flash", "crm_sync_lang"
EVENTS = list(EventType)
CRMS = list(Crm)
OPEN_PATHS = ("/login", "/static/", "/lang/", "/favicon.ico")
# The failures page reads this far back unless its filter says since when (the CLI's default too).
FAILURES_WINDOW_DAYS = 7
# A meeting type's preview looks for its last booking this far back on the meetings topic.
PREVIEW_DAYS = 7
# A backfill from the console: at most this far back (the history's reach), at the CLI's pace.
BACKFILL_MAX_DAYS = 7
BACKFILL_RATE = 200.0
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SESSION_KEY = web.RequestKey("session", Session)
COOKIE_KEY = web.RequestKey("session_cookie", str)
# At most this many scrypt computations at once (each ~16 MiB and a core for ~50 ms), and this
# many logins waiting for one; past that a login is answered 503 at once.
HASH_CONCURRENCY, HASH_QUEUE = 2, 16
# The console's own pages, the only places a `next` may send the browser back to.
_PAGE = re.compile(r"/(?:c/[A-Za-z0-9._~%!$'()*+,;=:@-]+(?:/(?:apply|history|failures|log|preview|backfill))?)?|/login")
_QUERY = re.compile(r"[A-Za-z0-9._~%!$'()*+,;=:@/?&-]*")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
E = TypeVar("E", bound=Enum)


class Console:
    def __init__(
        self, config: Config, users: Users | None, sessions: Sessions, codec: Codec | None = None, sso: TrustedHeaders | None = None
    ) -> None:
        """`users` signs in with passwords; `sso` instead believes oauth2-proxy's headers (one of them)."""
        self.config = config
        self.users = users
        self.sso = sso
        self.sessions = sessions
        self.codec = codec or Codec()
        self.secure = config.console_secure_cookies
        self.throttle = LoginThrottle(config.console_login_user_attempts, config.console_login_address_attempts, config.console_login_window_seconds)
        self._hash_slots = asyncio.Semaphore(HASH_CONCURRENCY)
        # X-Forwarded-For names the client only when a proxy of ours sits in front.
        self._proxies = config.console_proxy_networks if (config.console_behind_tls or sso is not None) else ()
        self._hash_waiting = 0
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value is escaped unless a template says otherwise (none does)
            undefined=jinja2.StrictUndefined,
        )

    # -- the app --
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        r = app.router
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/lang/{lang}", self.set_language)
        r.add_static("/static/", HERE / "static")
        r.add_get("/favicon.ico", _no_icon)
        r.add_get("/", self.companies)
        r.add_get("/c/{company}", self.company)
        r.add_post("/c/{company}/connect", self.connect)
        r.add_post("/c/{company}/todo", self.company_todo)
        r.add_post("/c/{company}/pause", self.pause)
        r.add_post("/c/{company}/recheck", self.recheck)
        r.add_post("/c/{company}/meeting-type", self.save_meeting_type)
        r.add_post("/c/{company}/mapping", self.map_field)
        r.add_post("/c/{company}/mapping/remove", self.unmap_field)
        r.add_get("/c/{company}/apply", self.apply_page)
        r.add_post("/c/{company}/apply/review", self.apply_review)
        r.add_post("/c/{company}/apply", self.apply)
        r.add_get("/c/{company}/history", self.history)
        r.add_get("/c/{company}/failures", self.failures)
        r.add_post("/c/{company}/failures", self.failures_action)
        r.add_get("/c/{company}/log", self.settings_log)
        r.add_get("/c/{company}/preview", self.preview)
        r.add_get("/c/{company}/backfill", self.backfill_page)
        r.add_post("/c/{company}/backfill/review", self.backfill_review)
        r.add_post("/c/{company}/backfill", self.backfill)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication, CSRF and roles in one place: a page needs a session that still matches
        its user; a form needs the session's CSRF token; a change needs the admin role (a viewer
        gets 403 and why). Every page seen renews the session's idle timeout."""
        if request.method == "POST":
            try:
                await request.post()  # parsed once here; a handler's own call returns the same form
            except (ValueError, HttpProcessingError):  # not UTF-8, or a broken multipart body
                return self._message(request, 400, "bad_request", None)
        if not request.path.startswith(OPEN_PATHS):
            if self.sso is not None and not self.sso.from_proxy(request.remote):
                return self._message(request, 403, "not_via_proxy", None)
            session = self._session(request)
            if session is None:
                if self.sso is not None:
                    return self._message(request, 403, "no_role", None)
                if request.method == "GET":
                    response = _see_other(f"/login?{urlencode({'next': _safe_next(request.path_qs)})}")
                else:
                    response = self._message(request, 401, "login", None)
                if SESSION_COOKIE in request.cookies:
                    response.del_cookie(SESSION_COOKIE, path="/")
                return response
            request[SESSION_KEY] = session
            if request.method == "POST":
                form = await request.post()
                if not csrf_ok(session, _text(form.get("csrf"))):
                    return self._message(request, 403, "bad_csrf", session)
                if request.path != "/logout" and not session.user.may_change:
                    return self._message(request, 403, "forbidden", session)
        response = await handler(request)
        response.headers.update(HEADERS)
        if self.secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if COOKIE_KEY in request and not response.cookies.get(SESSION_COOKIE):
            self._set_cookie(response, SESSION_COOKIE, request[COOKIE_KEY], path="/")
        return response

    def _session(self, request: web.Request) -> Session | None:
        """The request's session if it still holds: signed, not idle, not logged out, and issued for
        the user's present role and password (users file) or identity (proxy headers)."""
        now = time.time()
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE), now)
        if self.sso is not None:
            user = self.sso.user(request.headers)
            if user is None:
                return None
            if session is None or session.user != user or session.stamp != self.sessions.stamp(user, ""):
                cookie, session = self.sessions.issue(user, "", now)
                request[COOKIE_KEY] = cookie
                return session
        else:
            if session is None or self.users is None:
                return None
            entry = self.users.entry(session.user.name)
            if entry is None or session.stamp != self.sessions.stamp(User(session.user.name, entry[0]), entry[1]):
                return None
        request[COOKIE_KEY] = self.sessions.refresh(session, now)
        return session

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, *, path: str, max_age: int | None = None) -> None:
        """Every cookie of the console: HttpOnly, SameSite=Strict, and Secure when served over TLS."""
        response.set_cookie(name, value, path=path, httponly=True, samesite="Strict", secure=self.secure, max_age=max_age)

    # -- rendering --
    def _lang(self, request: web.Request) -> str:
        lang = request.cookies.get(LANG_COOKIE, "ja")
        return lang if lang in LANGUAGES else "ja"

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        lang = self._lang(request)
        session = request.get(SESSION_KEY)
        flash = self._flash(request)
        html = self.templates.get_template(template).render(
            t=lambda key: label(key, lang), lang=lang, session=session, flash=flash, path=request.path_qs,
            events=EVENTS, crms=CRMS, **context,
        )
        response = web.Response(text=html, content_type="text/html", status=status)
        if flash is not None:
            response.del_cookie(FLASH_COOKIE, path="/")
        response.headers.update(HEADERS)
        return response

    def _message(self, request: web.Request, status: int, key: str, session: Session | None) -> web.Response:
        if session is not None:
            request[SESSION_KEY] = session
        return self.render(request, "message.html", status=status, message_key=key, status_code=status)

    def _flash(self, request: web.Request) -> dict[str, Any] | None:
        sealed = request.cookies.get(FLASH_COOKIE)
        text = self.sessions.unseal(sealed) if sealed else None
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def redirect(self, location: str, *, ok: str | None = None, error: str | None = None, lines: list[str] | None = None) -> web.Response:
        """Back to a page, with the outcome of what was just done shown on it once."""
        response = _see_other(location)
        # A message may quote what was typed: cut, so the cookie stays within a browser's 4 KB.
        shown = [line[:200] for line in (lines or [])[:10]] + ([f"+{len(lines or []) - 10}"] if len(lines or []) > 10 else [])
        flash = {"ok": ok, "error": error[:300] if error else error, "lines": shown}
        self._set_cookie(response, FLASH_COOKIE, self.sessions.seal(json.dumps(flash, ensure_ascii=False)), path="/")
        return response

    # -- sign-in --
    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self.sso is not None:  # the proxy signs in; nothing to do here
            return _see_other("/")
        # The same token while the browser holds a valid one: another tab (or the favicon's
        # redirect here) must not invalidate a form already shown.
        held = request.cookies.get(LOGIN_COOKIE, "")
        token = held if self.sessions.check_token("login", held) else self.sessions.token("login")
        response = self.render(request, "login.html", login_token=token, next=_safe_next(request.query.get("next")), failed=None)
        self._set_cookie(response, LOGIN_COOKIE, token, path="/login")
        return response

    def _login_refused(self, request: web.Request, status: int, why: str, next_page: str, retry_after: float = 0) -> web.Response:
        fresh = self.sessions.token("login")
        response = self.render(request, "login.html", status=status, login_token=fresh, next=next_page, failed=why)
        self._set_cookie(response, LOGIN_COOKIE, fresh, path="/login")
        if retry_after:
            response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Throttled before any hashing; the hash runs in a thread, a bounded number at a time."""
        if self.sso is not None or self.users is None:
            return _see_other("/")
        form = await request.post()
        token = _text(form.get("login_token"))
        if not token or token != request.cookies.get(LOGIN_COOKIE) or not self.sessions.check_token("login", token):
            return self._message(request, 403, "bad_csrf", None)
        name, password, next_page = _text(form.get("user")), _text(form.get("password")), _safe_next(_text(form.get("next")))
        address = client_address(request.remote, request.headers.get("X-Forwarded-For"), self._proxies)
        throttled_key = name[:MAX_NAME_LENGTH]
        wait = self.throttle.retry_after(throttled_key, address, time.time())
        if wait:
            return self._login_refused(request, 429, "login_throttled", next_page, wait)
        if len(name) > MAX_NAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
            user = None
        else:
            if self._hash_waiting >= HASH_QUEUE:
                return self._login_refused(request, 503, "login_busy", next_page, 1)
            self._hash_waiting += 1
            try:
                async with self._hash_slots:
                    user = await asyncio.to_thread(self.users.authenticate, name, password)
            finally:
                self._hash_waiting -= 1
        if user is None:
            self.throttle.failed(throttled_key, address, time.time())
            return self._login_refused(request, 401, "login_failed", next_page)
        if password_problem(password):
            return self._login_refused(request, 403, "password_weak", next_page)
        self.throttle.succeeded(throttled_key)
        entry = self.users.entry(user.name)
        cookie, _ = self.sessions.issue(user, entry[1] if entry else "")
        response = _see_other(next_page)
        self._set_cookie(response, SESSION_COOKIE, cookie, path="/")
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Ends every session of this user, not only this browser's cookie."""
        self.sessions.end(request[SESSION_KEY].user)
        request.pop(COOKIE_KEY, None)
        # Behind oauth2-proxy, its own sign-out ends the proxy's session too.
        response = _see_other("/oauth2/sign_out" if self.sso is not None else "/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def set_language(self, request: web.Request) -> web.StreamResponse:
        lang = request.match_info["lang"]
        response = _see_other(_safe_next(request.query.get("next")))
        if lang in LANGUAGES:
            self._set_cookie(response, LANG_COOKIE, lang, path="/", max_age=365 * 86400)
        return response

    # -- the library API, per user --
    def admin(self, request: web.Request) -> SettingsAdmin:
        return SettingsAdmin(self.config, self.codec, actor=request[SESSION_KEY].user.name)

    async def _change(self, request: web.Request, back: str, call: Callable[[SettingsAdmin], Any]) -> web.Response:
        """Runs one settings change; its refusal (an unknown company, a bad value) is shown on the page."""
        try:
            await asyncio.to_thread(call, self.admin(request))
        except (SettingsError, ValidationError, ValueError) as exc:
            return self.redirect(back, error=str(exc))
        return self.redirect(back, ok="saved")

    # -- pages --
    async def companies(self, request: web.Request) -> web.Response:
        store = await asyncio.to_thread(self.admin(request).load)
        wanted = request.query.get("company", "").strip()
        if wanted:
            raise web.HTTPSeeOther(f"/c/{quote(wanted, safe='')}")
        return self.render(request, "companies.html", companies=sorted(store.companies(), key=lambda c: c.company_id))

    async def company(self, request: web.Request) -> web.Response:
        company_id = request.match_info["company"]
        store = await asyncio.to_thread(self.admin(request).load)
        company = store.company(company_id)
        meeting_types = sorted(store.meeting_types(company_id), key=lambda m: m.meeting_type_id)
        sources = {e: mapping_sources(e) for e in EVENTS}
        recheck_minutes = ",".join(f"{seconds / 60:g}" for seconds in company.contact_recheck_seconds) if company else ""
        # The version each whole-document form edits: saving over another one is a conflict, not an overwrite.
        stamps = {company_id: store.stamp(company_key(company_id))} | {
            m.meeting_type_id: store.stamp(meeting_type_key(company_id, m.meeting_type_id)) for m in meeting_types
        }
        versions = {name: stamp.version if stamp is not None else 0 for name, stamp in stamps.items()}
        return self.render(
            request, "company.html", company_id=company_id, company=company, meeting_types=meeting_types, sources=sources,
            recheck_minutes=recheck_minutes, versions=versions, tab="settings",
        )

    async def connect(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        crm, on, back = _choice(Crm, form.get("crm")), _text(form.get("on")) == "1", f"/c/{quote(company_id, safe='')}"
        if crm is None:
            return self.redirect(back, error=f"crm: {_text(form.get('crm'))!r}")
        return await self._change(request, back, lambda a: a.set_connected(company_id, crm, on))

    async def company_todo(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        toggles = {e: form.get(f"todo_{e.value}") == "1" for e in EVENTS}
        version = _version(form)
        return await self._change(request, f"/c/{quote(company_id, safe='')}", lambda a: a.set_company_todos(company_id, toggles, version))

    async def pause(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        paused = _text(form.get("paused")) == "1"
        return await self._change(request, f"/c/{quote(company_id, safe='')}", lambda a: a.set_paused(company_id, paused))

    async def recheck(self, request: web.Request) -> web.StreamResponse:
        """The contact re-check delays, in minutes after the first due time (empty: off)."""
        company_id, form = request.match_info["company"], await request.post()
        back = f"/c/{quote(company_id, safe='')}"
        try:
            delays = [int(round(float(m) * 60)) for m in _text(form.get("minutes")).replace("、", ",").split(",") if m.strip()]
        except (ValueError, OverflowError):
            return self.redirect(back, error=f"{label('recheck', self._lang(request))}: {_text(form.get('minutes'))!r}")
        return await self._change(request, back, lambda a: a.set_contact_recheck(company_id, delays))

    async def save_meeting_type(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        meeting_type_id = _text(form.get("meeting_type")).strip()
        back = f"/c/{quote(company_id, safe='')}#mt-{quote(meeting_type_id, safe='')}"
        if not meeting_type_id:
            return self.redirect(back, error="meeting type: required")
        toggles = {(crm, e): form.get(f"{crm.value}_{e.value}") == "1" for crm in CRMS for e in EVENTS}
        texts = {name: _text(form.get(name)) if name in form else None for name in ("meeting_type_name", "hubspot_meeting_title", "hubspot_meeting_body")}
        version = _version(form)
        return await self._change(request, back, lambda a: a.save_meeting_type(company_id, meeting_type_id, toggles, version, **texts))

    async def map_field(self, request: web.Request) -> web.StreamResponse:
        """Add (or replace) a field mapping; the source is `event_type|path`, one drop-down of the
        schema's paths grouped by event type, so the pair always matches."""
        company_id, form = request.match_info["company"], await request.post()
        meeting_type_id = _text(form.get("meeting_type"))
        back = f"/c/{quote(company_id, safe='')}#mappings-{quote(meeting_type_id, safe='')}"
        event_text, _, source = _text(form.get("source")).partition("|")
        try:
            crm, event_type = Crm(_text(form.get("crm"))), EventType(event_text)
        except ValueError as exc:
            return self.redirect(back, error=str(exc))
        crm_field, allow_core = _text(form.get("crm_field")).strip(), form.get("allow_core") == "1"
        return await self._change(
            request, back, lambda a: a.map_field(company_id, meeting_type_id, crm, event_type, crm_field, source, allow_core=allow_core)
        )

    async def unmap_field(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        meeting_type_id = _text(form.get("meeting_type"))
        back = f"/c/{quote(company_id, safe='')}#mappings-{quote(meeting_type_id, safe='')}"
        try:
            crm, event_type = Crm(_text(form.get("crm"))), EventType(_text(form.get("event_type")))
        except ValueError as exc:
            return self.redirect(back, error=str(exc))
        crm_field = _text(form.get("crm_field"))
        return await self._change(request, back, lambda a: a.unmap_field(company_id, meeting_type_id, crm, event_type, crm_field))

    async def apply_page(self, request: web.Request) -> web.Response:
        company_id = request.match_info["company"]
        store = await asyncio.to_thread(self.admin(request).load)
        meeting_types = sorted(store.meeting_types(company_id), key=lambda m: m.meeting_type_id)
        source = request.query.get("from") or (meeting_types[0].meeting_type_id if meeting_types else "")
        return self.render(request, "apply.html", company_id=company_id, company=store.company(company_id), meeting_types=meeting_types, source=source, tab="apply")

    def _apply_form(self, form: Any) -> dict[str, Any] | None:
        """The apply form's choices; None when its CRM or an event type is not one of ours."""
        new = [t.strip() for t in _text(form.get("new_targets")).split(",") if t.strip()]
        targets = list(dict.fromkeys([*_texts(form, "target"), *new]))
        crm, events = _choice(Crm, form.get("crm")), [_choice(EventType, e) for e in _texts(form, "event")]
        if crm is None or None in events:
            return None
        return {
            "source": _text(form.get("source")),
            "crm": crm,
            "event_types": events,
            "targets": [t for t in targets if t != _text(form.get("source"))],
        }

    async def apply_review(self, request: web.Request) -> web.StreamResponse:
        """The confirm step: what will change, nothing changed yet."""
        company_id, form = request.match_info["company"], await request.post()
        chosen = self._apply_form(form)
        back = f"/c/{quote(company_id, safe='')}/apply?{urlencode({'from': _text(form.get('source'))})}"
        if chosen is None or not chosen["event_types"] or not chosen["targets"]:
            return self.redirect(back, error=label("apply_pick", self._lang(request)))
        return self.render(request, "apply_confirm.html", company_id=company_id, company=None, tab="apply", **chosen)

    async def apply(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        chosen = self._apply_form(form)
        if chosen is None or not chosen["event_types"] or not chosen["targets"]:
            return self.redirect(f"/c/{quote(company_id, safe='')}/apply", error=label("apply_pick", self._lang(request)))
        return await self._change(
            request, f"/c/{quote(company_id, safe='')}",
            lambda a: a.apply(company_id, chosen["source"], chosen["targets"], chosen["crm"], chosen["event_types"]),
        )

    async def history(self, request: web.Request) -> web.Response:
        company_id = request.match_info["company"]

        def load() -> tuple[Any, dict[str, Any]]:
            store = self.admin(request).load()
            company = store.company(company_id)
            tz = company.timezone if company is not None else DEFAULT_TIMEZONE
            records = read_records(self.config, company_id)
            body = report(fold(records), today=local_day(_now_ms(), tz), days=KEEP_DAYS)
            return company, {**body, "timezone": tz}

        company, body = await asyncio.to_thread(load)
        return self.render(
            request, "history.html", company_id=company_id, company=company, body=body, bars=views.bars(body),
            breakdown=views.breakdown(body), tab="history",
        )

    async def preview(self, request: web.Request) -> web.Response:
        """What the last booking of one meeting type would create under the current settings."""
        company_id = request.match_info["company"]
        meeting_type = _text(request.query.get("meeting_type"))[:200]

        def load() -> dict[str, Any]:
            store = self.admin(request).load()
            since = _now_ms() - PREVIEW_DAYS * 86_400_000
            event = last_booking(self.config, self.codec, company_id, meeting_type, since) if meeting_type else None
            shown = preview(event, company_id, store, _now_ms(), int(self.config.delay_seconds * 1000)) if event else None
            return {"company": store.company(company_id), "meeting_type": meeting_type, "shown": shown}

        return self.render(request, "preview.html", company_id=company_id, tab="settings", **await asyncio.to_thread(load))

    def _backfill_form(self, form: Any) -> tuple[int, list[EventType]] | None:
        try:
            days = int(_text(form.get("days")) or "7")
        except ValueError:
            return None
        chosen = [e for e in EVENTS if form.get(f"event_{e.value}")] or list(EVENTS)
        return (days, chosen) if 1 <= days <= BACKFILL_MAX_DAYS else None

    async def backfill_page(self, request: web.Request) -> web.Response:
        company_id = request.match_info["company"]
        return self.render(request, "backfill.html", company_id=company_id, tab="backfill", report=None, days=7, chosen=list(EVENTS),
                           max_days=BACKFILL_MAX_DAYS)

    async def backfill_review(self, request: web.Request) -> web.Response:
        """Step one: the counts of a dry run, and the confirm button."""
        company_id, form = request.match_info["company"], await request.post()
        parsed = self._backfill_form(form)
        if parsed is None:
            return self.redirect(f"/c/{quote(company_id, safe='')}/backfill", error=label("bad_request", self._lang(request)))
        days, chosen = parsed

        def dry() -> Any:
            store = self.admin(request).load()
            return run_backfill(self.config, self.codec, store, company_id, _now_ms() - days * 86_400_000, None, chosen,
                                run_id="review", dry_run=True, rate=1.0, wait_seconds=0, now_ms=_now_ms())

        report = await asyncio.to_thread(dry)
        return self.render(request, "backfill.html", company_id=company_id, tab="backfill", report=report, days=days, chosen=chosen,
                           max_days=BACKFILL_MAX_DAYS)

    async def backfill(self, request: web.Request) -> web.StreamResponse:
        """Step two: re-send (paced; the history shows the outcomes), audited with the admin's name."""
        company_id, form = request.match_info["company"], await request.post()
        back = f"/c/{quote(company_id, safe='')}/backfill"
        parsed = self._backfill_form(form)
        if parsed is None:
            return self.redirect(back, error=label("bad_request", self._lang(request)))
        days, chosen = parsed
        actor = request[SESSION_KEY].user.name

        def run() -> Any:
            admin = self.admin(request)
            store = admin.load()
            since = _now_ms() - days * 86_400_000
            report = run_backfill(self.config, self.codec, store, company_id, since, None, chosen, run_id=uuid.uuid4().hex,
                                  dry_run=False, rate=BACKFILL_RATE, wait_seconds=0, now_ms=_now_ms())
            logging.getLogger("crm_sync.console").info(
                "backfill", extra={"company_id": company_id, "actor": actor, "days": days, "sent": report.sent})
            return report

        report = await asyncio.to_thread(run)
        lang = self._lang(request)
        return self.redirect(back, ok=f"{report.sent} {label('backfill_started', lang)}")

    def _dead_letters(self, company_id: str, chosen: dict[str, Any]) -> list[Failure]:
        """The company's failures in the page's window: its partition from `since` (default: the
        last FAILURES_WINDOW_DAYS days), never the whole topic."""
        since_ms = chosen["since_ms"]
        if since_ms is None:
            since_ms = int((time.time() - FAILURES_WINDOW_DAYS * 86400) * 1000)
        return read_dead_letters(self.config, self.codec, company_id=company_id, since_ms=since_ms)

    def _failure_filter(self, query: Any, tz: str) -> dict[str, Any]:
        crm = query.get("crm") or None
        error_class = query.get("error_class") or None
        since_text = (query.get("since") or "").strip()
        since_ms = None
        if since_text:
            try:
                since = datetime.fromisoformat(since_text)
            except ValueError:
                since = None
            if since is not None:
                since = since if since.tzinfo else since.replace(tzinfo=ZoneInfo(tz))
                since_ms = int(since.timestamp() * 1000)
        return {"crm": crm, "error_class": error_class, "since_ms": since_ms, "include_resolved": query.get("all") == "1", "since": since_text}

    async def failures(self, request: web.Request) -> web.Response:
        company_id = request.match_info["company"]

        def load() -> dict[str, Any]:
            store = self.admin(request).load()
            company = store.company(company_id)
            tz = company.timezone if company is not None else DEFAULT_TIMEZONE
            chosen = self._failure_filter(request.query, tz)
            everything = self._dead_letters(company_id, chosen)
            shown = filter_failures(everything, **{k: v for k, v in chosen.items() if k not in ("since", "since_ms")})
            records = read_records(self.config, company_id) if any(f.retries for f in shown) else []
            rows = [self._failure_row(f, records, tz) for f in reversed(shown)]
            classes = sorted({f.record["error_class"] for f in everything})
            return {"company": company, "rows": rows, "filter": chosen, "error_classes": classes, "query": request.query_string}

        return self.render(request, "failures.html", company_id=company_id, tab="failures", **await asyncio.to_thread(load))

    def _failure_row(self, failure: Failure, records: list[Any], tz: str) -> dict[str, Any]:
        r = failure.record
        action = r.get("action") or None
        retried = [s["at"] for s in failure.statuses if s["status"] == "retried"]
        state = "resolved" if failure.resolved else ("retried" if retried else "open")
        return {
            "id": failure.dead_letter_id,
            "time": views.local_time(r.get("created_at"), tz),
            "stage": r["stage"], "error_class": r["error_class"], "error_code": r.get("error_code"), "message": r["message"],
            "crm": r.get("crm"), "attempts": r.get("attempts"), "state": state, "retries": len(retried),
            "outcome": views.failure_outcome(action.get("action_id") if action else None, max(retried) if retried else None, records),
            "action": action, "original": self._original(r),
        }

    def _original(self, record: dict[str, Any]) -> str | None:
        """The input record a failure from before planning carries, decoded when it can be."""
        raw = record.get("original_value")
        if raw is None or record.get("action"):
            return None
        try:
            return json.dumps(self.codec.decode(raw).value, ensure_ascii=False, indent=2, default=str)
        except (DecodeError, ValueError, TypeError):
            return f"({len(raw)} bytes, not decodable) {raw[:64].hex()}"

    async def failures_action(self, request: web.Request) -> web.StreamResponse:
        """Retry or resolve: the ticked failures, one (its own button), or all the filter shows."""
        company_id, form = request.match_info["company"], await request.post()
        one = _text(form.get("retry_one"))
        what, scope = ("retry", one) if one else (_text(form.get("do")), _text(form.get("scope")))
        back = _safe_next(f"/c/{quote(company_id, safe='')}/failures" + (f"?{_text(form.get('query'))}" if form.get("query") else ""))
        lang = self._lang(request)
        if what not in ("retry", "resolve"):
            return self.redirect(back, error=label("bad_request", lang))

        def run() -> web.Response:
            store = self.admin(request).load()
            company = store.company(company_id)
            tz = company.timezone if company is not None else DEFAULT_TIMEZONE
            query = {k: v[-1] for k, v in parse_qs(_text(form.get("query"))).items()}
            chosen = self._failure_filter(query, tz)
            everything = self._dead_letters(company_id, chosen)
            if scope == "all":
                selected = filter_failures(everything, **{k: v for k, v in chosen.items() if k not in ("since", "since_ms")})
            else:
                ids = set(_texts(form, "id")) if scope == "selected" else {scope}
                selected = [f for f in everything if f.dead_letter_id in ids]
            if not selected:
                return self.redirect(back, error=label("no_failures", lang))
            admin = FailureAdmin(self.config, self.codec, actor=request[SESSION_KEY].user.name, timezone_of=company_timezone(store))
            if what == "resolve":
                n = admin.resolve(selected, _text(form.get("note")) or None)
                return self.redirect(back, ok=f"{n} {label('marked_resolved', lang)}")
            skipped: list[str] = []
            sent = admin.retry(selected, lambda f, why: skipped.append(f"{f.dead_letter_id}: {label('not_retried', lang)}: {why}"))
            return self.redirect(back, ok=f"{sent} {label('sent_for_retry', lang)}", lines=skipped)

        return await asyncio.to_thread(run)

    async def settings_log(self, request: web.Request) -> web.Response:
        company_id = request.match_info["company"]

        def load() -> tuple[Any, list[Any]]:
            admin = self.admin(request)
            store = admin.load()
            return store.company(company_id), list(reversed(admin.audit_log(company_id)))

        company, entries = await asyncio.to_thread(load)
        tz = company.timezone if company is not None else DEFAULT_TIMEZONE
        rows = [{"time": views.local_time(e.at, tz), "actor": e.actor, "key": e.key, "summary": e.summary} for e in entries]
        return self.render(request, "log.html", company_id=company_id, company=company, rows=rows, tab="log")


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def _see_other(location: str) -> web.Response:
    """A 303 to `location`, as a response to return (aiohttp wants HTTP exceptions raised, not returned)."""
    return web.Response(status=303, headers={"Location": location})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _texts(form: Any, name: str) -> list[str]:
    """Every text value of a repeated form field (an uploaded file in its place is ignored)."""
    return [v for v in form.getall(name, []) if isinstance(v, str)]


def _choice(kind: type[E], value: Any) -> E | None:
    """`value` as a member of the enum `kind`, or None when it names none."""
    try:
        return kind(_text(value))
    except ValueError:
        return None


def _safe_next(target: str | None) -> str:
    """One of the console's own pages (an allow-list of its routes), with its query when that is
    plain URL characters; anything else is the home page. A `next` pointing elsewhere would be an
    open redirect, and browsers strip tabs and newlines, so `/\t/evil.example/` is `//evil.example/`."""
    if not target:
        return "/"
    path, sep, query = target.partition("?")
    if not _PAGE.fullmatch(path):
        return "/"
    return target if sep and _QUERY.fullmatch(query) else path


def _now_ms() -> int:
    return int(time.time() * 1000)


def _version(form: Any) -> int | None:
    """The document version a whole-document form was rendered from (None: not sent, or not a number)."""
    text = _text(form.get("version"))
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def serve(config: Config) -> None:
    """`crm-sync console`: until Ctrl-C or SIGTERM. Refuses to start on a bad setup (one line)."""
    if problems := config.console_problems():
        raise ConfigError(problems)
    logs.setup(config.log_level)  # the worker's JSON lines (redacted); no access log: URLs name companies
    sso = TrustedHeaders(config.console_proxy_networks, config.console_group_role_map) if config.console_trusted_headers else None
    users = None if sso is not None or config.console_users_file is None else Users.load(config.console_users_file)
    logouts = Logouts(config.state_dir / "console-logouts.json")
    console = Console(config, users, Sessions(config.console_secret, config.console_idle_seconds, logouts), sso=sso)
    context = None
    if config.console_tls_cert is not None and config.console_tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(config.console_tls_cert, config.console_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"CRM_SYNC_CONSOLE_TLS_CERT: expected a PEM certificate and key that match, got {exc}"]) from None
    scheme = "https" if context else "http"
    print(f"crm-sync console on {scheme}://{config.console_bind}:{config.console_port}/", flush=True)
    web.run_app(console.app(), host=config.console_bind, port=config.console_port, ssl_context=context, print=None, access_log=None)
