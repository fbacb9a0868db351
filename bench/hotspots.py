"""Where a benchmarked process spends its CPU: py-spy samples it, this module ranks the frames.

Used by `bench_delay.py --profile`, so a throughput figure comes with the profile that explains
it (issue 16: "take it from a profile, not guesses"). Needs py-spy (`pip install py-spy==0.4.3`).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path


def attach(pid: int, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Sample `pid` until it exits; the collapsed stacks land in `out`."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _short(frame: str) -> str:
    """`send (aiokafka/producer/producer.py:123)` → `send (aiokafka/producer/producer.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/wt-perf/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


# What a sample is charged to: the first frame from the leaf up that names a part of the ingest path
# (event-loop, selector and socket frames are skipped, so a socket write counts for its client).
PARTS = (
    ("logging", ("logging/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("Avro encode + conform", ("Codec.encode", "Codec._body", "conform.py")),
    ("Avro decode", ("Codec.decode", "Codec._read", "Codec._decode")),
    ("validation (event_from_record)", ("event_from_record", "_person", "_qas", "_common")),
    ("action records + headers", ("action_to_record", "action_headers")),
    ("plan + render", ("planner.py", "render.py")),
    ("producer", ("aiokafka/producer", "faust/transport", "kafka/sender.py", "worker/app.py", "confluent_kafka")),
    ("consumer (aiokafka fetch)", ("aiokafka/consumer",)),
    ("stage glue (ingest.py, consumer.py)", ("stages/", "kafka/consumer.py")),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, markers in PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "other (event loop, Faust, threads)"


def rank(raw: Path, top: int = 5) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, the `top` frames by own time, the `top` parts of the ingest path), as shares of the samples."""
    own: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        parts[part_of(frames)] += n
    share = max(samples, 1)
    return samples, [(f, n / share) for f, n in own.most_common(top)], [(p, n / share) for p, n in parts.most_common(top)]


def report(raw: Path, top: int = 5) -> str:
    samples, own, parts = rank(raw, top)
    lines = [f"    profile {raw} ({samples:,} samples of busy threads):", "      parts of the ingest path:"]
    lines += [f"        {share:6.1%}  {part}" for part, share in parts]
    lines.append("      frames by own time:")
    lines += [f"        {share:6.1%}  {frame}" for frame, share in own]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5))
