"""The admin console in a real browser (Debian's chromium via selenium and /usr/bin/chromedriver),
against the console process, the real broker, the CRM sandbox and a running worker.

One browser, one worker, one console and one sandbox for the whole module; each test has its own
company, so the tests stay independent while sharing them. `CRM_SYNC_SCREENSHOTS=DIR` saves the
main screens there (docs/console-*.png come from that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from connectors.sandbox import CrmSandbox, Fault
from processors.codec import Codec
from processors.domain.model import Crm, EventType
from processors.ops.admin import SettingsAdmin
from processors.ops.console.auth import hash_password
from processors.ops.publisher import EventPublisher
from tests.integration.harness import ROOT, Deployment, WorkerProcess, free_port, http_ok, read_all, unique_topics, wait_for, write_default_secrets

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN, VIEWER = ("alice", "alice-passphrase-1"), ("vera", "vera-passphrase-1")
HOST = "hana.host@seller.example"
SCREENSHOTS = os.environ.get("CRM_SYNC_SCREENSHOTS")


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing under CI (./dev setup installs it)", pytrace=False)
    pytest.skip(f"{what} is missing (./dev setup installs it)")


# -- the stack, once per module --
@pytest.fixture(scope="module")
def sandbox() -> Iterator[CrmSandbox]:
    with CrmSandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap: str, sandbox: CrmSandbox, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    info = sandbox.info()
    secrets = tmp_path_factory.mktemp("console") / "secrets"
    write_default_secrets(secrets, sf_instance=info["salesforce_instance"], session_id=info["session_id"], hs_url=info["hubspot_url"], hs_token=info["hubspot_token"])
    return Deployment(bootstrap=kafka_bootstrap, topics=unique_topics("console"), secrets_dir=secrets, ca_file=info["ca_file"], extra_env={"CRM_SYNC_SINK_INLINE_RETRY_SECONDS": "1"})


@pytest.fixture(scope="module")
def worker(deployment: Deployment) -> Iterator[WorkerProcess]:
    w = WorkerProcess(deployment, deployment.secrets_dir.parent / "worker.log").start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def console(deployment: Deployment, worker: WorkerProcess) -> Iterator[str]:
    users = deployment.secrets_dir.parent / "users.json"
    users.write_text(json.dumps({
        ADMIN[0]: {"role": "admin", "password": hash_password(ADMIN[1])},
        VIEWER[0]: {"role": "viewer", "password": hash_password(VIEWER[1])},
    }))
    port = free_port()
    env = {**deployment.env(), "CRM_SYNC_CONSOLE_USERS_FILE": str(users), "CRM_SYNC_CONSOLE_PORT": str(port)}
    log = open(deployment.secrets_dir.parent / "console.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "processors.ops.cli", "console"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or http_ok(f"{base}/login"), 30, 0.1, "the console")
        assert proc.poll() is None, (deployment.secrets_dir.parent / "console.log").read_text()
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        _missing("Debian's chromium / chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=ja"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


# -- helpers --
class Page:
    """The browser on the console: navigate, log in, click, read."""

    def __init__(self, driver: Any, base: str) -> None:
        self.d, self.base = driver, base

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.1) -> Any:
        """wait_for, and on a timeout the page the browser shows (what went wrong is usually there)."""
        try:
            return wait_for(check, timeout, interval, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page at {self.d.current_url}: {self.d.find_element('tag name', 'body').text[:2000]}") from None

    def go(self, path: str) -> None:
        self.d.get(self.base + path)

    def login(self, user: tuple[str, str]) -> None:
        self.d.delete_all_cookies()
        self.go("/login")
        self.d.find_element("id", "user").send_keys(user[0])
        self.d.find_element("id", "password").send_keys(user[1])
        self.submit("login")
        self.wait(lambda: self.has("who"), "the logged-in page")

    def has(self, element_id: str) -> bool:
        return bool(self.d.find_elements("id", element_id))

    def click(self, element_id: str) -> None:
        self.d.find_element("id", element_id).click()

    def submit(self, element_id: str | None = None, element: Any = None) -> None:
        """Click a form's button and wait for the next page (the old one's message must not be read as the new one's)."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.d.find_element("tag name", "html")
        (element if element is not None else self.d.find_element("id", element_id)).click()

        def replaced(driver: Any) -> bool:
            try:
                old.is_enabled()
            except StaleElementReferenceException:
                return True
            except WebDriverException as exc:
                # Chromium may answer for a node of the page being replaced with this inspector error instead
                if "does not belong to the document" in str(exc):
                    return True
                raise
            return False

        WebDriverWait(self.d, 20).until(replaced)

    def text(self, element_id: str) -> str:
        return self.d.find_element("id", element_id).text

    def flash(self) -> str:
        return self.wait(lambda: self.has("flash") and self.text("flash"), "the outcome on the page")

    def shot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            height = self.d.execute_script("return document.documentElement.scrollHeight")
            self.d.set_window_size(1280, min(max(height + 40, 600), 2400))
            self.d.save_screenshot(str(Path(SCREENSHOTS) / f"console-{name}.png"))
            self.d.set_window_size(1280, 1000)


