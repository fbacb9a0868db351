"""The console's pure parts and its guard: password hashes, users file, signed sessions and
messages, CSRF and roles (checked before any handler, so no broker is needed), the chart's bars
and a retried failure's outcome."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from processors.config import Config
from processors.domain.history import HistoryRecord
from processors.ops.console import views
from processors.ops.console.app import SESSION_COOKIE, Console, _safe_next
from processors.ops.console.auth import AuthError, Sessions, User, Users, csrf_ok, hash_password, verify_password
from processors.ops.console.labels import LABELS, label


def test_a_password_hash_verifies_only_its_password_and_is_salted() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$16384$8$1$") and "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret ", stored)
    assert hash_password("s3cret") != stored
    assert not verify_password("s3cret", "md5$abc") and not verify_password("x", "garbage")


def test_users_file_roles_and_authentication(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"alice": {"role": "admin", "password": hash_password("a")}, "vera": {"role": "viewer", "password": hash_password("v")}}))
    users = Users.load(path)
    assert users.authenticate("alice", "a") == User("alice", "admin")
    assert users.authenticate("vera", "v") == User("vera", "viewer") and not User("vera", "viewer").may_change
    assert users.authenticate("alice", "v") is None and users.authenticate("nobody", "a") is None
    for bad in ({"x": {"role": "root", "password": hash_password("a")}}, {"x": {"role": "admin", "password": "plain"}}, {}):
        path.write_text(json.dumps(bad))
        with pytest.raises(AuthError, match="CRM_SYNC_CONSOLE_USERS_FILE"):
            Users.load(path)
    with pytest.raises(AuthError, match="cannot read"):
        Users.load(tmp_path / "missing.json")


def test_sessions_are_signed_and_expire() -> None:
    sessions = Sessions("k")
    cookie, session = sessions.issue(User("alice", "admin"), now=1000)
    assert sessions.read(cookie, now=1001) == session
    assert Sessions("other").read(cookie, now=1001) is None  # another secret
    payload, signature = cookie.rsplit(".", 1)
    forged = json.dumps({"u": "alice", "r": "admin", "c": "x", "e": 10**12}).encode()
    import base64

    assert sessions.read(base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + signature, now=1001) is None
    assert sessions.read(cookie, now=session.expires + 1) is None
    assert sessions.read(None) is None and sessions.read("junk") is None
    assert csrf_ok(session, session.csrf) and not csrf_ok(session, "x") and not csrf_ok(session, None)


def test_sealed_messages_and_login_tokens() -> None:
    sessions = Sessions("k")
    sealed = sessions.seal("1 件をもう一度試しました")
    assert sessions.unseal(sealed) == "1 件をもう一度試しました"
    assert sessions.unseal(sealed[:-2] + "xx") is None and Sessions("o").unseal(sealed) is None
    token = sessions.token("login")
    assert sessions.check_token("login", token) and not sessions.check_token("other", token) and not sessions.check_token("login", "a.b")


def test_next_is_only_a_path_on_this_site() -> None:
    assert _safe_next("/c/acme?x=1") == "/c/acme?x=1"
    for bad in (None, "", "https://evil.example/", "//evil.example/", "/\\evil", "c/acme"):
        assert _safe_next(bad) == "/"


def test_every_label_has_both_languages() -> None:
    assert all(ja and en for ja, en in LABELS.values())
    assert label("retry", "ja") == "もう一度試す" and label("retry", "en") == "Try again"
    assert label("apply", "ja") == "他の面談タイプにも反映" and label("crm_integration", "en") == "CRM integration"
    assert label("no-such-key", "en") == "no-such-key"


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"from": "2026-11-25", "to": "2026-12-01", "rows": rows}


def _row(day: str, crm: str, event: str, created: int = 0, failed: int = 0, skipped: dict[str, int] | None = None) -> dict[str, Any]:
    return {"day": day, "crm": crm, "event_type": event, "created": created, "failed": failed, "retried": 0, "resolved": 0, "skipped": skipped or {}}


def test_bars_stack_each_day_and_scale_to_the_busiest() -> None:
    body = _report([
        _row("2026-12-01", "salesforce", "meeting_booked", created=3, skipped={"contact_not_found": 1}),
        _row("2026-12-01", "hubspot", "meeting_booked", failed=1, skipped={"no_owner": 3}),
        _row("2026-11-28", "salesforce", "research_completed", created=2),
    ])
    bars = views.bars(body, width=400)
    assert [b.label for b in bars] == ["2026-12-01", "2026-11-30", "2026-11-29", "2026-11-28", "2026-11-27", "2026-11-26", "2026-11-25"]
    today = bars[0]
    assert today.counts == {"created": 3, "skipped": 4, "failed": 1} and today.total == 8
    assert today.segments == (("created", 0.0, 150.0), ("skipped", 150.0, 200.0), ("failed", 350.0, 50.0))
    assert bars[1].segments == () and bars[3].segments == (("created", 0.0, 100.0),)
    assert views.bars(_report([]))[0].segments == ()


def test_breakdown_sums_the_window_per_crm_and_event_type() -> None:
    body = _report([
        _row("2026-12-01", "salesforce", "meeting_booked", created=3, skipped={"a": 1}),
        _row("2026-11-30", "salesforce", "meeting_booked", created=1, failed=2, skipped={"a": 2, "b": 1}),
        _row("2026-11-30", "hubspot", "meeting_booked", created=5),
    ])
    [hubspot, salesforce] = views.breakdown(body)
    assert (hubspot["crm"], hubspot["created"]) == ("hubspot", 5)
    assert salesforce["created"] == 4 and salesforce["failed"] == 2 and salesforce["skipped"] == {"a": 3, "b": 1}


def _record(outcome: str, at: int, action: str = "act-1", reason: str | None = None) -> HistoryRecord:
    return HistoryRecord("acme", "2026-12-01", "Asia/Tokyo", "salesforce", "meeting_booked", outcome, reason, at, "evt-1", action, ref=None)


def test_a_retried_failures_outcome_comes_from_history_after_the_retry() -> None:
    before = _record("failed", 100)
    assert views.failure_outcome("act-1", None, [before]) is None
    assert views.failure_outcome(None, 200, [before]) is None
    assert views.failure_outcome("act-1", 200, [before]) == "pending"
    assert views.failure_outcome("act-1", 200, [before, _record("created", 300, "other")]) == "pending"
    assert views.failure_outcome("act-1", 200, [before, _record("created", 300)]) == "delivered"
    assert views.failure_outcome("act-1", 200, [before, _record("failed", 250), _record("skipped", 260, reason="x")]) == "skipped"
    assert views.failure_outcome("act-1", 200, [_record("failed", 300)]) == "failed"


# -- the guard, through aiohttp's test client (no broker: every request here is refused or open) --
ALICE, VERA = "alice-passphrase-1", "vera-passphrase-1"

def _console() -> Console:
    users = Users({"alice": ("admin", hash_password(ALICE)), "vera": ("viewer", hash_password(VERA))})
    return Console(Config(), users, Sessions("k"))


async def _log_in(client: TestClient, user: str, password: str) -> str:
    page = await (await client.get("/login")).text()
    token = re.search(r'name="login_token" value="([^"]+)"', page)
    assert token is not None
    answer = await client.post("/login", data={"login_token": token.group(1), "user": user, "password": password, "next": "/c/x"}, allow_redirects=False)
    assert answer.status == 303 and answer.headers["Location"] == "/c/x"
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value


def _run(check: Any) -> None:
    async def go() -> None:
        async with TestClient(TestServer(_console().app())) as client:
            await check(client)

    asyncio.run(go())


def test_pages_need_a_session_and_forms_need_its_csrf_token_and_changes_the_admin_role() -> None:
    async def check(client: TestClient) -> None:
        first = await client.get("/c/acme", allow_redirects=False)
        assert first.status == 303 and first.headers["Location"] in ("/login?next=/c/acme", "/login?next=%2Fc%2Facme")
        assert (await client.post("/c/acme/pause", data={"paused": "1"})).status == 401
        login = await client.get("/login")
        assert login.headers["Content-Security-Policy"].startswith("default-src 'none'") and "script-src" not in login.headers["Content-Security-Policy"]
        # a login without the form's token (a cross-site login) is refused
        assert (await client.post("/login", data={"user": "alice", "password": ALICE})).status == 403
        wrong = await client.post("/login", data={"login_token": re.search(r'value="([^"]+)"', await login.text()).group(1), "user": "alice", "password": "b"})
        assert wrong.status == 401 and "ユーザー名またはパスワードが違います" in await wrong.text()

        await _log_in(client, "vera", VERA)
        refused = await client.post("/c/acme/pause", data={"paused": "1", "csrf": "forged"})
        assert refused.status == 403 and "フォームの有効期限が切れました" in await refused.text()
        session = Sessions("k").read(client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value)
        assert session is not None
        viewer = await client.post("/c/acme/pause", data={"paused": "1", "csrf": session.csrf})
        assert viewer.status == 403 and "閲覧のみの権限です" in await viewer.text()
        client.session.cookie_jar.update_cookies({"crm_sync_lang": "en"})
        viewer = await client.post("/c/acme/pause", data={"paused": "1", "csrf": session.csrf})
        assert viewer.status == 403 and "only admins may change settings" in await viewer.text()
        out = await client.post("/logout", data={"csrf": session.csrf}, allow_redirects=False)
        assert out.status == 303

    _run(check)


def test_user_text_is_escaped() -> None:
    async def check(client: TestClient) -> None:
        page = await (await client.get('/login?next=/"><script>x</script>')).text()
        assert "<script>x" not in page

    _run(check)
    # what a page shows of a value is escaped (the login page no longer shows an unsafe `next` at all)
    html = _console().templates.get_template("login.html").render(
        t=lambda key: key, lang="en", session=None, flash=None, path="/", login_token="t", next='/"><script>x</script>', failed=None,
    )
    assert "<script>x" not in html and "&lt;script&gt;x" in html


# -- a web attacker --
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/c/acme", "/c/acme"),
        ("/c/acme/failures?crm=salesforce&since=2026-12-01T10%3A00", "/c/acme/failures?crm=salesforce&since=2026-12-01T10%3A00"),
        ("/c/%E3%82%A2%E3%82%AF%E3%83%A1/history", "/c/%E3%82%A2%E3%82%AF%E3%83%A1/history"),
        ("/c/acme/apply?from=intro", "/c/acme/apply?from=intro"),
        ("/login?next=%2Fc%2Facme", "/login?next=%2Fc%2Facme"),
        ("/\t/evil.example/", "/"),
        ("/\n/evil.example/", "/"),
        ("/ /evil.example/", "/"),
        ("/%09/evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/c/acme/../../evil", "/"),
        ("/c/acme/unknown", "/"),
        ("/static/console.css", "/"),
        ("/logout", "/"),
        ("/c/acme?x=\t//evil", "/c/acme"),
        ("/c/acme#x", "/"),
        ("/c/ア", "/"),
        ("", "/"),
        (None, "/"),
        ("c/acme", "/"),
    ],
)
def test_next_is_only_one_of_the_consoles_own_pages(target: str | None, expected: str) -> None:
    assert _safe_next(target) == expected


def test_the_language_switch_and_the_login_form_redirect_only_to_the_consoles_pages() -> None:
    async def check(client: TestClient) -> None:
        answer = await client.get("/lang/en?next=/%09/evil.example/", allow_redirects=False)
        assert answer.status == 303 and answer.headers["Location"] == "/"
        page = await (await client.get("/login?next=/%09/evil.example/")).text()
        assert 'name="next" value="/"' in page
        token = re.search(r'name="login_token" value="([^"]+)"', page).group(1)
        answer = await client.post("/login", data={"login_token": token, "user": "alice", "password": ALICE, "next": "/\t/evil.example/"}, allow_redirects=False)
        assert answer.status == 303 and answer.headers["Location"] == "/"

    _run(check)


def test_a_non_ascii_csrf_value_is_refused_not_a_crash() -> None:
    async def check(client: TestClient) -> None:
        await _log_in(client, "alice", ALICE)
        for forged in ("ｃｓｒｆ", "é" * 40):
            answer = await client.post("/c/acme/pause", data={"paused": "1", "csrf": forged})
            assert answer.status == 403, forged
        for raw in (b"paused=1&csrf=%FF%FE", "paused=1&csrf=é".encode("latin-1")):  # not UTF-8 at all
            answer = await client.post("/c/acme/pause", data=raw, headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert answer.status in (400, 403), raw
        broken = await client.post("/c/acme/pause", data=b"--zz\r\nbad", headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert broken.status == 400
        client.session.cookie_jar.clear()
        junk = {"Cookie": "crm_sync_session=é.ü; crm_sync_login=é.ü; crm_sync_flash=é.ü"}
        assert (await client.get("/c/acme", headers=junk, allow_redirects=False)).status == 303
        assert (await client.get("/login", headers=junk)).status == 200
        assert (await client.post("/login", headers=junk, data={"login_token": "é.ü", "user": "a", "password": "b"})).status == 403

    _run(check)
