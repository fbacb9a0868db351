"""Every environment variable the worker reads is documented by its full name in the README's
Configuration table or in docs/ (a new variable without its row fails here, by name)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from processors.config import Config, Topics

ROOT = Path(__file__).resolve().parents[2]


def test_every_variable_is_documented_by_its_full_name() -> None:
    names = {f.metadata["env"] for cls in (Config, Topics) for f in dataclasses.fields(cls) if "env" in f.metadata}
    text = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    assert sorted(n for n in names if f"`{n}`" not in text) == []
