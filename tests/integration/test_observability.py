"""What SREs and admins see (issue 6), checked against the real things: Debian's `prometheus`
scraping a real worker while an end-to-end scenario runs, `promtool` on the shipped rules, the
history endpoint and CLI against what the CRM sandbox received, health, and the worker's log.

One worker run (module fixture `run`) serves every test here; its scenario makes at least one
sample of every series the dashboard and the alerts use:
  1. a company whose Salesforce answers 503 → inline retries, then a deferral to the retry topic;
  2. a HubSpot 400 → a failed delivery on the dead-letter topic (history: failed);
  3. created, skipped (contact_not_found), skipped (no_settings), an undecodable record, and a
     company disconnected while its action is held (skipped integration_disabled at due time).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from confluent_kafka import Producer

from connectors.sandbox.server import CrmSandbox
from connectors.sandbox.state import Fault
from processors.ops.admin import SettingsAdmin
from processors.codec import Codec
from processors.domain.history import local_day
from processors.domain.model import Crm, EventType
from tests.integration.harness import (
    http_ok,
    ROOT,
    Deployment,
    WorkerProcess,
    free_port,
    read_all,
    unique_topics,
    wait_for,
    write_default_secrets,
)
from tests.integration.test_end_to_end import booking, publisher

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "crm-sync.json"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval becomes here (scrapes every 1 s)

COMPANY, MEETING_TYPE = "acme", "intro-30"
DISCONNECTED, RETRIED = "beta", "gamma"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def tool(name: str) -> str:
    """Debian's prometheus/promtool; missing under CI=true is a failure, elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` not found on PATH (Debian package: prometheus)"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


# ---- the rules and the dashboard without a worker ------------------------------------------


