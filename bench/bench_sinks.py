"""Sink economy and throughput against the CRM sandbox (run on demand; never part of the tests).

    .venv/bin/python bench/bench_sinks.py [--actions 2000] [--companies 5] [--batch 200]

Plans real actions for `--actions` booked meetings spread over `--companies` companies, then
delivers them with the worker's `Deliverer` exactly as the sink stage does (one company's group of
up to `--batch` actions per call), over real HTTP(S) to the sandbox, and prints API calls per
created object and objects/s for each CRM — beside the same run with batches of one (the naive
lookup-lookup-create path), so the saving is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.credentials import CredentialStore  # noqa: E402
from connectors.retry import RetryPolicy  # noqa: E402
from connectors.sandbox.server import CrmSandbox  # noqa: E402
from processors.metrics import Metrics  # noqa: E402
from processors.domain.model import (  # noqa: E402
    Action,
    CompanySettings,
    Crm,
    EventToggles,
    MeetingBooked,
    MeetingTypeSettings,
    Person,
)
from processors.domain.planner import plan  # noqa: E402
from processors.stages.deliverer import CREATED, Deliverer  # noqa: E402

ON = EventToggles(meeting_booked=True)


def make_actions(n: int, companies: int, hosts: int) -> list[Action]:
    now = int(time.time() * 1000)
    actions: list[Action] = []
    for i in range(n):
        company = f"co-{i % companies}"
        event = MeetingBooked(
            event_id=f"bench-{i}", occurred_at=now, company_id=company, meeting_type_id="mt",
            meeting_id=f"m{i}", meeting_type_name="Intro", host=Person(f"host{i % hosts}@seller.example", "Host"),
            booker=Person(f"lead{i}@buyer.example", "Lead"), start_at=now, end_at=now + 1_800_000,
            timezone="Asia/Tokyo",
        )
        settings = CompanySettings(company, salesforce_connected=True, hubspot_connected=True)
        mt = MeetingTypeSettings(company, "mt", salesforce_todo=ON, hubspot_sync=ON)
        actions.extend(plan(event, settings, mt, now, 0).actions)
    return actions


def seed(sb: CrmSandbox, n: int, hosts: int) -> None:
    owner = sb.salesforce.add_user("owner@seller.example")
    for h in range(hosts):
        sb.salesforce.add_user(f"host{h}@seller.example")
        sb.hubspot.add_owner(f"host{h}@seller.example")
    for i in range(n):
        sb.salesforce.add_contact(f"lead{i}@buyer.example", owner_id=owner)
        sb.hubspot.add_contact(f"lead{i}@buyer.example")


async def deliver_all(deliverer: Deliverer, actions: list[Action], batch: int) -> dict[Crm, tuple[int, float]]:
    out: dict[Crm, tuple[int, float]] = {}
    for crm in Crm:
        mine = [a for a in actions if a.crm is crm]
        groups: dict[str, list[Action]] = {}
        for a in mine:
            groups.setdefault(a.company_id, []).append(a)
        started = time.perf_counter()
        created = 0
        chunks = [(c, items[i : i + batch]) for c, items in groups.items() for i in range(0, len(items), batch)]
        window = 16
        for start in range(0, len(chunks), window):
            results = await asyncio.gather(*(deliverer.deliver_batch(crm, c, items) for c, items in chunks[start : start + window]))
            created += sum(o.status == CREATED for outcomes in results for o in outcomes)
        out[crm] = (created, time.perf_counter() - started)
    return out


def run(n: int, companies: int, hosts: int, batch: int) -> dict[str, dict[str, float]]:
    with CrmSandbox() as sb, tempfile.TemporaryDirectory() as secrets:
        seed(sb, n, hosts)
        info = sb.info()
        default = Path(secrets) / "_default"
        default.mkdir()
        (default / "salesforce.json").write_text(json.dumps({"instance_url": info["salesforce_instance"], "session_id": info["session_id"]}))
        (default / "hubspot.json").write_text(json.dumps({"access_token": info["hubspot_token"], "base_url": info["hubspot_url"]}))
        deliverer = Deliverer(
            CredentialStore(secrets, allow_default=True, allowed_hosts="http://127.0.0.1"), info["ca_file"], RetryPolicy(max_elapsed=10), Metrics.create(),
            rates={Crm.SALESFORCE: 10_000.0, Crm.HUBSPOT: 10_000.0},
        )
        actions = make_actions(n, companies, hosts)
        results = asyncio.run(deliver_all(deliverer, actions, batch))
        calls = sb.calls()
    report = {}
    for crm, (created, seconds) in results.items():
        used = sum(count for key, count in calls.items() if key.startswith(crm.value))
        report[crm.value] = {
            "created": created,
            "api_calls": used,
            "calls_per_object": round(used / created, 3) if created else float("nan"),
            "objects_per_second": round(created / seconds, 1),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=2000, help="booked meetings (each makes one Task and one meeting)")
    parser.add_argument("--companies", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=20, help="distinct meeting hosts (owner lookups are cached)")
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    print(f"sink benchmark: {args.actions} booked meetings, {args.companies} companies, {args.hosts} hosts")
    for label, batch, n in (("batched", args.batch, args.actions), ("naive (batch=1)", 1, min(args.actions, 300))):
        for crm, row in run(n, args.companies, args.hosts, batch).items():
            print(f"  {label:<16} {crm:<10} created={row['created']:<6} api_calls={row['api_calls']:<6} "
                  f"calls/object={row['calls_per_object']:<6} objects/s={row['objects_per_second']}")


if __name__ == "__main__":
    main()
