"""The console's HTTP side (aiohttp, Jinja2 with autoescape): every page reads and every form
changes through the CLI's library API — SettingsAdmin (settings topic, audited with the user's
name), FailureAdmin / read_dead_letters (dead-letter topic) and the history topic's report.

The library calls are blocking Kafka reads and transactions, so each runs in a worker thread.
Forms post back and redirect (post/redirect/get); a one-shot signed cookie carries the outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote, urlencode
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from processors.codec import Codec, DecodeError
from processors.config import Config
from processors.domain.mapping import mapping_sources
from processors.domain.history import DEFAULT_TIMEZONE, KEEP_DAYS, company_timezone, fold, local_day, report
from processors.domain.model import Crm, EventType, ValidationError
from processors.domain.rules import SettingsError, company_key, meeting_type_key
from processors.ops.admin import SettingsAdmin
from processors.ops.console import views
from processors.ops.console.auth import Session, Sessions, Users, csrf_ok
from processors.ops.console.labels import LANGUAGES, label
from processors.ops.dlq import Failure, FailureAdmin, filter_failures, read_dead_letters
from processors.state.history import read_records
from processors.worker import logs

HERE = Path(__file__).parent
SESSION_COOKIE, LOGIN_COOKIE, FLASH_COOKIE, LANG_COOKIE = "crm_sync_session", "crm_sync_login", "crm_sync_flash", "crm_sync_lang"
EVENTS = list(EventType)
CRMS = list(Crm)
OPEN_PATHS = ("/login", "/static/", "/lang/", "/favicon.ico")
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SESSION_KEY = web.RequestKey("session", Session)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    def __init__(self, config: Config, users: Users, sessions: Sessions, codec: Codec | None = None) -> None:
        self.config = config
        self.users = users
        self.sessions = sessions
        self.codec = codec or Codec()
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
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication, CSRF and roles in one place: a page needs a session; a form needs the
        session's CSRF token; a change needs the admin role (a viewer gets 403 and why)."""
        if not request.path.startswith(OPEN_PATHS):
            session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
            if session is None:
                if request.method == "GET":
                    raise web.HTTPSeeOther(f"/login?{urlencode({'next': request.path_qs})}")
                return self._message(request, 401, "login", None)
            request[SESSION_KEY] = session
            if request.method == "POST":
                form = await request.post()
                if not csrf_ok(session, _text(form.get("csrf"))):
                    return self._message(request, 403, "bad_csrf", session)
                if request.path != "/logout" and not session.user.may_change:
                    return self._message(request, 403, "forbidden", session)
        response = await handler(request)
        response.headers.update(HEADERS)
        return response

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
        flash = {"ok": ok, "error": error, "lines": lines or []}
        response.set_cookie(FLASH_COOKIE, self.sessions.seal(json.dumps(flash, ensure_ascii=False)), path="/", httponly=True, samesite="Strict")
        return response

    # -- sign-in --
    async def login_page(self, request: web.Request) -> web.Response:
        # The same token while the browser holds a valid one: another tab (or the favicon's
        # redirect here) must not invalidate a form already shown.
        held = request.cookies.get(LOGIN_COOKIE, "")
        token = held if self.sessions.check_token("login", held) else self.sessions.token("login")
        response = self.render(request, "login.html", login_token=token, next=_safe_next(request.query.get("next")), failed=False)
        response.set_cookie(LOGIN_COOKIE, token, path="/login", httponly=True, samesite="Strict")
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = _text(form.get("login_token"))
        if not token or token != request.cookies.get(LOGIN_COOKIE) or not self.sessions.check_token("login", token):
            return self._message(request, 403, "bad_csrf", None)
        user = await asyncio.to_thread(self.users.authenticate, _text(form.get("user")), _text(form.get("password")))
        if user is None:
            fresh = self.sessions.token("login")
            response = self.render(request, "login.html", status=401, login_token=fresh, next=_safe_next(_text(form.get("next"))), failed=True)
            response.set_cookie(LOGIN_COOKIE, fresh, path="/login", httponly=True, samesite="Strict")
            return response
        cookie, _ = self.sessions.issue(user)
        response = _see_other(_safe_next(_text(form.get("next"))))
        response.set_cookie(SESSION_COOKIE, cookie, path="/", httponly=True, samesite="Strict")
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = _see_other("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def set_language(self, request: web.Request) -> web.StreamResponse:
        lang = request.match_info["lang"]
        response = _see_other(_safe_next(request.query.get("next")))
        if lang in LANGUAGES:
            response.set_cookie(LANG_COOKIE, lang, path="/", samesite="Strict", max_age=365 * 86400)
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
        crm, on = Crm(_text(form.get("crm"))), _text(form.get("on")) == "1"
        return await self._change(request, f"/c/{quote(company_id, safe='')}", lambda a: a.set_connected(company_id, crm, on))

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
        except ValueError:
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

    def _apply_form(self, form: Any) -> dict[str, Any]:
        new = [t.strip() for t in _text(form.get("new_targets")).split(",") if t.strip()]
        targets = list(dict.fromkeys([*form.getall("target", []), *new]))
        return {
            "source": _text(form.get("source")),
            "crm": Crm(_text(form.get("crm"))),
            "event_types": [EventType(e) for e in form.getall("event", [])],
            "targets": [t for t in targets if t != _text(form.get("source"))],
        }

    async def apply_review(self, request: web.Request) -> web.StreamResponse:
        """The confirm step: what will change, nothing changed yet."""
        company_id, form = request.match_info["company"], await request.post()
        chosen = self._apply_form(form)
        back = f"/c/{quote(company_id, safe='')}/apply?{urlencode({'from': chosen['source']})}"
        if not chosen["event_types"] or not chosen["targets"]:
            return self.redirect(back, error=label("apply_pick", self._lang(request)))
        return self.render(request, "apply_confirm.html", company_id=company_id, company=None, tab="apply", **chosen)

    async def apply(self, request: web.Request) -> web.StreamResponse:
        company_id, form = request.match_info["company"], await request.post()
        chosen = self._apply_form(form)
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
            everything = [f for f in read_dead_letters(self.config, self.codec) if f.record.get("company_id") == company_id]
            shown = filter_failures(everything, **{k: v for k, v in chosen.items() if k != "since"})
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
        back = f"/c/{quote(company_id, safe='')}/failures" + (f"?{_text(form.get('query'))}" if form.get("query") else "")
        lang = self._lang(request)

        def run() -> web.Response:
            store = self.admin(request).load()
            company = store.company(company_id)
            tz = company.timezone if company is not None else DEFAULT_TIMEZONE
            everything = [f for f in read_dead_letters(self.config, self.codec) if f.record.get("company_id") == company_id]
            if scope == "all":
                query = {k: v[-1] for k, v in parse_qs(_text(form.get("query"))).items()}
                chosen = self._failure_filter(query, tz)
                selected = filter_failures(everything, **{k: v for k, v in chosen.items() if k != "since"})
            else:
                ids = set(form.getall("id", [])) if scope == "selected" else {scope}
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


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a `next` pointing elsewhere would be an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _now_ms() -> int:
    return int(time.time() * 1000)


def _version(form: Any) -> int | None:
    """The document version a whole-document form was rendered from (None: not sent, or not a number)."""
    text = _text(form.get("version"))
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def serve(config: Config) -> None:
    """`crm-sync console`: until Ctrl-C or SIGTERM."""
    if config.console_users_file is None:
        raise ValueError("CRM_SYNC_CONSOLE_USERS_FILE: expected a users file (see docs/console.md), got nothing")
    users = Users.load(config.console_users_file)
    logs.setup(config.log_level)  # the worker's JSON lines (redacted); no access log: URLs name companies
    console = Console(config, users, Sessions(config.console_secret))
    print(f"crm-sync console on http://{config.console_bind}:{config.console_port}/", flush=True)
    web.run_app(console.app(), host=config.console_bind, port=config.console_port, print=None, access_log=None)