@pytest.fixture
def page(browser: Any, console: str) -> Page:
    p = Page(browser, console)
    p.login(ADMIN)
    return p


def company_id() -> str:
    return f"co-{uuid.uuid4().hex[:6]}"


def admin(deployment: Deployment) -> SettingsAdmin:
    return SettingsAdmin(deployment.config(), actor="test-setup")


def prepare(deployment: Deployment, company: str, *meeting_types: str, on: bool = False) -> None:
    a = admin(deployment)
    a.set_connected(company, Crm.SALESFORCE, True)
    for mt in meeting_types:
        a.set_content(company, mt, meeting_type_name=f"{mt} (30分)")
        if on:
            a.set_toggle(company, mt, Crm.SALESFORCE, EventType.MEETING_BOOKED, True)


def person(sandbox: CrmSandbox, email: str) -> str:
    sandbox.salesforce.add_user(HOST)
    return sandbox.salesforce.add_contact(email)


def book(deployment: Deployment, company: str, meeting_type: str, booker: str, *, answer: str = "こんにちは", phone: str | None = None) -> None:
    start = int(time.time() * 1000) + 86_400_000
    pub = EventPublisher({"bootstrap.servers": deployment.bootstrap}, deployment.topics)
    pub.publish_meeting_booked({
        "event_id": f"evt-{uuid.uuid4().hex}", "occurred_at": int(time.time() * 1000), "company_id": company,
        "meeting_type_id": meeting_type, "meeting_id": f"mtg-{uuid.uuid4().hex[:8]}", "meeting_type_name": "Intro",
        "host": {"email": HOST, "name": "Hana Host"},
        "booker": {"email": booker, "name": "Bo Booker", "company_name": "Buyer Inc.", "phone": phone},
        "start_at": start, "end_at": start + 1_800_000, "timezone": "Asia/Tokyo", "meeting_url": None,
        "form_answers": [{"question": "ご相談内容", "answer": answer}],
    })
    pub.flush()


