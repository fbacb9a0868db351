"""`./dev run`: the embedded default — a local broker, the CRM sandbox when no credentials are
configured, and the worker. `--demo` also publishes sample settings and a booking and shows it
arriving in both CRMs after a short delay. `--secure` runs the broker secured (SASL_SSL, SCRAM,
ACLs from `processors.ops.acls`) with a principal per role: the worker, the demo's admin and publisher."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / ".run"


def say(text: str) -> None:
    print(f"dev run: {text}", file=sys.stderr, flush=True)


def start_broker(env: dict[str, str]) -> bool:
    """Start the project's broker on 127.0.0.1:9092 unless one is configured; True if we started it."""
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        return False
    script = ROOT / "deploy" / "kafka" / "kafka.sh"
    data = RUN / "kafka"
    if subprocess.run(["bash", str(script), "status", "--dir", str(data)], capture_output=True).returncode != 0:
        say("starting the local Kafka broker on 127.0.0.1:9092")
        subprocess.run(["rm", "-rf", str(data)], check=True)
        subprocess.run(
            ["bash", str(script), "start", "--dir", str(data), "--port", "9092", "--num-partitions", "6"],
            check=True, stdout=subprocess.DEVNULL, env={**env, "PYTHON": sys.executable},
        )
    env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:9092"
    return True


def start_secure_broker(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """The secured broker on 127.0.0.1:9093 with a SCRAM user per role, the ACLs applied and the
    input topics made by the super user, as their owner would (the worker may only read them);
    returns each role's KAFKA_* variables (the passwords stay in .run/kafka-secure, mode 600)."""
    from processors.config import Config
    from processors.kafka.topics import create_missing
    from processors.ops import acls

    script = ROOT / "deploy" / "kafka" / "kafka.sh"
    data = RUN / "kafka-secure"
    users = data / "users.json"
    if subprocess.run(["bash", str(script), "status", "--dir", str(data)], capture_output=True).returncode != 0:
        say("starting the local secured Kafka broker on 127.0.0.1:9093 (SASL_SSL)")
        subprocess.run(["rm", "-rf", str(data)], check=True)
        data.mkdir(parents=True)
        passwords = {role: secrets.token_hex(12) for role in ("worker", "admin", "publisher")}
        users.touch(mode=0o600)
        users.write_text(json.dumps(passwords))
        args = [arg for role, password in passwords.items() for arg in ("--user", f"{role}:{password}")]
        subprocess.run(
            ["bash", str(script), "start", "--secure", "--dir", str(data), "--port", "9093", "--num-partitions", "6", *args],
            check=True, stdout=subprocess.DEVNULL, env={**env, "PYTHON": sys.executable},
        )
    broker = dict(line.split("=", 1) for line in (data / "client.env").read_text().split())
    roles = {role: {**broker, "KAFKA_SASL_USERNAME": role, "KAFKA_SASL_PASSWORD": password} for role, password in json.loads(users.read_text()).items()}
    superuser = Config.from_env({**env, **broker})
    acls.apply(superuser, {role: [role] for role in roles})
    create_missing(superuser, list(superuser.topics.inputs))
    return roles


def has_credentials(secrets_dir: Path) -> bool:
    return secrets_dir.is_dir() and any(secrets_dir.glob("*/*.json"))


def start_sandbox(env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]] | None:
    secrets_dir = Path(env.get("CRM_SYNC_SECRETS_DIR", "./secrets"))
    if has_credentials(secrets_dir):
        return None
    state = RUN / "sandbox"
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors.sandbox", "--state-file", str(state / "state.json"),
         "--seed", str(ROOT / "deploy" / "demo" / "seed.json"), "--ca-file", str(state / "ca.pem")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    sandbox_secrets = RUN / "secrets" / "_default"
    sandbox_secrets.mkdir(parents=True, exist_ok=True)
    (sandbox_secrets / "salesforce.json").write_text(
        json.dumps({"instance_url": info["salesforce_instance"], "session_id": info["session_id"]})
    )
    (sandbox_secrets / "hubspot.json").write_text(
        json.dumps({"access_token": info["hubspot_token"], "base_url": info["hubspot_url"]})
    )
    env["CRM_SYNC_SECRETS_DIR"] = str(RUN / "secrets")
    env["CRM_SYNC_CA_BUNDLE"] = info["ca_file"]
    # The sandbox's one org serves every demo company: the shared default credentials, on purpose.
    env["CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS"] = "true"
    # The sandbox listens on loopback, its HubSpot over plain http: allowed for that host only.
    env["CRM_SYNC_CRM_ALLOWED_HOSTS"] = "http://127.0.0.1"
    say(f"no CRM credentials configured: using the CRM sandbox (Salesforce {info['salesforce_url']}, HubSpot {info['hubspot_url']})")
    return proc, info


