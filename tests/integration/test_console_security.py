"""The console process against a web attacker, over raw HTTP (http.client and plain sockets, no
browser smoothing anything over), with the session's broker behind it: redirects only to its own
pages, sessions that end, the login throttle and the bounded scrypt work, every form field fuzzed
with no 500, its own TLS mode with Secure cookies, the trusted-header mode behind oauth2-proxy, and
the refusals at start (a plain-HTTP bind off loopback, a weak secret).

No worker and no CRM: the console needs only the topics and a company's settings.
"""

from __future__ import annotations

import concurrent.futures
import html.parser
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
from confluent_kafka import KafkaException

from processors.domain.model import Crm, EventType
from processors.kafka.topics import ensure_topics
from processors.ops.admin import SettingsAdmin
from processors.ops.console.auth import hash_password
from tests.integration.harness import ROOT, Deployment, free_port, unique_topics, wait_for

pytestmark = pytest.mark.integration

ADMIN, VIEWER = ("alice", "alice-passphrase-1"), ("vera", "vera-passphrase-1")
SECRET = "0123456789abcdef0123456789abcdef"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def cookie(self, name: str) -> Any:
        jar: SimpleCookie = SimpleCookie()
        for line in self.headers.get_all("Set-Cookie") or []:
            jar.load(line)
        return jar.get(name)