def tasks_of(sandbox: CrmSandbox, contact: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [t for t in sandbox.salesforce.list_tasks() if t.get("WhoId") == contact]


# -- the tests --
def test_log_in_then_a_ticked_checkbox_makes_a_booking_a_task(page: Page, deployment: Deployment, sandbox: CrmSandbox) -> None:
    company = company_id()
    prepare(deployment, company, "intro")
    contact = person(sandbox, f"{company}@buyer.example")
    page.go(f"/c/{company}")
    assert "alice" in page.text("who")
    checkbox = page.d.find_element("id", "intro-salesforce-meeting_booked")
    assert not checkbox.is_selected()
    checkbox.click()
    page.d.find_element("id", "intro-hubspot-title").send_keys("商談: {meeting_type_name}")
    page.shot("settings")
    page.submit("save-intro")
    assert page.flash() == "保存しました"
    assert page.d.find_element("id", "intro-salesforce-meeting_booked").is_selected()

    [doc] = admin(deployment).show(company)[1]
    assert doc.salesforce_todo.meeting_booked and doc.hubspot_meeting_title == "商談: {meeting_type_name}"
    log = admin(deployment).audit_log(company)
    assert log[-1].actor == "alice" and "salesforce_todo" in log[-1].changes

    book(deployment, company, "intro", f"{company}@buyer.example")
    [task] = wait_for(tasks_of(sandbox, contact), 30, what="the booking's Task")
    assert task["Subject"]


def test_saving_a_form_over_another_admins_newer_change_shows_a_conflict_and_keeps_it(
    page: Page, deployment: Deployment
) -> None:
    company = company_id()
    prepare(deployment, company, "intro")
    page.go(f"/c/{company}")
    # Another admin saves the same meeting type after this page was rendered.
    SettingsAdmin(deployment.config(), actor="bob").set_content(company, "intro", hubspot_meeting_title="bob's title")
    page.d.find_element("id", "intro-salesforce-meeting_booked").click()
    page.submit("save-intro")
    flash = page.flash()
    assert "changed meanwhile" in flash and "bob" in flash
    [doc] = admin(deployment).show(company)[1]
    assert doc.hubspot_meeting_title == "bob's title" and not doc.salesforce_todo.meeting_booked  # nothing overwritten
    # Reloaded, the form edits the fresh version and saves.
    page.go(f"/c/{company}")
    page.d.find_element("id", "intro-salesforce-meeting_booked").click()
    page.submit("save-intro")
    assert page.flash() == "保存しました"
    [doc] = admin(deployment).show(company)[1]
    assert doc.hubspot_meeting_title == "bob's title" and doc.salesforce_todo.meeting_booked


def test_apply_to_other_meeting_types_after_a_confirm_step(page: Page, deployment: Deployment) -> None:
    company = company_id()
    prepare(deployment, company, "src", "t1", "t2")
    a = admin(deployment)
    a.set_toggle(company, "src", Crm.SALESFORCE, EventType.MEETING_BOOKED, True)
    a.set_toggle(company, "src", Crm.SALESFORCE, EventType.RESEARCH_COMPLETED, True)
    page.go(f"/c/{company}/apply?from=src")
    page.click("apply-event-meeting_booked")
    page.click("apply-target-t1")
    page.click("apply-target-t2")
    page.submit("apply-review")
    page.wait(lambda: page.has("apply-confirm"), "the confirm step")
    assert page.text("confirm-targets") == "t1, t2"
    page.shot("apply")
    assert not admin(deployment).show(company)[1][1].salesforce_todo.meeting_booked  # nothing changed before confirming
    page.submit("apply-confirm")
    assert page.flash() == "保存しました"
    mts = {m.meeting_type_id: m for m in admin(deployment).show(company)[1]}
    for target in ("t1", "t2"):
        assert mts[target].salesforce_todo.meeting_booked and not mts[target].salesforce_todo.research_completed
    assert page.d.find_element("id", "t2-salesforce-meeting_booked").is_selected()


def test_pause_holds_a_booking_and_resume_delivers_it(page: Page, deployment: Deployment, sandbox: CrmSandbox) -> None:
    company = company_id()
    prepare(deployment, company, "intro", on=True)
    contact = person(sandbox, f"{company}@buyer.example")
    page.go(f"/c/{company}")
    page.submit("pause")
    assert page.flash() == "保存しました"
    assert page.text("pause-state") == "一時停止中"
    assert admin(deployment).show(company)[0].paused
    book(deployment, company, "intro", f"{company}@buyer.example")
    time.sleep(deployment.delay_seconds + 3.0)  # past its due time: held, not delivered
    assert tasks_of(sandbox, contact)() == []
    page.submit("resume")
    assert page.flash() == "保存しました"
    assert page.text("pause-state") == "同期中"
    wait_for(tasks_of(sandbox, contact), 30, what="the held booking's Task after resume")

    # the contact re-check (opt-in per company), in minutes; a falling list is refused with the reason
    page.d.find_element("id", "recheck-minutes").send_keys("20,60")
    page.submit("save-recheck")
    assert page.flash() == "保存しました"
    assert admin(deployment).show(company)[0].contact_recheck_seconds == (1200, 3600)
    assert page.d.find_element("id", "recheck-minutes").get_attribute("value") == "20,60"
    page.d.find_element("id", "recheck-minutes").clear()
    page.d.find_element("id", "recheck-minutes").send_keys("60,20")
    page.submit("save-recheck")
    assert "rising" in page.flash()


def test_a_mapping_added_on_the_page_arrives_in_the_crm(page: Page, deployment: Deployment, sandbox: CrmSandbox) -> None:
    company = company_id()
    prepare(deployment, company, "intro", on=True)
    sandbox.salesforce.task_custom_fields.add("Booker_Phone__c")
    contact = person(sandbox, f"{company}@buyer.example")
    page.go(f"/c/{company}")
    from selenium.webdriver.support.ui import Select

    Select(page.d.find_element("id", "intro-map-source")).select_by_value("meeting_booked|booker.phone")
    page.d.find_element("id", "intro-map-field").send_keys("Booker_Phone__c")
    page.submit("intro-map-add")
    assert page.flash() == "保存しました"
    assert "Booker_Phone__c" in page.text("mappings-intro")
    # a source outside the event's schema is refused with the library's reason, shown on the page
    Select(page.d.find_element("id", "intro-map-source")).select_by_value("meeting_booked|booker.phone")
    page.d.find_element("id", "intro-map-field").send_keys("Description")
    page.submit("intro-map-add")
    assert "allow_core" in page.flash()

    book(deployment, company, "intro", f"{company}@buyer.example", phone="+81-3-1234-5678")
    [task] = wait_for(tasks_of(sandbox, contact), 30, what="the mapped Task")
    assert task["Booker_Phone__c"] == "+81-3-1234-5678"


def test_a_failure_is_shown_escaped_retried_from_the_page_and_delivered_once(
    page: Page, deployment: Deployment, sandbox: CrmSandbox
) -> None:
    company = company_id()
    prepare(deployment, company, "intro", on=True)
    contact = person(sandbox, f"{company}@buyer.example")
    sandbox.inject(Fault(crm="salesforce", status=400, error_code="INVALID_FIELD", path_contains="composite"))
    book(deployment, company, "intro", f"{company}@buyer.example", answer="<script>window.__xss = 1</script><b>太字</b>")
    codec = Codec()
    wait_for(lambda: [d for d in read_all(deployment.bootstrap, deployment.topics.dead_letter, codec) if d.get("company_id") == company], 30, what="the dead letter")

    page.go(f"/c/{company}/failures")
    [row] = page.d.find_elements("css selector", "tr.failure")
    assert "INVALID_FIELD" in row.text and "未対応" in row.text
    row.find_element("css selector", "details summary").click()
    original = row.find_element("css selector", "details").text
    assert "<script>window.__xss = 1</script><b>太字</b>" in original  # shown as text…
    assert row.find_elements("css selector", "details script, details b") == []  # …never as markup
    assert page.d.execute_script("return window.__xss === undefined")
    page.shot("failures")

    page.submit(element=row.find_element("css selector", "button.retry-one"))
    assert page.flash() == "1 件をもう一度試しました"
    [task] = wait_for(tasks_of(sandbox, contact), 30, what="the retried Task")

    def delivered() -> bool:
        page.go(f"/c/{company}/failures")
        return "連携済み" in page.d.find_element("css selector", "tr.failure td.outcome").text

    page.wait(delivered, "the retry's outcome on the page", 30, 0.5)
    assert len(tasks_of(sandbox, contact)()) == 1

    # resolve "all the filter shows" (CRM salesforce): the row leaves the default list, stays with "resolved too"
    from selenium.webdriver.support.ui import Select

    page.go(f"/c/{company}/failures?crm=salesforce")
    Select(page.d.find_element("id", "failure-do")).select_by_value("resolve")
    page.submit("act-all")
    assert page.flash() == "1 件を解決済みにしました"
    assert page.has("no-failures")
    page.go(f"/c/{company}/failures?all=1")
    assert "解決済み" in page.d.find_element("css selector", "tr.failure").text

    page.go(f"/c/{company}/history")
    cells = [td.text for td in page.d.find_elements("css selector", "#history-breakdown tbody td")]
    assert cells[:3] == ["Salesforce", "面談予約", "1"] and cells[4:7] == ["1", "1", "1"]  # created, failed, retried, resolved
    page.shot("history")


def test_retry_of_a_ticked_selection_retries_only_those(page: Page, deployment: Deployment, sandbox: CrmSandbox) -> None:
    company = company_id()
    prepare(deployment, company, "intro", on=True)
    picked, left = person(sandbox, f"picked-{company}@buyer.example"), person(sandbox, f"left-{company}@buyer.example")
    sandbox.inject(Fault(crm="salesforce", status=400, error_code="INVALID_FIELD", path_contains="composite", count=2))
    book(deployment, company, "intro", f"picked-{company}@buyer.example")
    book(deployment, company, "intro", f"left-{company}@buyer.example")
    codec = Codec()

    def dead_letters() -> list[dict[str, Any]]:
        return [d for d in read_all(deployment.bootstrap, deployment.topics.dead_letter, codec) if d.get("company_id") == company]

    wait_for(lambda: len(dead_letters()) == 2, 30, what="both dead letters")
    sandbox.state.clear_faults()  # a fault the two shared one request for must not hit the retry

    page.go(f"/c/{company}/failures")
    rows = page.d.find_elements("css selector", "tr.failure")
    assert len(rows) == 2
    [row] = [r for r in rows if f"picked-{company}" in r.find_element("css selector", "details").get_attribute("textContent")]
    row.find_element("css selector", "input[type=checkbox][name=id]").click()
    page.submit("act-selected")
    assert page.flash() == "1 件をもう一度試しました"
    wait_for(tasks_of(sandbox, picked), 30, what="the picked failure's Task")
    assert tasks_of(sandbox, left)() == []  # the unticked one was not retried
    page.go(f"/c/{company}/failures")
    by_contact = {
        ("picked" if f"picked-{company}" in r.find_element("css selector", "details").get_attribute("textContent") else "left"): r.text
        for r in page.d.find_elements("css selector", "tr.failure")
    }
    assert "再試行済み" in by_contact["picked"] and "未対応" in by_contact["left"]


def test_a_viewer_may_look_but_is_refused_a_change(browser: Any, console: str, deployment: Deployment) -> None:
    company = company_id()
    prepare(deployment, company, "intro")
    page = Page(browser, console)
    page.login(VIEWER)
    page.go(f"/c/{company}")
    assert "vera" in page.text("who")
    page.submit("pause")
    page.wait(lambda: page.has("message"), "the refusal")
    assert "閲覧のみの権限です" in page.text("message")
    assert not admin(deployment).show(company)[0].paused

    # A form without the session's CSRF token is refused too, whoever posts it.
    cookie = browser.get_cookie("crm_sync_session")["value"]
    request = urllib.request.Request(f"{console}/c/{company}/pause", data=b"paused=1&csrf=forged", headers={"Cookie": f"crm_sync_session={cookie}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    page.go("/lang/en?next=/")  # the language switch: the same page in English
    assert "(viewer)" in page.text("who") and page.d.find_element("tag name", "h1").text == "Companies"
    page.go("/lang/ja?next=/")
    assert page.d.find_element("tag name", "h1").text == "企業"


def test_the_login_page_refuses_a_wrong_password(browser: Any, console: str) -> None:
    page = Page(browser, console)
    page.d.delete_all_cookies()
    page.go("/c/anything")
    assert "/login" in page.d.current_url
    page.shot("login")
    page.d.find_element("id", "user").send_keys(ADMIN[0])
    page.d.find_element("id", "password").send_keys("wrong")
    page.submit("login")
    assert "パスワードが違います" in page.wait(lambda: page.has("login-failed") and page.text("login-failed"), "the refusal")
    assert "/login" in page.d.current_url and not page.has("who")


def test_logout_ends_the_session_even_for_a_copied_cookie(browser: Any, console: str, deployment: Deployment) -> None:
    company = company_id()
    prepare(deployment, company, "intro")
    page = Page(browser, console)
    page.login(ADMIN)
    page.go(f"/c/{company}")
    copied = browser.get_cookie("crm_sync_session")["value"]
    page.submit("logout")
    page.wait(lambda: page.has("login") and "/login" in page.d.current_url, "the login page")
    assert not page.has("who")
    browser.add_cookie({"name": "crm_sync_session", "value": copied, "path": "/"})  # the cookie an attacker kept
    page.go(f"/c/{company}")
    page.wait(lambda: "/login" in page.d.current_url and page.has("login"), "the login page again")
    assert not page.has("who")


def test_a_redirect_never_leaves_the_console(browser: Any, console: str) -> None:
    page = Page(browser, console)
    page.login(ADMIN)
    for target in ("/%09/evil.example/", "//evil.example/", "/%5Cevil.example/", "https://evil.example/"):
        page.go(f"/lang/ja?next={target}")
        page.wait(lambda: page.has("who"), "the console's home")
        assert page.d.current_url == f"{console}/", target
    # the login form's `next`, as the browser submits it
    page.d.delete_all_cookies()
    page.go("/login?next=/%09/evil.example/")
    page.d.find_element("id", "user").send_keys(ADMIN[0])
    page.d.find_element("id", "password").send_keys(ADMIN[1])
    page.submit("login")
    page.wait(lambda: page.has("who"), "the logged-in page")
    assert page.d.current_url == f"{console}/"
