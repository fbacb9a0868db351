"""Chaos harness: the real worker process against a real local broker and the CRM sandbox, under
crashes, a broker restart, a hung tenant, fuzzed records, shared event ids and an open admin
transaction (run on demand; never a test).

    .venv/bin/python bench/chaos.py                # full sizes
    .venv/bin/python bench/chaos.py --quick        # about 1/8 of the sizes, a few minutes
    .venv/bin/python bench/chaos.py --only a,c     # some scenarios
    .venv/bin/python bench/chaos.py --quick --ingest-processes 2   # the workers ingest in 2 processes each
    .venv/bin/python bench/chaos.py --only k --worker-env CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS=3

Starts its own broker (deploy/kafka/kafka.sh in a temp dir, fixed ports so it can be stopped and
restarted with its data) and one CrmSandbox in this process; every scenario gets a fresh app id,
fresh topics, its own secrets dir (one sandbox tenant per company, no default credentials) and
drives the product only through its public interface: env vars, `crm-sync worker` processes,
the topics, `EventPublisher`, `SettingsAdmin`, the dead-letter reader and the worker's HTTP port.

    a  kill -9 five times during 8,000 bookings (Task + HubSpot meeting each), no external id
    b  the same with the external-id field/property configured per company (secrets files)
    c  the broker stopped (SIGTERM) and restarted with its data mid-run
    d  one company's CRM hangs (60 s per request, its tenant only) while another books 500 meetings
    e  1,000 mutated records on each input topic, 200 on the settings topic
    f  eight companies publish bookings with the same event ids
    g  an admin transaction left open on the settings topic while the worker starts
    j  paused companies receive events already overdue and DLQ re-ingests: nothing until resume, then all once
    l  re-checks an hour ahead beside transient 503s on the same retry partitions: retries within backoff + 5 s
    k  twenty tenants whose CRMs hang (60 s per request) beside a healthy one booking 500 meetings
    n  three workers under load restarted one after the other (a StatefulSet rollout), then one
       frozen (SIGSTOP) for longer than the session timeout and let go on
    h  both ToDos of 200 bookings through 15 s of 503s on every create, then recovery: 2 Tasks each
    i  100 contacts book a slot they already hold, a 503 on every second create: 2 meetings each
    o  kill -9 x5 with HubSpot search lagging 5 s and the CRMs' clock 90 s behind, without and with
       the external-id field/property
    m  a 1.01 MB record, a 2**62 array count and (Apicurio, started for it) a 20,000-deep recursive
       and an array<null> writer schema on every input partition, then bookings: each
       dead-lettered within 30 s, every booking delivered

Progress goes to stderr, one table to stdout; the exit code is 1 if any scenario missed its goal.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_env import ROOT, Env, Row, log  # noqa: E402
from chaos_crash import scenario_a, scenario_b, scenario_c, scenario_d, scenario_f  # noqa: E402
from chaos_flow import scenario_j, scenario_l  # noqa: E402
from chaos_fuzz import scenario_e, scenario_g  # noqa: E402
from chaos_state import scenario_k, scenario_n  # noqa: E402
from chaos_recon import scenario_h, scenario_i, scenario_o  # noqa: E402
from chaos_hostile import scenario_m  # noqa: E402
from connectors.sandbox import CrmSandbox  # noqa: E402
from tests.integration.harness import free_port  # noqa: E402

# ---- the broker ----------------------------------------------------------------------------------


class Broker:
    """deploy/kafka/kafka.sh in a dir of our own, on fixed ports so a restart keeps the address."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "kafka"
        self.port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _kafka_sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(ROOT / "deploy/kafka/kafka.sh"), *args, "--dir", str(self.dir)],
            capture_output=True, text=True, check=check, timeout=180, env=dict(os.environ, PYTHON=sys.executable),
        )

    def start(self) -> str:
        started = time.monotonic()
        self._kafka_sh("start", "--port", str(self.port), "--controller-port", str(self.controller_port), "--owner-pid", str(os.getpid()))
        log(f"broker up on {self.bootstrap} after {time.monotonic() - started:.1f}s (dir {self.dir})")
        return self.bootstrap

    def stop(self) -> None:
        started = time.monotonic()
        self._kafka_sh("stop", check=False)
        log(f"broker stopped (SIGTERM via kafka.sh stop) in {time.monotonic() - started:.1f}s")


