"""The console against a web attacker, without a broker: sessions that end (logout, a changed role
or password, an idle browser), the login throttle and the bounded scrypt work, password and hash
strength, the trusted-header mode, and the start-up checks of its configuration.

A probe page behind the console's guard stands in for the pages (which read Kafka)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from processors.config import Config
from processors.ops.cli import main
from processors.ops.console.app import LOGIN_COOKIE, SESSION_COOKIE, Console
from processors.ops.console.auth import (
    LoginThrottle, Logouts, Sessions, TrustedHeaders, User, Users, client_address, hash_password, hash_problem, password_problem,
)

ALICE, VERA = "alice-passphrase-1", "vera-passphrase-1"
NET = ipaddress.ip_network


def _users_file(path: Path, **entries: tuple[str, str]) -> Path:
    path.write_text(json.dumps({name: {"role": role, "password": hash_password(pw)} for name, (role, pw) in entries.items()}))
    return path


def _app(console: Console) -> web.Application:
    app = console.app()

    async def probe(request: web.Request) -> web.Response:
        return web.Response(text="probe")

    app.router.add_get("/probe", probe)
    app.router.add_post("/probe", probe)
    return app


def _run(console: Console, check: Callable[[TestClient], Awaitable[None]]) -> None:
    async def go() -> None:
        async with TestClient(TestServer(_app(console))) as client:
            await check(client)

    asyncio.run(go())


async def _login_token(client: TestClient) -> str:
    page = await (await client.get("/login")).text()
    found = re.search(r'name="login_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def _log_in(client: TestClient, user: str, password: str, expect: int = 303) -> Any:
    answer = await client.post(
        "/login", data={"login_token": await _login_token(client), "user": user, "password": password, "next": "/probe"}, allow_redirects=False
    )
    assert answer.status == expect, await answer.text()
    return answer


def _cookie(client: TestClient) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value


async def _probe(client: TestClient, cookie: str) -> int:
    """The probe page with exactly this session cookie (another browser holding a copied cookie)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as other:
        async with other.get(client.make_url("/probe"), headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}, allow_redirects=False) as answer:
            return answer.status


def _console(users: Users | None, config: Config | None = None, sso: TrustedHeaders | None = None, idle: float = 1800) -> Console:
    return Console(config or Config(), users, Sessions("k" * 40, idle_seconds=idle), sso=sso)


# -- sessions end --
def test_logout_ends_every_session_of_the_user_even_a_copied_cookie(tmp_path: Path) -> None:
    users = Users.load(_users_file(tmp_path / "users.json", alice=("admin", ALICE)))

    async def check(client: TestClient) -> None:
        await _log_in(client, "alice", ALICE)
        copied = _cookie(client)
        assert await _probe(client, copied) == 200
        session = Sessions("k" * 40).read(copied)
        assert session is not None
        csrf = session.csrf
        out = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert out.status == 303 and out.headers["Location"] == "/login"
        assert await _probe(client, copied) == 303  # the copy is over too
        await _log_in(client, "alice", ALICE)
        assert await _probe(client, _cookie(client)) == 200  # a new login works

    _run(_console(users), check)


def test_a_logout_is_remembered_across_a_restart_and_by_another_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "console-logouts.json"
    first = Sessions("k" * 40, logouts=Logouts(path))
    cookie, _ = first.issue(User("alice", "admin"), "h", now=1000)
    other, _ = first.issue(User("vera", "viewer"), "h", now=1000)
    first.end(User("alice", "admin"), now=1001)
    restarted = Sessions("k" * 40, logouts=Logouts(path))
    assert restarted.read(cookie, now=1002) is None and restarted.read(other, now=1002) is not None
    again, _ = restarted.issue(User("alice", "admin"), "h", now=1003)
    assert restarted.read(again, now=1004) is not None
    restarted.end(User("vera", "viewer"), now=1005)  # the first process sees the second's logout
    assert first.read(other, now=1006) is None and first.read(again, now=1006) is not None
    assert set(json.loads(path.read_text())) == {"alice", "vera"}

    (tmp_path / "a-file").write_text("")  # a read-only mount, as far as writing goes
    unwritable = Sessions("k" * 40, logouts=Logouts(tmp_path / "a-file" / "logouts.json"))
    cookie, _ = unwritable.issue(User("alice", "admin"), "h", now=1000)
    unwritable.end(User("alice", "admin"), now=1001)  # not kept across a restart, but still ended here
    assert unwritable.read(cookie, now=1002) is None
    assert "console logouts file not written" in caplog.text


