"""Plumbing for bench/chaos.py: one isolated deployment per scenario (topics,
app id, secrets, sandbox tenants), bookings that can be told apart in the CRM, and the tally of
what reached the sandbox (lost, duplicates, lateness, leaks).

Everything talks to 127.0.0.1 only: the broker kafka.sh starts, the in-process CrmSandbox and the
worker's own HTTP port.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: E402

from connectors.sandbox import CrmSandbox  # noqa: E402
from connectors.sandbox.records import parse_time  # noqa: E402
from processors.codec import Codec  # noqa: E402
from processors.domain import rules  # noqa: E402
from processors.domain.model import Crm, EventType  # noqa: E402
from processors.ops.admin import SettingsAdmin  # noqa: E402
from processors.ops.dlq import read_dead_letters  # noqa: E402
from processors.ops.publisher import EventPublisher  # noqa: E402
from tests.integration.harness import Deployment, WorkerProcess, http_ok, unique_topics  # noqa: E402

MEETING_TYPE = "intro-30"
HOST = "hana.host@seller.example"
SF_ID_FIELD = "CrmSyncActionId__c"
HS_ID_PROPERTY = "crm_sync_action_id"
_MARK = re.compile(r"https://meet\.example\.com/chaos/([a-z])/([A-Za-z0-9._-]+)")
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[chaos {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """`check()` until truthy; None (not an exception) after `timeout`, so a scenario can report it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            log(f"gave up after {timeout:.0f}s waiting for {what}")
            return None
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---- results ---------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    events: int = 0
    lost: int = 0
    dup_sf: int = 0
    dup_hs: int = 0
    dead_letters: int = 0
    max_late: float | None = None
    goal_met: bool = False
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"{self.scenario}: {text}")


@dataclass
class Tally:
    """What the sandbox holds for a set of expected bookings (key → tenant, due time)."""

    lost_sf: int = 0
    lost_hs: int = 0
    dup_sf: int = 0
    dup_hs: int = 0
    leaked: int = 0
    lateness: list[float] = field(default_factory=list)
    created: list[tuple[int, float]] = field(default_factory=list)  # (first object's creation ms, its lateness s)
    objects: int = 0

    @property
    def lost(self) -> int:
        return self.lost_sf + self.lost_hs


def scan_tenant(sandbox: CrmSandbox, tenant: str, scenario: str) -> dict[str, dict[str, list[int]]]:
    """{"salesforce"|"hubspot": {booking key: [created_at ms, ...]}} for one scenario's bookings.

    Reads the tenant's stored records directly (the sandbox lives in this process): the listing
    helpers copy and join associations, which is quadratic at 8,000 meetings.
    """
    t = sandbox.tenant(tenant)
    with t.lock:
        tasks = [(str(task.fields.get("Description") or ""), task.created_at) for task in t.salesforce.tasks]
        meetings = [
            (str(o.properties.get("hs_meeting_external_url") or o.properties.get("hs_meeting_body") or ""), o.created_at)
            for o in t.hubspot.objects.values()
            if o.object_type == "meetings"
        ]
    out: dict[str, dict[str, list[int]]] = {"salesforce": {}, "hubspot": {}}
    for crm, rows in (("salesforce", tasks), ("hubspot", meetings)):
        for text, created in rows:
            m = _MARK.search(text)
            if m is None or m.group(1) != scenario:
                continue
            out[crm].setdefault(m.group(2), []).append(int(parse_time(created).timestamp() * 1000))
    return out


def tally(sandbox: CrmSandbox, scenario: str, expected: dict[str, tuple[str, int]], tenants: Iterable[str]) -> Tally:
    """`expected`: booking key → (its tenant, its due time in ms). Every scenario-tagged object in
    `tenants` is counted; one in a tenant other than its booking's is a leak."""
    result = Tally()
    seen: dict[tuple[str, str], list[int]] = {}
    for tenant in tenants:
        for crm, by_key in scan_tenant(sandbox, tenant, scenario).items():
            for key, stamps in by_key.items():
                result.objects += len(stamps)
                if key not in expected or expected[key][0] != tenant:
                    result.leaked += len(stamps)
                    continue
                seen[(crm, key)] = stamps
    for key, (_, due) in expected.items():
        for crm in ("salesforce", "hubspot"):
            stamps = seen.get((crm, key), [])
            short = "sf" if crm == "salesforce" else "hs"
            if not stamps:
                setattr(result, f"lost_{short}", getattr(result, f"lost_{short}") + 1)
                continue
            setattr(result, f"dup_{short}", getattr(result, f"dup_{short}") + len(stamps) - 1)
            result.lateness.append((min(stamps) - due) / 1000)
            result.created.append((min(stamps), (min(stamps) - due) / 1000))
    return result