SCENARIOS: dict[str, Callable[[Any], Row]] = {
    "a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e, "f": scenario_f, "g": scenario_g,
    "j": scenario_j, "l": scenario_l,
    "k": scenario_k, "n": scenario_n,
    "h": scenario_h, "i": scenario_i, "o": scenario_o,
    "m": scenario_m,
}
TITLES = {
    "a": "a kill -9 x5", "b": "b kill -9 x5, ext-id", "c": "c broker restart", "d": "d hung tenant",
    "e": "e fuzz", "f": "f shared event ids", "g": "g open admin txn",
    "j": "j paused, overdue + DLQ re-ingest", "l": "l re-checks beside transient retries",
    "k": "k 20 hung tenants", "n": "n rolling restart + frozen worker",
    "h": "h two ToDos through 503s", "i": "i same slot rebooked, 503s", "o": "o search lag + clock skew, kill -9",
    "m": "m 1.01 MB, absurd counts, hostile schemas",
}
HEADERS = ["scenario", "events", "lost", "duplicates (Salesforce)", "duplicates (HubSpot)", "dead letters", "max lateness (s)", "goal met"]


@dataclass
class Context:
    broker: Broker
    sandbox: CrmSandbox
    workdir: Path
    quick: bool
    seed: int
    envs: list[Env] = field(default_factory=list)

    def size(self, full: int, floor: int = 1) -> int:
        return max(floor, full // 8) if self.quick else full


def table(rows: list[Row]) -> str:
    cells = [[TITLES.get(r.scenario, r.scenario), str(r.events), str(r.lost), str(r.dup_sf), str(r.dup_hs), str(r.dead_letters),
              "-" if r.max_late is None else f"{r.max_late:.2f}", "yes" if r.goal_met else "NO"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    out = [line(HEADERS), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(c) for c in cells)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 1/8 of the full sizes")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios, e.g. a,c")
    p.add_argument("--seed", type=int, default=int(time.time()), help="for the kill moments and the mutations")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs) afterwards")
    p.add_argument("--ingest-processes", type=int, default=0, help="the workers' CRM_SYNC_INGEST_PROCESSES (0: in-process)")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for every worker (repeatable), e.g. a setting to measure")
    args = p.parse_args()
    extra = dict(item.split("=", 1) for item in args.worker_env)
    Env.worker_env = {"CRM_SYNC_INGEST_PROCESSES": str(args.ingest_processes), **extra}
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")

    # The admin's own settings reader logs every fuzzed record it ignores; the worker's log has them.
    logging.getLogger("processors").setLevel(logging.ERROR)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-chaos-"))
    log(f"seed {args.seed}; {'quick' if args.quick else 'full'} sizes; scenarios {','.join(chosen)}; {os.cpu_count()} CPUs; work dir {workdir}")
    broker = Broker(workdir)
    rows: list[Row] = []
    try:
        broker.start()
        with CrmSandbox() as sandbox:
            ctx = Context(broker, sandbox, workdir, args.quick, args.seed)
            for name in chosen:
                t0 = time.monotonic()
                log(f"---- scenario {name}: {TITLES[name]}")
                try:
                    row = SCENARIOS[name](ctx)
                except Exception as exc:  # one broken scenario still leaves a row and the others
                    traceback.print_exc(file=sys.stderr)
                    row = Row(name)
                    row.note(f"harness error: {exc!r}")
                finally:
                    for env in ctx.envs:
                        env.stop()
                    if ctx.envs:
                        log(f"worker log: {ctx.envs[-1].log_path}")
                    ctx.envs.clear()
                row.note(f"took {time.monotonic() - t0:.0f} s")
                rows.append(row)
                log(f"scenario {name}: goal {'met' if row.goal_met else 'MISSED'}")
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print()
    for row in rows:
        for note in row.notes:
            print(f"{row.scenario}: {note}")
    print(f"total {time.monotonic() - started:.0f} s, seed {args.seed}")
    return 0 if rows and all(r.goal_met for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