def test_a_changed_password_or_role_or_a_removed_user_ends_the_old_sessions(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    hashes = {"alice": hash_password(ALICE), "vera": hash_password(VERA), "vera2": hash_password("vera-new-passphrase")}

    def write(**entries: tuple[str, str]) -> None:
        path.write_text(json.dumps({name: {"role": role, "password": hashes[key]} for name, (role, key) in entries.items()}))

    write(alice=("admin", "alice"), vera=("viewer", "vera"))
    users = Users.load(path)

    async def check(client: TestClient) -> None:
        await _log_in(client, "alice", ALICE)
        alice = _cookie(client)
        await _log_in(client, "vera", VERA)
        vera = _cookie(client)
        assert await _probe(client, alice) == 200 and await _probe(client, vera) == 200

        write(alice=("viewer", "alice"), vera=("viewer", "vera"))  # alice demoted
        assert await _probe(client, alice) == 303 and await _probe(client, vera) == 200
        await _log_in(client, "alice", ALICE)
        alice = _cookie(client)
        assert await _probe(client, alice) == 200

        write(alice=("viewer", "alice"), vera=("viewer", "vera2"))  # vera's password changed
        assert await _probe(client, vera) == 303 and await _probe(client, alice) == 200
        await _log_in(client, "vera", VERA, expect=401)
        await _log_in(client, "vera", "vera-new-passphrase")

        write(vera=("viewer", "vera2"))  # alice removed
        assert await _probe(client, alice) == 303

        path.write_text("{half written")  # a broken file lets nobody in until it is mended
        assert await _probe(client, _cookie(client)) == 303

    _run(_console(users), check)


def test_an_idle_session_ends_and_every_request_renews_it(tmp_path: Path) -> None:
    sessions = Sessions("k" * 40, idle_seconds=60)
    cookie, session = sessions.issue(User("alice", "admin"), "h", now=1000)
    assert sessions.read(cookie, now=1059) == session
    assert sessions.read(cookie, now=1061) is None
    renewed = sessions.refresh(session, now=1050)
    assert sessions.read(renewed, now=1100) is not None and sessions.read(renewed, now=1111) is None
    long_ago = sessions.refresh(session, now=1000 + 8 * 3600)
    assert sessions.read(long_ago, now=1000 + 8 * 3600 + 1) is None  # 8 hours at most, however active

    users = Users.load(_users_file(tmp_path / "users.json", alice=("admin", ALICE)))

    async def check(client: TestClient) -> None:
        await _log_in(client, "alice", ALICE)
        answer = await client.get("/probe", allow_redirects=False)
        assert answer.status == 200 and SESSION_COOKIE in answer.cookies  # renewed on every page
        await asyncio.sleep(1.2)
        assert (await client.get("/probe", allow_redirects=False)).status == 303

    _run(_console(users, idle=1), check)


# -- login --
class _Counting(Users):
    """A users file whose hashing is counted and, when asked, slow (to see it bounded)."""

    def __init__(self, entries: dict[str, tuple[str, str]], delay: float = 0.0) -> None:
        super().__init__(entries)
        self.calls, self.running, self.most = 0, 0, 0
        self.delay = delay
        self._count = threading.Lock()

    def authenticate(self, name: str, password: str) -> User | None:
        with self._count:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.delay)
            return super().authenticate(name, password)
        finally:
            with self._count:
                self.running -= 1


def test_failed_logins_are_throttled_per_user_and_per_address_before_any_hashing() -> None:
    users = _Counting({"alice": ("admin", hash_password(ALICE))})
    config = Config(console_login_user_attempts=3, console_login_address_attempts=5)

    async def check(client: TestClient) -> None:
        for _ in range(3):
            await _log_in(client, "alice", "wrong-password-x", expect=401)
        refused = await _log_in(client, "alice", ALICE, expect=429)  # even the right password now
        assert int(refused.headers["Retry-After"]) > 0 and "Too many failed logins" in await refused.text() or "ログインの失敗" in await refused.text()
        assert users.calls == 3  # refused before hashing
        await _log_in(client, "bob", "wrong-password-x", expect=401)
        await _log_in(client, "carol", "wrong-password-x", expect=401)
        await _log_in(client, "dave", "wrong-password-x", expect=429)  # this address is out of attempts
        assert users.calls == 5

    _run(_console(users, config), check)