def test_promtool_check_rules() -> None:
    out = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    out = subprocess.run([tool("promtool"), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, cwd=ALERTS_TEST.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_prometheus_config_is_valid() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    out = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True, cwd=config.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana variables substituted."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            queries.append((panel["title"], expr.replace("$job", "crm-sync").replace("$namespace", ".*")))
    return queries


def alert_names() -> set[str]:
    """The file's alert names (the expressions are taken from the Prometheus that loaded the file)."""
    return set(re.findall(r"^\s*- alert:\s*(\S+)", ALERTS.read_text(), re.MULTILINE))


_COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?[-+]?[0-9.]+(e[-+]?[0-9]+)?\s*$")


def data_queries(expr: str) -> list[str]:
    """An alert expression's operands with their threshold comparisons stripped: `a > 1 and b > 2`
    → [`a`, `b`]. Each must return data, else the alert could never fire."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        ch = expr[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == '"':
            i = expr.index('"', i + 1)
        elif depth == 0:
            match = re.match(r"\s+(and|or|unless)\s+", expr[i:])
            if match:
                parts.append(expr[start:i])
                i += match.end()
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    stripped = [_COMPARISON.sub("", part).strip() for part in parts]
    # absent(x) fires when x has no data: it is x that must return data while the worker runs.
    return [m.group(1) if (m := re.fullmatch(r"absent\((.*)\)", part)) else part for part in stripped]


def test_data_queries_strip_thresholds_and_split_conditions() -> None:
    assert data_queries('up{job="crm-sync"} == 0') == ['up{job="crm-sync"}']
    assert data_queries("sum by (t) (deriv(x[10m])) > 0 and sum by (t) (x) > 1000") == ["sum by (t) (deriv(x[10m]))", "sum by (t) (x)"]
    assert data_queries('a{l="x and y"} / b > 0.1') == ['a{l="x and y"} / b']
    assert data_queries('absent(up{job="crm-sync"})') == ['up{job="crm-sync"}']


_SELECTOR = re.compile(r"\b(up|crm_sync_[a-z_]+|process_[a-z_]+|python_[a-z_]+)\b(\{[^}]*\})?")


def test_every_dashboard_query_is_scoped_by_the_job_and_namespace_variables() -> None:
    """One Grafana serves many clusters and namespaces: a panel without the variables would mix them."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "namespace"} <= variables
    unscoped = [
        (panel["title"], m.group(0))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for m in _SELECTOR.finditer(target["expr"])
        if not (m.group(2) and 'job=~"$job"' in m.group(2) and 'namespace=~"$namespace"' in m.group(2))
    ]
    assert unscoped == []


def test_the_dashboard_covers_what_issue_6_lists() -> None:
    exprs = " ".join(q for _, q in dashboard_queries())
    for metric in (
        "crm_sync_records_ingested_total", "crm_sync_records_invalid_total", "crm_sync_actions_planned_total",
        "crm_sync_actions_held", "crm_sync_due_lateness_seconds_bucket", "crm_sync_deliveries_total",
        "crm_sync_actions_skipped_total", "crm_sync_crm_request_seconds_bucket", "crm_sync_crm_requests_total",
        "crm_sync_crm_retries_total", "crm_sync_dead_lettered_total", "crm_sync_consumer_lag", "crm_sync_paused_tenants",
    ):
        assert metric in exprs, metric
    assert alert_names() >= {
        "CrmSyncWorkerDown", "CrmSyncDeadLetterRate", "CrmSyncDueLatenessHigh", "CrmSyncConsumerLagGrowing", "CrmSyncCrmErrorRatio",
    }


# ---- one real worker, one real Prometheus --------------------------------------------------


class Prometheus:
    """`prometheus` on a free loopback port, scraping one target every second, with our rules."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [{"job_name": "crm-sync", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 30, 0.2, "prometheus readiness")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        return http_ok(f"http://127.0.0.1:{self.port}/-/ready")

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@dataclass
class Run:
    deployment: Deployment
    sandbox: CrmSandbox
    worker: WorkerProcess
    prometheus: Prometheus | None
    emails: set[str] = field(default_factory=set)
    contacts: dict[str, str] = field(default_factory=dict)  # booker email -> Salesforce contact id
    hs_contacts: dict[str, str] = field(default_factory=dict)
    started_ms: int = 0

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.worker.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples on the worker's /metrics whose labels include `labels`."""
        total = 0.0
        for line in self.worker.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _configure(admin: SettingsAdmin, company: str, *crms: Crm) -> None:
    for crm in crms:
        admin.set_connected(company, crm, True)
        admin.set_toggle(company, MEETING_TYPE, crm, EventType.MEETING_BOOKED, True)


def _booking(company: str, booker: str, host: str, *, meeting_type: str = MEETING_TYPE) -> dict[str, Any]:
    start = datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc)
    return {**booking(booker=booker, host=host, start=start), "company_id": company, "meeting_type_id": meeting_type}


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("observability")
    with CrmSandbox() as sandbox:
        info = sandbox.info()
        secrets = tmp / "secrets"
        write_default_secrets(
            secrets, sf_instance=info["salesforce_instance"], session_id=info["session_id"],
            hs_url=info["hubspot_url"], hs_token=info["hubspot_token"],
        )
        deployment = Deployment(
            bootstrap=kafka_bootstrap,
            topics=unique_topics("obs"),
            secrets_dir=secrets,
            ca_file=info["ca_file"],
            delay_seconds=3.0,
            extra_env={"CRM_SYNC_SINK_INLINE_RETRY_SECONDS": "1"},
        )
        worker = WorkerProcess(deployment, tmp / "worker.log")
        binary = shutil.which("prometheus")
        prometheus = Prometheus(binary, f"127.0.0.1:{worker.port}", tmp) if binary else None
        r = Run(deployment, sandbox, worker, prometheus, started_ms=int(time.time() * 1000))
        try:
            _scenario(r)
            yield r
        finally:
            worker.stop()
            if prometheus is not None:
                prometheus.stop()


def _scenario(r: Run) -> None:
    sf, hs = r.sandbox.salesforce, r.sandbox.hubspot
    admin = SettingsAdmin(r.deployment.config(), actor="test")
    _configure(admin, COMPANY, Crm.SALESFORCE, Crm.HUBSPOT)
    _configure(admin, DISCONNECTED, Crm.HUBSPOT)
    _configure(admin, RETRIED, Crm.SALESFORCE)
    host = "hana.host@seller.example"
    owner = sf.add_user("record.owner@seller.example")
    sf.add_user(host)
    hs.add_owner(host, first_name="Hana")
    r.emails |= {host, "record.owner@seller.example"}

    def person(email: str) -> str:
        r.emails.add(email)
        r.contacts[email] = sf.add_contact(email, owner_id=owner)
        r.hs_contacts[email] = hs.add_contact(email, firstname="Bo")
        return email

    r.worker.start()
    r.worker.wait_ready()
    pub = publisher(r.deployment)

    # 1. Salesforce keeps answering 503: retried inline for 1 s, then deferred to the retry topic.
    r.sandbox.inject(Fault(crm="salesforce", status=503, count=1000))
    pub.publish_meeting_booked(_booking(RETRIED, person("gamma.booker@buyer.example"), host))
    pub.flush()
    wait_for(lambda: r.metric("crm_sync_actions_deferred_total") >= 1, 30, 0.3, "a deferral")
    r.sandbox.state.clear_faults()

    # 2. HubSpot refuses the meeting (400): failed, dead-lettered. Salesforce creates its Task.
    failing = person("fail.booker@buyer.example")
    r.sandbox.inject(Fault(crm="hubspot", status=400, count=100, path_contains="/objects/meetings"))  # batch, then one by one
    pub.publish_meeting_booked(_booking(COMPANY, failing, host))
    pub.flush()
    codec = Codec()
    wait_for(
        lambda: [l for l in read_all(r.deployment.bootstrap, r.deployment.topics.dead_letter, codec) if l["stage"] == "deliver" and l["company_id"] == COMPANY],
        30, 0.3, "the HubSpot failure on the dead-letter topic",
    )
    r.sandbox.state.clear_faults()

    # 3. Created, contact not found, no settings, garbage, and a company disconnected while held.
    created = person("bo.booker@buyer.example")
    unknown = "nobody@nowhere.example"
    r.emails.add(unknown)
    r.emails.add("held.booker@buyer.example")
    pub.publish_meeting_booked(_booking(COMPANY, created, host))
    pub.publish_meeting_booked(_booking(COMPANY, unknown, host))
    pub.publish_meeting_booked(_booking(COMPANY, created, host, meeting_type="no-such-type"))
    pub.publish_meeting_booked(_booking(DISCONNECTED, "held.booker@buyer.example", host))
    pub.flush()
    raw = Producer({"bootstrap.servers": r.deployment.bootstrap})
    raw.produce(r.deployment.topics.meetings, key=COMPANY.encode(), value=b"\x00\x01 not avro")
    raw.flush(10)
    wait_for(
        lambda: any(dict(m.headers() or ()).get("company_id") == DISCONNECTED.encode() for m in read_all(r.deployment.bootstrap, r.deployment.topics.delay)),
        10, 0.1, "the disconnected company's action on the delay topic",
    )
    admin.set_connected(DISCONNECTED, Crm.HUBSPOT, False)

    wait_for(lambda: r.metric("crm_sync_actions_skipped_total", reason="integration_disabled") >= 1, 30, 0.3, "the drop at due time")
    wait_for(lambda: r.metric("crm_sync_actions_skipped_total", reason="contact_not_found") >= 2, 30, 0.3, "both contact_not_found skips")
    wait_for(lambda: len(sf.list_tasks()) >= 2 and len(hs.list_meetings()) >= 1, 30, 0.3, "the created CRM objects")
    wait_for(lambda: "crm_sync_consumer_lag{" in r.worker.metrics(), 15, 0.5, "a consumer lag sample")


@pytest.mark.integration
def test_every_dashboard_panel_and_alert_expression_returns_data(run: Run) -> None:
    tool("prometheus")
    assert run.prometheus is not None
    prometheus = run.prometheus
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == alert_names()
    queries = [(f"panel {title!r}", q) for title, q in dashboard_queries()]
    queries += [(f"alert {rule['name']}", q) for rule in rules for q in data_queries(rule["query"])]
    assert len(queries) >= 30

    def empty() -> list[str]:
        return [f"{what}: {q}" for what, q in queries if not prometheus.query(q)]

    missing = empty()
    deadline = time.monotonic() + 30  # a few more scrapes for the last counters and the rule evaluations
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = empty()
    assert not missing, "queries without data:\n" + "\n".join(missing)

    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    [up] = prometheus.query('up{job="crm-sync"}')
    assert up["value"][1] == "1"
    [ready] = prometheus.query("sum(crm_sync_worker_ready)")
    assert ready["value"][1] == "1"


NONE = {"created": 0, "failed": 0, "retried": 0, "resolved": 0, "rechecked": 0}


def _expected_history(run: Run) -> dict[str, Any]:
    day = local_day(run.started_ms, "Asia/Tokyo")
    return {
        "rows": [
            {"day": day, "crm": "any", "event_type": "meeting_booked", **NONE, "skipped": {"no_settings": 1}},
            {"day": day, "crm": "hubspot", "event_type": "meeting_booked", **NONE, "created": 1, "skipped": {"contact_not_found": 1}, "failed": 1},
            {"day": day, "crm": "salesforce", "event_type": "meeting_booked", **NONE, "created": 2, "skipped": {"contact_not_found": 1}},
        ],
        "totals": {**NONE, "created": 3, "failed": 1, "skipped": {"no_settings": 1, "contact_not_found": 2}},
    }


def _cli(run: Run, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "processors.ops.cli", "history", "--company", COMPANY, "--json", *args],
        cwd=ROOT, env=run.deployment.env(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.integration
def test_history_endpoint_and_cli_show_the_counts_the_crm_sandbox_agrees_with(run: Run) -> None:
    expected = _expected_history(run)

    def endpoint() -> dict[str, Any]:
        status, body = run.get(f"/history?company={COMPANY}&days=7")
        assert status == 200, body
        return body

    body, deadline = endpoint(), time.monotonic() + 20
    while body["rows"] != expected["rows"] and time.monotonic() < deadline:
        time.sleep(0.5)
        body = endpoint()
    assert body["rows"] == expected["rows"]
    assert body["totals"] == expected["totals"]
    assert (body["company_id"], body["timezone"], body["days"]) == (COMPANY, "Asia/Tokyo", 7)

    # The CRM sandbox received exactly what history calls created; the DLQ holds what it calls failed.
    sf_created = [t for t in run.sandbox.salesforce.list_tasks() if t["WhoId"] in {run.contacts[e] for e in ("bo.booker@buyer.example", "fail.booker@buyer.example")}]
    hs_created = [
        m for m in run.sandbox.hubspot.list_meetings()
        if {a["to_id"] for a in m["associations"]} & {run.hs_contacts[e] for e in ("bo.booker@buyer.example", "fail.booker@buyer.example")}
    ]
    letters = [l for l in read_all(run.deployment.bootstrap, run.deployment.topics.dead_letter, Codec()) if l["stage"] == "deliver" and l["company_id"] == COMPANY]
    rows = {row["crm"]: row for row in body["rows"]}
    assert rows["salesforce"]["created"] == len(sf_created) == 2
    assert rows["hubspot"]["created"] == len(hs_created) == 1
    assert rows["hubspot"]["failed"] + rows["salesforce"]["failed"] == len(letters) == 1

    # The other companies' histories are their own.
    status, beta = run.get(f"/history?company={DISCONNECTED}&days=1")
    assert status == 200
    assert [(r["crm"], r["skipped"]) for r in beta["rows"]] == [("hubspot", {"integration_disabled": 1})]

    # The CLI, from the history topic and through the worker, says the same.
    for answer in (_cli(run), _cli(run, "--url", f"http://127.0.0.1:{run.worker.port}")):
        assert (answer["rows"], answer["totals"]) == (expected["rows"], expected["totals"])
    assert _cli(run, "--days", "1")["rows"] == expected["rows"]

    assert run.get(f"/history?company={COMPANY}&days=9")[0] == 400
    assert run.get("/history?days=1")[0] == 400


@pytest.mark.integration
def test_the_worker_exports_process_and_python_metrics_and_no_created_series(run: Run) -> None:
    text = run.worker.metrics()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info"} <= names
    assert any(name.startswith("python_gc_") for name in names)
    assert not [name for name in names if name.endswith("_created")]


@pytest.mark.integration
def test_liveness_and_readiness(run: Run) -> None:
    assert run.get("/health/live") == (200, {"status": "ok"})
    status, ready = run.get("/health/ready")
    assert status == 200
    assert ready == {"ready": True, "settings_ready": True, "stages_running": True, "ingest_processes_ready": True}
    assert run.metric("crm_sync_worker_ready") == 1


@pytest.mark.integration
def test_the_worker_log_is_json_with_event_ids_and_holds_no_personal_data_or_secrets(run: Run) -> None:
    text = run.worker.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    deliveries = [line for line in lines if line["msg"] == "delivery"]
    assert deliveries and all(line["event_id"] and line["action_id"] for line in deliveries)
    info = run.sandbox.info()
    secrets = {info["session_id"], info["hubspot_token"]}
    personal = {"Bo Booker", "Hana Host", "Buyer Inc.", "+81-3-0000-0000"}
    lowered = text.lower()
    leaks = [e for e in run.emails if e.lower() in lowered or urllib.parse.quote(e).lower() in lowered]
    leaks += [s for s in secrets | personal if s in text]
    assert not leaks, f"found in the worker log: {leaks}"
