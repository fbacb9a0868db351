"""The project's docs stand alone: every relative link in the README, docs/ and deploy/ names a file
that exists inside the repository (a link to a sibling checkout would break for every reader)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    return broken


def test_the_link_check_sees_a_link_out_of_the_repository(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "rules.md"
    assert broken_links(doc) == []
    outside = tmp_path / "x.md"
    outside.write_text("[spec](../../shared/SPEC.md) [ok](https://example.org/) [here](#top)")
    assert broken_links(outside) == ["../../shared/SPEC.md"]


def test_every_relative_link_stays_inside_the_repository_and_exists() -> None:
    problems = {str(doc.relative_to(ROOT)): broken for doc in documents() if (broken := broken_links(doc))}
    assert problems == {}