def test_a_success_clears_the_users_count() -> None:
    throttle = LoginThrottle(per_user=2, per_address=100, window=60)
    throttle.failed("alice", "1.2.3.4", now=0)
    throttle.succeeded("alice")
    throttle.failed("alice", "1.2.3.4", now=1)
    assert throttle.retry_after("alice", "1.2.3.4", now=2) == 0
    throttle.failed("alice", "1.2.3.4", now=3)
    assert throttle.retry_after("alice", "1.2.3.4", now=4) == pytest.approx(57)
    assert throttle.retry_after("alice", "1.2.3.4", now=61.5) == 0  # the first left the window


def test_the_throttle_remembers_a_bounded_number_of_names() -> None:
    throttle = LoginThrottle(per_user=1, per_address=10**9, window=60, max_keys=100)
    for i in range(1000):
        throttle.failed(f"user-{i}", "1.2.3.4", now=i / 1000)
    assert len(throttle._failures) <= 100
    assert throttle.retry_after("user-999", "9.9.9.9", now=1) > 0


def test_scrypt_runs_a_bounded_number_at_a_time_and_a_flood_is_answered_at_once() -> None:
    users = _Counting({"alice": ("admin", hash_password(ALICE))}, delay=0.3)
    config = Config(console_login_user_attempts=1000, console_login_address_attempts=1000)

    async def check(client: TestClient) -> None:
        token = await _login_token(client)

        async def attempt(i: int) -> int:
            answer = await client.post("/login", data={"login_token": token, "user": f"u{i}", "password": "wrong-password-x"}, allow_redirects=False)
            return answer.status

        statuses = await asyncio.gather(*(attempt(i) for i in range(40)))
        assert set(statuses) <= {401, 503} and 503 in statuses and 401 in statuses
        assert users.most <= 2
        assert (await client.get("/login")).status == 200  # the loop was never blocked

    _run(_console(users, config), check)


@pytest.mark.parametrize(
    ("password", "ok"),
    [("alice-passphrase-1", True), ("short", False), ("aaaaaaaaaaaaaaaa", False), ("abababababab", False), ("パスワードはとても長いです", True)],
)
def test_password_strength(password: str, ok: bool) -> None:
    assert (password_problem(password) is None) is ok


def test_a_correct_but_weak_password_does_not_log_in() -> None:
    users = Users({"old": ("admin", hash_password("weak"))})

    async def check(client: TestClient) -> None:
        answer = await _log_in(client, "old", "weak", expect=403)
        assert "too weak" in await answer.text() or "弱すぎます" in await answer.text()

    _run(_console(users), check)


def test_hash_password_refuses_a_weak_password(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["console", "--hash-password"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stored", "ok"),
    [
        (hash_password("x"), True),
        ("scrypt$16384$8$1$" + "A" * 22 + "$" + "A" * 43, True),
        ("scrypt$1024$8$1$" + "A" * 22 + "$" + "A" * 43, False),  # cheaper than the baseline
        ("scrypt$16384$1$1$" + "A" * 22 + "$" + "A" * 43, False),
        ("scrypt$1048576$8$1$" + "A" * 22 + "$" + "A" * 43, False),  # a 1 GiB login
        ("scrypt$16385$8$1$" + "A" * 22 + "$" + "A" * 43, False),  # not a power of two
        ("scrypt$16384$8$1$AAAA$" + "A" * 43, False),  # a short salt
        ("scrypt$16384$8$1$" + "A" * 22 + "$AAAA", False),
        ("scrypt$x$8$1$a$b", False),
        ("md5$abc", False),
    ],
)
def test_a_users_file_hash_must_be_at_least_the_baseline(stored: str, ok: bool, tmp_path: Path) -> None:
    assert (hash_problem(stored) is None) is ok
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"alice": {"role": "admin", "password": stored}}))
    if ok:
        Users.load(path)
    else:
        with pytest.raises(ValueError, match="CRM_SYNC_CONSOLE_USERS_FILE: user 'alice'"):
            Users.load(path)


# -- single sign-on behind oauth2-proxy --
SSO = TrustedHeaders((NET("127.0.0.1/32"), NET("10.0.0.0/8")), {"crm-admins": "admin", "staff": "viewer"})