def control(info: dict[str, Any], path: str) -> Any:
    with urllib.request.urlopen(f"{info['hubspot_url']}/__sandbox/{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_ready(port: int, worker: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit("dev run: the worker exited; see its log above")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("dev run: the worker did not become ready")


def demo(env: dict[str, str], info: dict[str, Any] | None, worker: subprocess.Popen[bytes], roles: dict[str, dict[str, str]]) -> None:
    """`roles`: the admin's and the publisher's own KAFKA_* variables on a secured broker (else empty)."""
    from processors.ops.admin import SettingsAdmin
    from processors.config import Config
    from processors.domain.model import Crm, EventType
    from processors.kafka import clients
    from processors.ops.publisher import EventPublisher

    config = Config.from_env(env)
    admin = SettingsAdmin(Config.from_env({**env, **roles.get("admin", {})}), actor="demo")
    for crm in Crm:
        admin.set_connected("demo-co", crm, True)
        admin.set_toggle("demo-co", "intro-30", crm, EventType.MEETING_BOOKED, True)
    wait_ready(config.metrics_port, worker)
    time.sleep(1.0)
    now = int(time.time() * 1000)
    start = now + 24 * 3600 * 1000
    # Unique per run: the broker keeps earlier runs' bookings, which a new demo app id reads again.
    url = f"https://meet.example.com/demo-{uuid.uuid4().hex[:8]}"
    publisher = EventPublisher(clients.librdkafka(Config.from_env({**env, **roles.get("publisher", {})})), config.topics)
    publisher.publish_meeting_booked({
        "event_id": f"demo-{uuid.uuid4().hex[:12]}", "occurred_at": now, "company_id": "demo-co",
        "meeting_type_id": "intro-30", "meeting_id": "m-1", "meeting_type_name": "Intro call (30 min)",
        "host": {"email": "hana.host@seller.example", "name": "Hana Host"},
        "booker": {"email": "bo.booker@buyer.example", "name": "Bo Booker", "company_name": "Buyer Inc."},
        "start_at": start, "end_at": start + 30 * 60 * 1000, "timezone": "Asia/Tokyo",
        "meeting_url": url, "form_answers": [{"question": "Topic?", "answer": "Pricing"}],
    })
    publisher.flush()
    say(f"published a booking; it is due in {config.delay_seconds:.0f}s")
    if info is None:
        say("real CRM credentials are configured: check your CRMs for the Task and meeting")
        return
    deadline = time.monotonic() + config.delay_seconds + 60
    while time.monotonic() < deadline:
        tasks = [t for t in control(info, "salesforce/tasks") if url in str(t.get("Description", ""))]
        meetings = [m for m in control(info, "hubspot/meetings") if m["properties"].get("hs_meeting_external_url") == url]
        if tasks and meetings:
            print(json.dumps({"salesforce_tasks": tasks, "hubspot_meetings": meetings}, ensure_ascii=False, indent=2))
            say(f"the booking reached both CRMs {time.time() - now / 1000:.1f}s after it happened")
            return
        time.sleep(0.5)
    raise SystemExit("dev run: the demo booking did not arrive in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev run", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="publish a sample booking with a 10 s delay, show it arrive, exit")
    parser.add_argument("--secure", action="store_true", help="a secured broker (SASL_SSL, ACLs), a principal per role")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.demo:
        env.setdefault("CRM_SYNC_DELAY_SECONDS", "10")
        env.setdefault("CRM_SYNC_APP_ID", f"crm-sync-demo-{uuid.uuid4().hex[:6]}")
    env.setdefault("CRM_SYNC_STATE_DIR", str(RUN / "state"))
    roles: dict[str, dict[str, str]] = {}
    if args.secure and not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        roles = start_secure_broker(env)
        env.update(roles["worker"])
    started_broker = bool(roles) or start_broker(env)
    broker_dir = RUN / ("kafka-secure" if roles else "kafka")
    sandbox = start_sandbox(env)
    worker = subprocess.Popen([sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT, env=env)
    try:
        if args.demo:
            demo(env, sandbox[1] if sandbox else None, worker, roles)
        else:
            worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        worker.terminate()
        worker.wait(30)
        if sandbox:
            sandbox[0].terminate()
            sandbox[0].wait(10)
        if started_broker:
            subprocess.run(["bash", str(ROOT / "deploy" / "kafka" / "kafka.sh"), "stop", "--dir", str(broker_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
