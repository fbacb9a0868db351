"""The compose stack, end to end: `docker-compose.yml` under podman-compose, as a laptop runs it.

    .venv/bin/python bench/compose_smoke.py [--keep]

Builds the images (deploy/container/images.sh: local base, nothing pulled), brings the stack up
under its own project name on free loopback ports, publishes a booking with the publisher SDK
(settings first, with the admin API), waits for the Task and the HubSpot meeting in the sandbox,
checks that Prometheus scrapes the worker (target health "up") and loaded every alert rule of
deploy/prometheus/alerts.yml, prints one JSON report and brings the stack down (volumes too).
Exit 0 when every check passed. --keep leaves the stack running for a look.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from processors.config import Config  # noqa: E402
from processors.domain.model import Crm, EventType  # noqa: E402
from processors.ops.admin import SettingsAdmin  # noqa: E402
from processors.ops.publisher import EventPublisher  # noqa: E402

IMAGES_SH = ROOT / "deploy" / "container" / "images.sh"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPANY, MEETING_TYPE = "demo-co", "intro-30"  # the sandbox is seeded from deploy/demo/seed.json
T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None  # not up yet
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def compose(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(IMAGES_SH), "compose", *args], env=env, capture_output=True, text=True, timeout=timeout)


def publish_booking(bootstrap: str) -> str:
    """Settings for the demo company, then one booking; returns its meeting URL (unique per run)."""
    config = Config.from_env({"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    admin = SettingsAdmin(config, actor="compose-smoke")
    for crm in Crm:
        admin.set_connected(COMPANY, crm, True)
        admin.set_toggle(COMPANY, MEETING_TYPE, crm, EventType.MEETING_BOOKED, True)
    now = int(time.time() * 1000)
    start = now + 24 * 3600 * 1000
    url = f"https://meet.example.com/smoke-{uuid.uuid4().hex[:8]}"
    publisher = EventPublisher({"bootstrap.servers": bootstrap}, config.topics)
    publisher.publish_meeting_booked({
        "event_id": f"smoke-{uuid.uuid4().hex[:12]}", "occurred_at": now, "company_id": COMPANY,
        "meeting_type_id": MEETING_TYPE, "meeting_id": "m-smoke", "meeting_type_name": "Intro call (30 min)",
        "host": {"email": "hana.host@seller.example", "name": "Hana Host"},
        "booker": {"email": "bo.booker@buyer.example", "name": "Bo Booker", "company_name": "Buyer Inc."},
        "start_at": start, "end_at": start + 30 * 60 * 1000, "timezone": "Asia/Tokyo",
        "meeting_url": url, "form_answers": [],
    })
    publisher.flush()
    return url


def alert_names() -> set[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"] for group in doc["groups"] for rule in group["rules"]}


def run(keep: bool = False) -> dict[str, Any]:
    """Up, checks, down; the report says what each check saw (raises on a failed one, after down)."""
    kafka_port, sandbox_port, worker_port, prometheus_port = free_ports(4)
    project = f"crm-sync-smoke-{uuid.uuid4().hex[:6]}"
    env = dict(
        os.environ,
        CRM_SYNC_COMPOSE_KAFKA_PORT=str(kafka_port),
        CRM_SYNC_COMPOSE_SANDBOX_PORT=str(sandbox_port),
        CRM_SYNC_COMPOSE_WORKER_PORT=str(worker_port),
        CRM_SYNC_COMPOSE_PROMETHEUS_PORT=str(prometheus_port),
        CRM_SYNC_DELAY_SECONDS="5",
        COMPOSE_PROJECT_NAME=project,
    )
    report: dict[str, Any] = {"project": project}
    t0 = time.monotonic()
    built = subprocess.run(["bash", str(IMAGES_SH), "build"], env=env, capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise RuntimeError(f"images.sh build failed:\n{built.stderr[-3000:]}")
    report["build_seconds"] = round(time.monotonic() - t0, 1)
    t1 = time.monotonic()
    try:
        up = compose(env, "-p", project, "up", "-d")
        if up.returncode != 0:
            raise RuntimeError(f"compose up failed:\n{up.stdout[-2000:]}\n{up.stderr[-3000:]}")
        wait_for(lambda: ready(f"http://127.0.0.1:{worker_port}/health/ready"), 180, "the worker's /health/ready")
        report["up_to_ready_seconds"] = round(time.monotonic() - t1, 1)

        url = publish_booking(f"127.0.0.1:{kafka_port}")
        published = time.monotonic()
        control = f"http://127.0.0.1:{sandbox_port}/__sandbox"
        tasks = wait_for(lambda: [t for t in get_json(f"{control}/salesforce/tasks") if url in str(t.get("Description", ""))], 90, "the Salesforce Task")
        meetings = wait_for(
            lambda: [m for m in get_json(f"{control}/hubspot/meetings") if m["properties"].get("hs_meeting_external_url") == url], 90, "the HubSpot meeting"
        )
        report["booking"] = {"salesforce_tasks": len(tasks), "hubspot_meetings": len(meetings),
                             "seconds_after_publish": round(time.monotonic() - published, 1), "delay_seconds": 5}

        api = f"http://127.0.0.1:{prometheus_port}/api/v1"

        def scraped() -> list[dict[str, Any]]:
            targets = get_json(f"{api}/targets")["data"]["activeTargets"]
            return [t for t in targets if t["labels"].get("job") == "crm-sync" and t["health"] == "up"]

        [target] = wait_for(scraped, 60, "Prometheus scraping the worker")
        report["prometheus_target"] = {"scrape_url": target["scrapeUrl"], "health": target["health"]}
        loaded = wait_for(lambda: {r["name"] for g in get_json(f"{api}/rules")["data"]["groups"] for r in g["rules"]}, 30, "the alert rules")
        expected = alert_names()
        report["prometheus_rules"] = {"loaded": len(loaded), "expected": len(expected), "missing": sorted(expected - loaded)}
        if expected - loaded:
            raise AssertionError(f"alert rules not loaded: {sorted(expected - loaded)}")
        report["ok"] = True
        return report
    finally:
        if keep:
            print(f"compose_smoke: left running; stop with: COMPOSE_PROJECT_NAME={project} deploy/container/images.sh compose -p {project} down -v", file=sys.stderr)
        else:
            t2 = time.monotonic()
            # The worker first, while the broker still answers: podman-compose's `down` stops every
            # container at once (Docker Compose follows depends_on), and a worker whose broker is
            # gone waits out its drain.
            compose(env, "-p", project, "stop", "worker")
            down = compose(env, "-p", project, "down", "-v")
            report["down_seconds"] = round(time.monotonic() - t2, 1)
            report["down_exit"] = down.returncode
        report["total_seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps(report, indent=2), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    try:
        run(keep=args.keep)
    except (AssertionError, RuntimeError, TimeoutError) as exc:
        print(f"compose_smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    print("compose_smoke: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