@pytest.mark.parametrize(
    ("headers", "user"),
    [
        ({"X-Forwarded-User": "alice", "X-Forwarded-Groups": "staff,crm-admins"}, User("alice", "admin")),
        ({"X-Forwarded-User": "vera", "X-Forwarded-Groups": "staff"}, User("vera", "viewer")),
        ({"X-Forwarded-Email": "vera@example.com", "X-Forwarded-Groups": "staff"}, User("vera@example.com", "viewer")),
        ({"X-Forwarded-User": "eve", "X-Forwarded-Groups": "everyone"}, None),
        ({"X-Forwarded-User": "eve"}, None),
        ({"X-Forwarded-Groups": "crm-admins"}, None),
        ({"X-Forwarded-User": "bad\tname", "X-Forwarded-Groups": "crm-admins"}, None),
        ({"X-Forwarded-User": "x" * 201, "X-Forwarded-Groups": "crm-admins"}, None),
    ],
)
def test_the_proxy_headers_name_the_user_and_the_groups_give_the_role(headers: dict[str, str], user: User | None) -> None:
    assert SSO.user(headers) == user
    assert SSO.user(CIMultiDict(headers)) == user


def test_a_header_smuggled_beside_the_proxys_is_refused() -> None:
    twice = CIMultiDict([("X-Forwarded-User", "eve"), ("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "crm-admins")])
    assert SSO.user(twice) is None
    groups_twice = CIMultiDict([("X-Forwarded-User", "eve"), ("X-Forwarded-Groups", "crm-admins"), ("X-Forwarded-Groups", "staff")])
    assert SSO.user(groups_twice) is None


@pytest.mark.parametrize(
    ("remote", "trusted"), [("127.0.0.1", True), ("10.2.3.4", True), ("::ffff:10.2.3.4", True), ("192.168.1.1", False), (None, False), ("junk", False)]
)
def test_the_headers_are_believed_only_from_the_proxy(remote: str | None, trusted: bool) -> None:
    assert SSO.from_proxy(remote) is trusted


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [("127.0.0.1", "203.0.113.9", "203.0.113.9"), ("127.0.0.1", "1.1.1.1, 203.0.113.9", "203.0.113.9"), ("192.0.2.1", "203.0.113.9", "192.0.2.1"),
     ("127.0.0.1", "junk", "127.0.0.1"), ("127.0.0.1", None, "127.0.0.1")],
)
def test_the_throttled_address_is_the_forwarded_one_only_behind_our_proxy(remote: str, forwarded: str | None, expected: str) -> None:
    assert client_address(remote, forwarded, SSO.proxies) == expected


def test_trusted_header_mode_through_the_guard() -> None:
    async def check(client: TestClient) -> None:
        admin = {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "crm-admins"}
        first = await client.get("/probe", headers=admin)
        assert first.status == 200 and SESSION_COOKIE in first.cookies
        assert (await client.post("/probe", headers=admin, data={"csrf": "forged"})).status == 403
        assert (await client.get("/probe")).status == 403  # no identity from the proxy
        assert (await client.get("/probe", headers={"X-Forwarded-User": "eve", "X-Forwarded-Groups": "x"})).status == 403
        viewer = {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "staff"}
        page = await client.get("/probe", headers=viewer)  # the same name with another role: a new session
        assert page.status == 200 and page.cookies[SESSION_COOKIE].value != first.cookies[SESSION_COOKIE].value
        assert (await client.get("/login", allow_redirects=False)).headers["Location"] == "/"

    _run(_console(None, sso=SSO), check)

    elsewhere = TrustedHeaders((NET("10.9.9.9/32"),), {"crm-admins": "admin"})

    async def untrusted(client: TestClient) -> None:
        answer = await client.get("/probe", headers={"X-Forwarded-User": "alice", "X-Forwarded-Groups": "crm-admins"})
        assert answer.status == 403 and SESSION_COOKIE not in answer.cookies

    _run(_console(None, sso=elsewhere), untrusted)


# -- cookies over TLS --
@pytest.mark.parametrize("config", [Config(console_behind_tls=True), Config(console_tls_cert=Path("c.pem"), console_tls_key=Path("k.pem"))])
def test_cookies_are_secure_when_the_console_is_served_over_tls(config: Config) -> None:
    users = Users({"alice": ("admin", hash_password(ALICE))})

    async def check(client: TestClient) -> None:
        page = await client.get("/login")
        assert page.cookies[LOGIN_COOKIE]["secure"]
        login = await client.post(
            "/login", data={"login_token": page.cookies[LOGIN_COOKIE].value, "user": "alice", "password": ALICE},
            headers={"Cookie": f"{LOGIN_COOKIE}={page.cookies[LOGIN_COOKIE].value}"}, allow_redirects=False,
        )
        assert login.status == 303 and login.cookies[SESSION_COOKIE]["secure"] and login.cookies[SESSION_COOKIE]["httponly"]
        assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert (await client.get("/lang/en", allow_redirects=False)).cookies["crm_sync_lang"]["secure"]

    _run(_console(users, config), check)


def test_cookies_are_not_secure_on_plain_loopback() -> None:
    async def check(client: TestClient) -> None:
        page = await client.get("/login")
        assert not page.cookies[LOGIN_COOKIE]["secure"] and "Strict-Transport-Security" not in page.headers

    _run(_console(Users({"alice": ("admin", hash_password(ALICE))})), check)


# -- start-up checks --
USERS = Path("users.json")


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (Config(console_users_file=USERS), None),
        (Config(console_users_file=USERS, console_bind="::1"), None),
        (Config(console_users_file=USERS, console_bind="0.0.0.0"), "CRM_SYNC_CONSOLE_TLS_CERT: expected a certificate or CRM_SYNC_CONSOLE_TRUSTED_HEADERS=true (CRM_SYNC_CONSOLE_BIND is 0.0.0.0, not loopback"),
        (Config(console_users_file=USERS, console_bind="console.internal", console_behind_tls=True), "CRM_SYNC_CONSOLE_BIND is console.internal, not loopback"),
        (Config(console_bind="0.0.0.0", console_trusted_headers=True, console_group_roles="admins=admin"), None),
        (Config(console_trusted_headers=True), "CRM_SYNC_CONSOLE_GROUP_ROLES: expected group=admin|viewer"),
        (Config(console_trusted_headers=True, console_group_roles="admins=root"), "CRM_SYNC_CONSOLE_GROUP_ROLES: expected"),
        (Config(console_trusted_headers=True, console_group_roles="admins=admin", console_trusted_proxies=""), "CRM_SYNC_CONSOLE_TRUSTED_PROXIES: expected"),
        (Config(console_trusted_headers=True, console_group_roles="admins=admin", console_trusted_proxies="proxy.local"), "CRM_SYNC_CONSOLE_TRUSTED_PROXIES: expected"),
        (Config(), "CRM_SYNC_CONSOLE_USERS_FILE: expected a users file"),
        (Config(console_users_file=USERS, console_secret="short"), "CRM_SYNC_CONSOLE_SECRET: expected at least 32 random characters"),
        (Config(console_users_file=USERS, console_secret="a" * 64), "CRM_SYNC_CONSOLE_SECRET: expected at least 32 random characters"),
        (Config(console_users_file=USERS, console_secret="0123456789abcdef" * 4), None),
        (Config(console_users_file=USERS, console_tls_cert=Path("c.pem")), "CRM_SYNC_CONSOLE_TLS_KEY: expected a PEM file"),
        (Config(console_users_file=USERS, console_tls_cert=Path("/nonexistent/c.pem"), console_tls_key=Path("/nonexistent/k.pem")), "CRM_SYNC_CONSOLE_TLS_CERT: expected a readable PEM file"),
    ],
)
def test_the_console_refuses_to_start_on_a_weak_setup(config: Config, problem: str | None) -> None:
    problems = config.console_problems()
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
        assert "short" not in " ".join(problems) and "a" * 64 not in " ".join(problems)  # a secret is never echoed