@dataclass
class Console:
    """`crm-sync console` as a process, and a raw HTTP(S) client for it."""

    base_env: dict[str, str]
    users: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    ca: str | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Console":
        env = {**self.base_env, "CRM_SYNC_CONSOLE_USERS_FILE": str(self.users), "CRM_SYNC_CONSOLE_PORT": str(self.port),
               "CRM_SYNC_CONSOLE_SECRET": SECRET, **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", "processors.ops.cli", "console"], cwd=ROOT, env=env,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return self.call("GET", "/favicon.ico").status == 204
            except OSError:
                return False

        wait_for(up, 60, 0.2, "the console")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def connection(self) -> http.client.HTTPConnection:
        if self.ca:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=ssl.create_default_context(cafile=self.ca))
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def call(self, method: str, path: str, body: bytes | dict[str, Any] | None = None, cookies: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        if isinstance(body, dict):
            body = urlencode(body, doseq=True).encode()
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=all_headers)
            answer = conn.getresponse()
            return Answer(answer.status, answer.headers, answer.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    def raw(self, request: bytes) -> int:
        """One request as bytes, exactly as written; the answer's status."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.sendall(request)
            head = b""
            while b"\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
        return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0

    def login_form(self) -> tuple[str, dict[str, str]]:
        page = self.call("GET", "/login")
        token = page.cookie("crm_sync_login").value
        return token, {"crm_sync_login": token}

    def login(self, user: tuple[str, str], next_page: str = "/", expect: int = 303) -> Answer:
        token, cookies = self.login_form()
        answer = self.call("POST", "/login", {"login_token": token, "user": user[0], "password": user[1], "next": next_page}, cookies)
        assert answer.status == expect, answer.text[:500]
        return answer

    def session(self, user: tuple[str, str]) -> dict[str, str]:
        return {"crm_sync_session": self.login(user).cookie("crm_sync_session").value}


# -- the stack, once per module --
@pytest.fixture(scope="module")
def deployment(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    home = tmp_path_factory.mktemp("console-security")
    d = Deployment(bootstrap=kafka_bootstrap, topics=unique_topics("consec"), secrets_dir=home / "secrets", ca_file="")
    ensure_topics(d.config())
    return d


@pytest.fixture(scope="module")
def company(deployment: Deployment) -> str:
    company_id = f"co-{uuid.uuid4().hex[:6]}"
    admin = SettingsAdmin(deployment.config(), actor="test-setup")

    def connected() -> bool:  # fresh topics: their leaders may not be elected yet
        try:
            admin.set_connected(company_id, Crm.SALESFORCE, True)
        except KafkaException:
            return False
        return True

    wait_for(connected, 60, 0.5, "the settings topic")
    for mt in ("intro", "demo"):
        admin.set_content(company_id, mt, meeting_type_name=f"{mt} (30分)")
    admin.set_toggle(company_id, "intro", Crm.SALESFORCE, EventType.MEETING_BOOKED, True)
    return company_id


def write_users(path: Path, **entries: tuple[str, str]) -> Path:
    path.write_text(json.dumps({name: {"role": role, "password": hash_password(pw)} for name, (role, pw) in entries.items()}))
    return path


@pytest.fixture
def start(deployment: Deployment, tmp_path: Path) -> Iterator[Any]:
    """Starts consoles with extra settings; stops them all at the end of the test."""
    started: list[Console] = []

    def go(users: Path | None = None, ca: str | None = None, **env: str) -> Console:
        users = users or write_users(tmp_path / f"users-{len(started)}.json", alice=("admin", ADMIN[1]), vera=("viewer", VIEWER[1]))
        env = {"CRM_SYNC_STATE_DIR": str(tmp_path / "state"), **env}  # this test's own logouts file
        c = Console(deployment.env(), users, tmp_path / f"console-{len(started)}.log", env, ca)
        started.append(c)
        return c.start()

    yield go
    for c in started:
        c.stop()


@pytest.fixture(scope="module")
def console(deployment: Deployment, company: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    users = write_users(home / "users.json", alice=("admin", ADMIN[1]), vera=("viewer", VIEWER[1]))
    c = Console(deployment.env(), users, home / "console.log", {
        "CRM_SYNC_STATE_DIR": str(home / "state"), "CRM_SYNC_CONSOLE_LOGIN_USER_ATTEMPTS": "1000", "CRM_SYNC_CONSOLE_LOGIN_ADDRESS_ATTEMPTS": "1000",
    }).start()
    yield c
    c.stop()
    assert "Traceback" not in c.log.read_text(), c.log.read_text()[-3000:]


# -- redirects --
@pytest.mark.parametrize("target", ["/%09/evil.example/", "//evil.example/", "/%5Cevil.example", "https://evil.example/", "/%0A/evil.example", "/%20/evil.example/"])
def test_the_language_switch_redirects_only_to_the_consoles_pages(console: Console, target: str) -> None:
    answer = console.call("GET", f"/lang/en?next={target}")
    assert answer.status == 303 and answer.headers["Location"] == "/"


def test_the_login_forms_next_only_goes_to_the_consoles_pages(console: Console, company: str) -> None:
    page = console.call("GET", "/login?next=/%09/evil.example/")
    assert 'name="next" value="/"' in page.text
    assert console.login(ADMIN, "/\t/evil.example/").headers["Location"] == "/"
    assert console.login(ADMIN, "//evil.example/").headers["Location"] == "/"
    assert console.login(ADMIN, f"/c/{company}/history").headers["Location"] == f"/c/{company}/history"
    # a page asked for before logging in is where the login leads back to
    first = console.call("GET", f"/c/{company}/failures?crm=salesforce")
    assert first.status == 303 and first.headers["Location"].startswith("/login?next=")


# -- sessions --
def test_logout_ends_the_session_for_a_copied_cookie_too(console: Console, company: str) -> None:
    copied = console.session(ADMIN)
    assert console.call("GET", f"/c/{company}", cookies=copied).status == 200
    other_browser = console.session(ADMIN)
    csrf = console.call("GET", "/", cookies=copied).text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    out = console.call("POST", "/logout", {"csrf": csrf}, copied)
    assert out.status == 303 and out.headers["Location"] == "/login"
    for cookies in (copied, other_browser):
        again = console.call("GET", f"/c/{company}", cookies=cookies)
        assert again.status == 303 and again.headers["Location"].startswith("/login")
    assert console.call("GET", f"/c/{company}", cookies=console.session(ADMIN)).status == 200


def test_a_logout_still_holds_after_the_console_restarts(start: Any, tmp_path: Path, company: str) -> None:
    users = write_users(tmp_path / "users.json", alice=("admin", ADMIN[1]))
    c = start(users)
    copied = c.session(ADMIN)
    csrf = c.call("GET", "/", cookies=copied).text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert c.call("POST", "/logout", {"csrf": csrf}, copied).status == 303
    c.stop()
    again = start(users)  # the same secret and state directory
    assert again.call("GET", f"/c/{company}", cookies=copied).status == 303
    assert again.call("GET", f"/c/{company}", cookies=again.session(ADMIN)).status == 200


def test_a_changed_role_or_password_ends_the_old_sessions(start: Any, tmp_path: Path, company: str) -> None:
    users = write_users(tmp_path / "users.json", alice=("admin", ADMIN[1]), vera=("viewer", VIEWER[1]))
    c = start(users)
    alice, vera = c.session(ADMIN), c.session(VIEWER)
    assert c.call("GET", f"/c/{company}", cookies=alice).status == 200
    entries = json.loads(users.read_text())
    entries["alice"]["role"] = "viewer"
    users.write_text(json.dumps(entries))
    assert c.call("GET", f"/c/{company}", cookies=alice).status == 303
    assert c.call("GET", f"/c/{company}", cookies=vera).status == 200  # untouched entry, untouched session
    entries["vera"]["password"] = hash_password("vera-new-passphrase")
    users.write_text(json.dumps(entries))
    assert c.call("GET", f"/c/{company}", cookies=vera).status == 303
    c.login(VIEWER, expect=401)
    c.login(("vera", "vera-new-passphrase"))


def test_an_idle_session_ends_while_an_active_one_lives_on(start: Any, company: str) -> None:
    c = start(CRM_SYNC_CONSOLE_IDLE_SECONDS="6")
    idle, active = c.session(ADMIN), c.session(ADMIN)
    begun = time.monotonic()

    def idle_is_over() -> bool:
        # The active browser's page (one that reads no topic, so a loaded machine still answers well
        # within the idle time), its cookie renewed by every answer.
        answer = c.call("GET", f"/c/{company}/backfill", cookies=active)
        assert answer.status == 200, "an active session ended"
        active["crm_sync_session"] = answer.cookie("crm_sync_session").value
        return c.call("GET", f"/c/{company}/backfill", cookies=idle).status == 303  # the idle one is never renewed

    wait_for(idle_is_over, 60, 0.5, "the idle session to end")
    assert time.monotonic() - begun >= 5
    assert c.call("GET", f"/c/{company}", cookies=active).status == 200


# -- login --
def test_failed_logins_are_throttled_per_user_and_per_address(start: Any) -> None:
    c = start(CRM_SYNC_CONSOLE_LOGIN_USER_ATTEMPTS="3", CRM_SYNC_CONSOLE_LOGIN_ADDRESS_ATTEMPTS="6")
    for _ in range(3):
        c.login(("alice", "wrong-passphrase"), expect=401)
    refused = c.login(ADMIN, expect=429)  # the right password too: refused before it is hashed
    assert int(refused.headers["Retry-After"]) > 0
    c.login(VIEWER)  # another user from here still may
    for name in ("bob", "carol", "dave"):
        c.login((name, "wrong-passphrase"), expect=401)
    c.login(VIEWER, expect=429)  # this address has used its attempts


def test_a_login_flood_is_bounded_and_the_console_keeps_answering(start: Any, company: str) -> None:
    c = start(CRM_SYNC_CONSOLE_LOGIN_USER_ATTEMPTS="1000", CRM_SYNC_CONSOLE_LOGIN_ADDRESS_ATTEMPTS="1000")
    token, cookies = c.login_form()
    body = lambda i: {"login_token": token, "user": f"u{i}", "password": "wrong-passphrase"}  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        flood = [pool.submit(c.call, "POST", "/login", body(i), cookies) for i in range(96)]
        assert c.call("GET", "/login").status == 200  # during the flood
        statuses = {f.result().status for f in flood}
    assert statuses <= {401, 503} and 401 in statuses, statuses
    assert c.proc is not None and c.proc.poll() is None
    assert c.call("GET", f"/c/{company}", cookies=c.session(ADMIN)).status == 200


# -- robustness --
def test_a_non_ascii_csrf_value_is_403(console: Console, company: str) -> None:
    cookies = console.session(ADMIN)
    for value in ("ｃｓｒｆ", "é" * 32, "🙂"):
        assert console.call("POST", f"/c/{company}/pause", {"paused": "1", "csrf": value}, cookies).status == 403
    assert console.call("POST", f"/c/{company}/pause", b"paused=1&csrf=%FF%FE", cookies).status in (400, 403)
    assert console.call("POST", f"/c/{company}/pause", b"paused=1&csrf=\xe9", cookies).status in (400, 403)
    assert console.call("GET", "/", cookies={"crm_sync_session": "%C3%A9.x", "crm_sync_flash": "é"}).status == 303


class _Forms(html.parser.HTMLParser):
    """Every form of a page: its action and its fields with the values the page gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, list[str]]]] = []
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("method", "get").lower() == "post":
            self.forms.append((a["action"], {}))
        elif not self.forms or "name" not in a and tag != "option":
            return
        fields = self.forms[-1][1] if self.forms else {}
        if tag in ("input", "button", "textarea") and a.get("name"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a and a["name"] in fields:
                return
            fields.setdefault(a["name"], []).append(a.get("value", "1" if a.get("type") == "checkbox" else ""))
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select is not None and self._select not in fields:
            fields[self._select] = [a.get("value", "")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


BAD_VALUES: list[str | bytes] = ["アクメ\u202e🙂\u0000", "x" * 60_000, "", " \t\r\n", b"%FF%FE%C0%AF", "-1e309", "../../../etc/passwd"]


def test_every_form_field_fuzzed_over_raw_http_never_answers_500(console: Console, company: str) -> None:
    cookies = console.session(ADMIN)
    pages = ["/", f"/c/{company}", f"/c/{company}/apply", f"/c/{company}/failures"]
    forms: dict[tuple[str, tuple[str, ...]], dict[str, list[str]]] = {}
    for page in pages:
        answer = console.call("GET", page, cookies=cookies)
        assert answer.status == 200, (page, answer.text[:300])
        parser = _Forms()
        parser.feed(answer.text)
        for action, fields in parser.forms:
            if action != "/logout":
                forms.setdefault((action, tuple(sorted(fields))), fields)
    review = console.call("POST", f"/c/{company}/apply/review", {
        "csrf": forms[next(k for k in forms if k[0].endswith("/apply/review"))]["csrf"], "source": "intro", "crm": "salesforce",
        "event": "meeting_booked", "target": "demo"}, cookies)
    assert review.status == 200, review.text[:300]
    parser = _Forms()
    parser.feed(review.text)
    for action, fields in parser.forms:
        if action != "/logout":
            forms.setdefault((action, tuple(sorted(fields))), fields)
    assert {a for a, _ in forms} >= {f"/c/{company}/{p}" for p in ("connect", "todo", "pause", "recheck", "meeting-type", "mapping", "apply/review", "apply")}

    answers: list[tuple[str, str, int]] = []
    for (action, names), fields in forms.items():
        for name in names:
            for bad in BAD_VALUES:
                others = {k: v for k, v in fields.items() if k != name}
                if isinstance(bad, bytes):
                    body = urlencode(others, doseq=True).encode() + b"&" + name.encode() + b"=" + bad
                else:
                    body = urlencode({**others, name: bad}, doseq=True).encode()
                status = console.call("POST", action, body, cookies).status
                answers.append((action, name, status))
    assert answers and all(status < 500 for _, _, status in answers), [a for a in answers if a[2] >= 500]
    assert any(status == 403 for _, name, status in answers if name == "csrf")

    # the login form and the pages' queries and paths
    for bad in BAD_VALUES:
        value = bad.decode() if isinstance(bad, bytes) else bad
        token, login_cookies = console.login_form()
        for name in ("user", "password", "next", "login_token"):
            fields = {"login_token": token, "user": "alice", "password": "wrong-passphrase", "next": "/", name: value}
            assert console.call("POST", "/login", fields, login_cookies).status < 500, (name, value[:20])
        query = urlencode({"crm": value, "error_class": value, "since": value, "all": value, "from": value, "company": value, "next": value})
        for page in (*pages, f"/c/{company}/history", f"/c/{company}/log", "/lang/en", "/login"):
            assert console.call("GET", f"{page}?{query[:7000]}", cookies=cookies).status < 500, (page, value[:20])
    for path in ("/c/%E3%82%A2%F0%9F%99%82", "/c/%FF%FE", "/c/" + "x" * 4000, "/c/%00", f"/c/{company}/failures?since=99999-01-01"):
        assert console.call("GET", path, cookies=cookies).status < 500, path[:40]
    assert console.raw(b"POST /c/x/pause HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\nContent-Length: 9\r\n\r\n--zz\r\nbad") < 500


# -- TLS --
def test_its_own_tls_mode_serves_https_with_secure_cookies(start: Any, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    c = start(ca=str(ca_file), CRM_SYNC_CONSOLE_BIND="0.0.0.0", CRM_SYNC_CONSOLE_TLS_CERT=str(cert_file), CRM_SYNC_CONSOLE_TLS_KEY=str(key_file))
    login = c.login(ADMIN)
    for name in ("crm_sync_session",):
        assert login.cookie(name)["secure"] and login.cookie(name)["httponly"]
    assert c.call("GET", "/login").cookie("crm_sync_login")["secure"]
    try:  # plain HTTP on the same port is never served a page
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
        conn.request("GET", "/login")
        plain: int | None = conn.getresponse().status
    except (OSError, http.client.HTTPException):
        plain = None
    assert plain != 200


# -- single sign-on --
def test_trusted_header_mode_behind_oauth2_proxy(start: Any, company: str, deployment: Deployment) -> None:
    c = start(
        CRM_SYNC_CONSOLE_TRUSTED_HEADERS="true", CRM_SYNC_CONSOLE_TRUSTED_PROXIES="127.0.0.1",
        CRM_SYNC_CONSOLE_GROUP_ROLES="crm-admins=admin,staff=viewer", CRM_SYNC_CONSOLE_BIND="0.0.0.0",
    )
    admin = {"X-Forwarded-User": "alice", "X-Forwarded-Email": "alice@example.com", "X-Forwarded-Groups": "staff,crm-admins"}
    page = c.call("GET", f"/c/{company}", headers=admin)
    assert page.status == 200 and "alice" in page.text
    cookies = {"crm_sync_session": page.cookie("crm_sync_session").value}
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    changed = c.call("POST", f"/c/{company}/pause", {"paused": "0", "csrf": csrf}, cookies, admin)
    assert changed.status == 303
    assert c.call("POST", f"/c/{company}/pause", {"paused": "0"}, cookies, admin).status == 403  # no CSRF token
    viewer = {"X-Forwarded-User": "vera", "X-Forwarded-Groups": "staff"}
    v_page = c.call("GET", f"/c/{company}", headers=viewer)
    v_csrf = v_page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    v_cookies = {"crm_sync_session": v_page.cookie("crm_sync_session").value}
    assert c.call("POST", f"/c/{company}/pause", {"paused": "0", "csrf": v_csrf}, v_cookies, viewer).status == 403
    assert c.call("GET", f"/c/{company}", headers={"X-Forwarded-User": "eve", "X-Forwarded-Groups": "everyone"}).status == 403
    assert c.call("GET", f"/c/{company}").status == 403
    log = SettingsAdmin(deployment.config(), actor="t").audit_log(company)
    assert log[-1].actor == "alice"

    elsewhere = start(
        CRM_SYNC_CONSOLE_TRUSTED_HEADERS="true", CRM_SYNC_CONSOLE_TRUSTED_PROXIES="10.9.9.9",
        CRM_SYNC_CONSOLE_GROUP_ROLES="crm-admins=admin",
    )
    refused = elsewhere.call("GET", f"/c/{company}", headers=admin)  # headers from an address that is not the proxy
    assert refused.status == 403 and refused.cookie("crm_sync_session") is None


# -- refused at start --
@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"CRM_SYNC_CONSOLE_BIND": "0.0.0.0"}, "crm-sync: error: CRM_SYNC_CONSOLE_TLS_CERT: expected a certificate or CRM_SYNC_CONSOLE_TRUSTED_HEADERS=true (CRM_SYNC_CONSOLE_BIND is 0.0.0.0, not loopback"),
        ({"CRM_SYNC_CONSOLE_SECRET": "weak-secret"}, "crm-sync: error: CRM_SYNC_CONSOLE_SECRET: expected at least 32 random characters"),
    ],
)
def test_a_plain_http_bind_off_loopback_or_a_weak_secret_does_not_start(deployment: Deployment, tmp_path: Path, env: dict[str, str], line: str) -> None:
    users = write_users(tmp_path / "users.json", alice=("admin", ADMIN[1]))
    run_env = {**deployment.env(), "CRM_SYNC_CONSOLE_USERS_FILE": str(users), "CRM_SYNC_CONSOLE_PORT": str(free_port()), **env}
    run = subprocess.run([sys.executable, "-m", "processors.ops.cli", "console"], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    [error] = run.stderr.splitlines()
    assert error.startswith(line), error
    assert "weak-secret" not in run.stderr
