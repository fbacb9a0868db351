"""`./dev run` finds the project's files from wherever its module lives."""

from __future__ import annotations

from processors.ops import devrun


def test_the_project_root_holds_the_broker_script_and_the_demo_seed() -> None:
    assert (devrun.ROOT / "deploy" / "kafka" / "kafka.sh").is_file()
    assert (devrun.ROOT / "deploy" / "demo" / "seed.json").is_file()