def test_the_new_variables_are_read_from_the_environment() -> None:
    config = Config.from_env({
        "CRM_SYNC_CONSOLE_IDLE_SECONDS": "60", "CRM_SYNC_CONSOLE_TLS_CERT": "c.pem", "CRM_SYNC_CONSOLE_TLS_KEY": "k.pem",
        "CRM_SYNC_CONSOLE_BEHIND_TLS": "true", "CRM_SYNC_CONSOLE_TRUSTED_HEADERS": "yes", "CRM_SYNC_CONSOLE_TRUSTED_PROXIES": "10.0.0.0/8",
        "CRM_SYNC_CONSOLE_GROUP_ROLES": "crm-admins=admin, staff=viewer", "CRM_SYNC_CONSOLE_LOGIN_USER_ATTEMPTS": "3",
        "CRM_SYNC_CONSOLE_LOGIN_ADDRESS_ATTEMPTS": "9", "CRM_SYNC_CONSOLE_LOGIN_WINDOW_SECONDS": "30",
    })
    assert config.console_idle_seconds == 60 and config.console_tls and config.console_secure_cookies
    assert config.console_proxy_networks == (NET("10.0.0.0/8"),)
    assert config.console_group_role_map == {"crm-admins": "admin", "staff": "viewer"}
    assert (config.console_login_user_attempts, config.console_login_address_attempts, config.console_login_window_seconds) == (3, 9, 30)
