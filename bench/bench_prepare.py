"""CPU cost of ingest's pure path per event, part by part, and whether compiling it helps (issue 16).

    .venv/bin/python bench/bench_prepare.py                      # this code, interpreted
    .venv/bin/python bench/bench_prepare.py --compile cython mypyc

Times `prepare` (decode → validate → plan → render → encode, `processors/stages/ingest.py`) over
in-memory bookings of the ingest benchmark, with no broker, and each of its parts alone, best of
`--rounds`. With `--compile`, the pure-path modules of a copy of the tree are compiled into C
extensions (Cython or mypyc, installed from PyPI into a scratch directory, which needs gcc and the
Python headers) and the same table is printed for each copy, beside the interpreted one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

# The modules a record goes through in `prepare`, in the order of the path.
PURE_PATH = [
    "processors/codec/__init__.py",
    "processors/codec/conform.py",
    "processors/domain/deadletter.py",
    "processors/domain/ingest.py",
    "processors/domain/mapping.py",
    "processors/domain/model.py",
    "processors/domain/planner.py",
    "processors/domain/records.py",
    "processors/domain/render.py",
    "processors/domain/rules.py",
    "processors/stages/ingest.py",
]
COMPILERS = {"cython": "cython==3.3.1", "mypyc": "mypy==2.4.1"}
# Stages' modules import aiokafka and the consumer shell, which mypyc does not need to compile.
MYPYC_SKIP = {"processors/stages/ingest.py"}
PARTS = ["decode", "validate (event_from_record)", "plan + render", "action records", "encode 2 Actions", "prepare, in all"]
COUNTS = ["modules compiled"]


def measure(events: int, rounds: int) -> dict[str, float]:
    """µs an event for each part, in this interpreter, with whatever `processors` it imports."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_delay import MEETING_TYPE, booking
    from processors.codec import Codec
    from processors.domain.deadletter import Source
    from processors.domain.model import CompanySettings, EventToggles, MeetingTypeSettings
    from processors.domain.planner import plan
    from processors.domain.records import action_to_record, event_from_record
    from processors.stages.ingest import prepare

    company = CompanySettings("bench-co", salesforce_connected=True, hubspot_connected=True)
    meeting_type = MeetingTypeSettings(
        "bench-co", MEETING_TYPE, salesforce_todo=EventToggles(meeting_booked=True), hubspot_sync=EventToggles(meeting_booked=True)
    )

    class Settings:
        def company(self, company_id: str) -> CompanySettings:
            return company

        def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings:
            return meeting_type

    codec, settings = Codec(), Settings()
    now = int(time.time() * 1000)
    values = [codec.encode("MeetingBooked", booking(i, now)) for i in range(events)]
    sources = [Source("bench", 0, i, b"bench-co", value) for i, value in enumerate(values)]
    decoded = [codec.decode(value) for value in values]
    typed = [event_from_record(d.schema_name, d.value) for d in decoded]
    actions = [action for event in typed for action in plan(event, company, meeting_type, now, 600_000).actions]
    records = [action_to_record(action) for action in actions]
    prepared, unavailable = prepare(codec, settings, sources, 600_000)
    assert unavailable is None and all(len(p.actions) == 2 for p in prepared), "every booking plans a Task and a meeting"

    work: dict[str, Callable[[], Any]] = {
        "decode": lambda: [codec.decode(value) for value in values],
        "validate (event_from_record)": lambda: [event_from_record(d.schema_name, d.value) for d in decoded],
        "plan + render": lambda: [plan(event, company, meeting_type, now, 600_000) for event in typed],
        "action records": lambda: [action_to_record(action) for action in actions],
        "encode 2 Actions": lambda: [codec.encode("Action", record) for record in records],
        "prepare, in all": lambda: prepare(codec, settings, sources, 600_000),
    }
    best: dict[str, float] = {}
    for part, run in work.items():
        times = []
        for _ in range(rounds):
            started = time.process_time()
            run()
            times.append(time.process_time() - started)
        best[part] = min(times) / events * 1e6
    names = [m.removesuffix("/__init__.py").removesuffix(".py").replace("/", ".") for m in PURE_PATH]
    best["modules compiled"] = sum(1 for name in names if str(getattr(sys.modules.get(name), "__file__", "")).endswith(".so"))
    return best


def compiled_copy(compiler: str, scratch: Path) -> Path:
    """A copy of the tree whose pure-path modules are C extensions built by `compiler`."""
    tree = scratch / compiler
    for part in ("processors", "connectors", "schemas", "bench"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    tools = scratch / f"{compiler}-tools"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(tools), COMPILERS[compiler], "setuptools"], check=True)
    modules = [m for m in PURE_PATH if not (compiler == "mypyc" and m in MYPYC_SKIP)]
    if compiler == "cython":
        build = ("from Cython.Build import cythonize\n"
                 f"ext = cythonize({modules!r}, compiler_directives={{'language_level': '3', 'binding': True}}, quiet=True)\n")
    else:
        build = f"from mypyc.build import mypycify\next = mypycify(['--ignore-missing-imports', *{modules!r}], opt_level='3')\n"
    (tree / "setup_compiled.py").write_text("from setuptools import setup\n" + build +
                                            "setup(ext_modules=ext, script_args=['build_ext', '--inplace', '-q'])\n")
    env = dict(os.environ, PYTHONPATH=str(tools))
    subprocess.run([sys.executable, "setup_compiled.py"], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    built = sorted(tree.glob("processors/**/*.so"))
    print(f"{compiler}: {len(built)} modules compiled", flush=True)
    return tree


def measure_in(tree: Path, tools: Path, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tools}")
    out = subprocess.run(
        [sys.executable, str(tree / "bench" / "bench_prepare.py"), "--events", str(args.events), "--rounds", str(args.rounds), "--json"],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", nargs="*", choices=sorted(COMPILERS), default=[])
    parser.add_argument("--json", action="store_true", help="print one JSON line (used for the compiled copies)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.events, args.rounds)))
        return
    columns = {"interpreted": measure(args.events, args.rounds)}
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        for compiler in args.compile:
            tree = compiled_copy(compiler, Path(scratch))
            columns[compiler] = measure_in(tree, Path(scratch) / f"{compiler}-tools", args)
    print(f"\nCPU µs an event, best of {args.rounds} rounds over {args.events:,} bookings ({os.cpu_count()} cores):\n")
    print(f"| part | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for part in PARTS:
        print(f"| {part} | {' | '.join(f'{col[part]:.1f}' for col in columns.values())} |")
    for count in COUNTS:
        print(f"| {count} (of {len(PURE_PATH)}) | {' | '.join(f'{col[count]:.0f}' for col in columns.values())} |")


if __name__ == "__main__":
    main()
