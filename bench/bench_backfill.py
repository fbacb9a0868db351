"""Does a backfill keep other companies' live traffic on time? (run on demand)

    .venv/bin/python bench/bench_backfill.py [--events 50000] [--live-rate 20] [--rate 200] [--seed N]

One worker, the real broker (started here) and the CRM sandbox. Company `newco` has `--events`
bookings on the meetings topic from before it connected (ingested and skipped as `no_settings`).
Company `live` books `--live-rate` meetings a second throughout. After a baseline minute, `newco`
is connected and `crm-sync backfill --company newco --since 1d` runs (the real CLI, its default
pace unless `--rate`). The table compares the live company's lateness (the sandbox's creation time
minus the due time) before and during the backfill, and says how many of newco's actions arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chaos import Broker  # noqa: E402
from chaos_env import Env, Feeder, log, now_ms, percentile, scan_tenant, tally  # noqa: E402
from connectors.sandbox import CrmSandbox  # noqa: E402

DELAY_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--live-rate", type=float, default=20.0, help="live bookings a second")
    parser.add_argument("--rate", type=float, default=None, help="the backfill's pace (default: the CLI's)")
    parser.add_argument("--baseline", type=float, default=60.0, help="seconds of live traffic before the backfill")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    broker = Broker(work)
    broker.start()
    try:
        with CrmSandbox() as sandbox:
            env = Env("b", broker, sandbox, work, delay=DELAY_S)
            live, newco = env.add_company("live"), env.add_company("newco")
            env.seed_bookers(live, [f"live-{i}@buyer.example" for i in range(50)])
            env.seed_bookers(newco, [f"new-{i}@buyer.example" for i in range(50)])
            env.configure(live)  # newco is not connected yet: its bookings plan nothing
            env.start_worker()
            log(f"publishing {args.events:,} of newco's past bookings")
            old = Feeder(env, args.events, max(1.0, args.events / 4000), lambda i: env.booking(newco, f"n{i}", f"new-{i % 50}@buyer.example"))
            old.run()
            newco_keys = {k for k in env.expected if k.startswith("n")}
            for key in newco_keys:
                env.expected.pop(key)

            def backlog() -> bool:
                return env.lag() == 0

            deadline = time.monotonic() + 600
            while not backlog() and time.monotonic() < deadline:
                time.sleep(1)
            log("newco's bookings ingested (skipped: no settings); live traffic starts")
            from processors.ops.cli import BACKFILL_RATE

            pace = args.rate or BACKFILL_RATE
            live_seconds = args.baseline + args.events / pace * 1.2 + 60  # live traffic lasts the whole backfill
            feeder = Feeder(env, int(live_seconds * args.live_rate), live_seconds, lambda i: env.booking(live, f"l{i}", f"live-{i % 50}@buyer.example"))
            feeder.start()
            time.sleep(args.baseline)
            backfill_start = now_ms()
            env.configure(newco)
            cmd = [sys.executable, "-m", "processors.ops.cli", "backfill", "--company", "newco", "--since", "1d", "--json",
                   "--yes", "--wait", "900"]
            if args.rate:
                cmd += ["--rate", str(args.rate)]
            started = time.monotonic()
            done = subprocess.run(cmd, cwd=ROOT, env=env.deployment.env(), capture_output=True, text=True, timeout=3600)
            took = time.monotonic() - started
            backfill_end = now_ms()
            report = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}
            feeder.join(live_seconds)
            time.sleep(DELAY_S + 10)
            result = tally(sandbox, "b", {k: v for k, v in env.expected.items() if k.startswith("l")}, [live.tenant])
            before = [late for created, late in result.created if created < backfill_start]
            during = [late for created, late in result.created if backfill_start <= created <= backfill_end]
            created_newco = sum(len(v) for v in scan_tenant(sandbox, newco.tenant, "b")["salesforce"].values())
            print(f"\nbackfill of {args.events:,} events beside {args.live_rate:g} live bookings/s "
                  f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})\n")
            print("| | value |")
            print("|---|---|")
            print(f"| backfill command | {took:.0f} s, exit {done.returncode}: {json.dumps({k: report.get(k) for k in ('events', 'to_deliver', 'sent', 'created', 'still_waiting')})} |")
            print(f"| newco Tasks created | {created_newco:,} |")
            print(f"| live bookings | {len(result.created):,} ({result.lost} lost, {result.dup_sf + result.dup_hs} duplicates) |")
            for name, values in (("before", before), ("during", during)):
                if values:
                    print(f"| live lateness {name} the backfill | p50 {percentile(values, 0.50):.2f} s, p99 {percentile(values, 0.99):.2f} s, "
                          f"max {max(values):.2f} s ({len(values):,} objects) |")
            env.stop()
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