# ---- one isolated deployment -------------------------------------------------------------------------


@dataclass
class Company:
    id: str
    tenant: str


class Env:
    """One scenario's deployment: fresh topics and app id, its own secrets dir and sandbox tenants."""

    # Set by `chaos.py --ingest-processes`: every scenario's workers get it (CRM_SYNC_INGEST_PROCESSES).
    worker_env: dict[str, str] = {}

    def __init__(self, name: str, broker: Any, sandbox: CrmSandbox, workdir: Path, *, delay: float = 3.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.broker = broker
        self.sandbox = sandbox
        self.dir = workdir / f"scenario-{name}"
        self.secrets = self.dir / "secrets"
        self.secrets.mkdir(parents=True, exist_ok=True)
        info = sandbox.info()
        self.deployment = Deployment(
            bootstrap=broker.bootstrap, topics=unique_topics(f"chaos-{name}"), secrets_dir=self.secrets,
            ca_file=info["ca_file"], delay_seconds=delay, app_id=f"chaos-{name}-{uuid.uuid4().hex[:8]}", partitions=6,
            extra_env={
                "CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS": "false",  # every company has its own files
                "CRM_SYNC_SINK_RETRY_SECONDS": "3600",
                "CRM_SYNC_LOG_LEVEL": "INFO",
                **Env.worker_env,
                **(extra_env or {}),
            },
        )
        self.config = self.deployment.config()
        self.admin = SettingsAdmin(self.config, actor=f"chaos-{name}")
        self.companies: dict[str, Company] = {}
        self.workers: list[WorkerProcess] = []
        self.log_path = self.dir / "worker.log"
        self.expected: dict[str, tuple[str, int]] = {}  # booking key → (tenant, due ms)
        self._lock = threading.Lock()

    # -- companies, credentials, CRM data --
    def add_company(self, company_id: str, *, id_field: bool = False) -> Company:
        tenant = f"{self.name}-{company_id}"[:64]
        creds = self.sandbox.add_tenant(tenant)
        info = self.sandbox.info()
        d = self.secrets / company_id
        d.mkdir(parents=True, exist_ok=True)
        sf: dict[str, Any] = {"instance_url": info["salesforce_instance"], "session_id": creds["session_id"]}
        hs: dict[str, Any] = {"access_token": creds["hubspot_token"], "base_url": info["hubspot_url"]}
        if id_field:
            sf["action_id_field"] = SF_ID_FIELD
            hs["action_id_property"] = HS_ID_PROPERTY
        (d / "salesforce.json").write_text(json.dumps(sf))
        (d / "hubspot.json").write_text(json.dumps(hs))
        self.sandbox.seed(
            {
                "salesforce": {"users": [{"email": HOST, "name": "Hana Host"}],
                               **({"task_custom_fields": [SF_ID_FIELD]} if id_field else {})},
                "hubspot": {"owners": [{"email": HOST, "first_name": "Hana"}],
                            **({"unique_properties": {"meetings": [HS_ID_PROPERTY], "notes": [HS_ID_PROPERTY]}} if id_field else {})},
            },
            tenant=tenant,
        )
        company = Company(company_id, tenant)
        self.companies[company_id] = company
        return company

    def seed_bookers(self, company: Company, emails: Iterable[str]) -> None:
        t = self.sandbox.tenant(company.tenant)
        owner = next(iter(t.salesforce.users.values())).id
        for email in emails:
            t.salesforce.add_contact(email, owner_id=owner)
            t.hubspot.add_contact(email, firstname="Bo")

    def configure(self, *companies: Company) -> None:
        """Both CRMs connected and meeting_booked on for MEETING_TYPE: one admin transaction for
        all the companies (the documents `crm-sync settings connect`/`set` would write)."""
        t, by = now_ms(), f"chaos-{self.name}"
        docs: list[Any] = []
        for company in companies:
            doc = rules.new_company(company.id, t, by)
            mt = rules.new_meeting_type(company.id, MEETING_TYPE, t, by)
            for crm in Crm:
                doc = rules.set_connected(doc, crm, True, t, by)
                mt = rules.set_meeting_type_toggle(mt, crm, EventType.MEETING_BOOKED, True, t, by)
            docs += [doc, mt]
        self.admin.change(lambda store: docs)

    # -- bookings --
    def booking(self, company: Company, key: str, booker: str, *, event_id: str | None = None) -> dict[str, Any]:
        """A MeetingBooked whose meeting_url names the booking; occurred_at is now, so its actions
        are due at now + delay (the planner's min(occurred_at, ingest time) + delay)."""
        occurred = now_ms()
        start = occurred + 86_400_000
        with self._lock:
            self.expected[key] = (company.tenant, occurred + int(self.deployment.delay_seconds * 1000))
        return {
            "event_id": event_id or f"evt-{self.name}-{key}-{uuid.uuid4().hex[:8]}", "occurred_at": occurred,
            "company_id": company.id, "meeting_type_id": MEETING_TYPE, "meeting_id": f"m-{key}",
            "meeting_type_name": "Chaos call (30 min)",
            "host": {"email": HOST, "name": "Hana Host"},
            "booker": {"email": booker, "name": "Bo Booker", "company_name": "Buyer Inc."},
            "start_at": start, "end_at": start + 1_800_000, "timezone": "Asia/Tokyo",
            "meeting_url": f"https://meet.example.com/chaos/{self.name}/{key}", "form_answers": [],
        }

    def publisher(self) -> EventPublisher:
        return EventPublisher({"bootstrap.servers": self.broker.bootstrap, "linger.ms": 5}, self.deployment.topics)

    # -- the worker --
    def start_worker(self, *, wait: bool = True, timeout: float = 120.0) -> WorkerProcess:
        worker = WorkerProcess(self.deployment, self.log_path).start()
        self.workers.append(worker)
        if wait:
            worker.wait_ready(timeout)
        return worker

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.worker.port}/health/ready")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.worker.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    # -- reading back --
    def tally(self, tenants: Iterable[str] | None = None) -> Tally:
        with self._lock:
            expected = dict(self.expected)
        return tally(self.sandbox, self.name, expected, tenants or [c.tenant for c in self.companies.values()])

    def dead_letters(self) -> list[Any]:
        return read_dead_letters(self.config, Codec())

    def lag(self) -> int:
        """Records not yet committed by the worker's stage groups (ingest, delay, retry tiers, sinks)."""
        t, app = self.config.topics, self.config.app_id
        pairs = [(f"{app}-ingest", list(t.inputs)), (f"{app}-delay", [t.delay]),
                 *((f"{app}-{tier.group}", [tier.topic]) for tier in self.config.retry_tiers()),
                 (f"{app}-sink-salesforce", [t.due_salesforce]), (f"{app}-sink-hubspot", [t.due_hubspot])]
        try:
            return self._lag(pairs)
        except KafkaException as exc:  # e.g. just after a broker restart: not drained as far as we know
            log(f"{self.name}: lag not known yet ({exc})")
            return -1

    def _lag(self, pairs: list[tuple[str, list[str]]]) -> int:
        behind = 0
        for group, topics in pairs:
            c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": group, "enable.auto.commit": False})
            try:
                parts = [TopicPartition(topic, p) for topic in topics
                         for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
                committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(parts, timeout=10)}
                for tp in parts:
                    high = c.get_watermark_offsets(tp, timeout=10)[1]
                    done = committed[(tp.topic, tp.partition)]
                    behind += high - (done if done >= 0 else 0)
            finally:
                c.close()
        return behind

    def settle(self, total_timeout: float, quiet: float) -> Tally:
        """Until every expected object exists, then until the stages have committed everything and
        nothing new was created for `quiet` seconds (late duplicates would show up by then)."""
        deadline = time.monotonic() + total_timeout
        wait_until(lambda: self.tally().lost == 0, max(1.0, deadline - time.monotonic()), f"{self.name}: every object", 2.0)
        last, calm_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            current = self.tally()
            if current.objects != last:
                last, calm_since = current.objects, time.monotonic()
            elif time.monotonic() - calm_since >= quiet and self.lag() == 0:
                break
            time.sleep(1.0)
        return self.tally()


class Feeder(threading.Thread):
    """Publishes `make(i)` for i in range(count) at a steady rate over `seconds`, then flushes."""

    def __init__(self, env: Env, count: int, seconds: float, make: Callable[[int], dict[str, Any]]) -> None:
        super().__init__(name=f"feeder-{env.name}", daemon=True)
        self.env, self.count, self.seconds, self.make = env, count, seconds, make
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            pub = self.env.publisher()
            started = time.monotonic()
            for i in range(self.count):
                wait = started + i * self.seconds / max(1, self.count) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                pub.publish_meeting_booked(self.make(i))
                self.sent += 1
            pub.flush(300)
        except BaseException as exc:  # reported by the scenario
            self.error = exc
            log(f"feeder {self.env.name} failed: {exc!r}")


def fetch(url: str, timeout: float = 2.0) -> tuple[int, float]:
    """(status or 0 for no answer, seconds taken)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started
    except OSError:
        return 0, time.monotonic() - started


def rng_for(seed: int, name: str) -> random.Random:
    return random.Random(f"{seed}-{name}")
