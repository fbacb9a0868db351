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


def rank(raw: Path, top: int = 5) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, the `top` frames by own time, the `top` project frames by time including callees), as shares."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if "processors/" in frame and "(processors/" in frame:
                total[frame] += n
    share = max(samples, 1)
    return (
        samples,
        [(f, n / share) for f, n in own.most_common(top)],
        [(f, n / share) for f, n in total.most_common(top)],
    )


def report(raw: Path, top: int = 5) -> str:
    samples, own, total = rank(raw, top)
    lines = [f"    profile {raw} ({samples:,} samples of busy threads):", "      own time:"]
    lines += [f"        {share:6.1%}  {frame}" for frame, share in own]
    lines.append("      project frames including callees:")
    lines += [f"        {share:6.1%}  {frame}" for frame, share in total]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5))
