"""deploy/OPERATIONS.md is the runbook: every alert links into it, and it documents every metric
the worker exports (a new metric or alert without its paragraph fails here, by name)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from processors.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "deploy" / "OPERATIONS.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    }


def test_anchors_follow_github_s_rule() -> None:
    assert anchors("# Operating crm-sync\n### CrmSyncWorkerDown\n## Autoscaling on lag (KEDA)\n") == {
        "operating-crm-sync", "crmsyncworkerdown", "autoscaling-on-lag-keda",
    }


def test_every_alert_has_a_runbook_url_that_points_to_its_section_of_operations_md() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert rules
    known = anchors(OPERATIONS.read_text())
    problems = []
    for rule in rules:
        url = rule.get("annotations", {}).get("runbook_url", "")
        path, _, anchor = url.partition("#")
        if path != "deploy/OPERATIONS.md" or anchor != rule["alert"].lower() or anchor not in known:
            problems.append(f"{rule['alert']}: {url or 'no runbook_url'}")
    assert problems == []


def exported_names() -> set[str]:
    """Every sample name family the worker's registry exports (counters with their _total)."""
    names = set()
    for family in Metrics.create().registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_operations_md_documents_every_exported_metric() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", OPERATIONS.read_text(), re.MULTILINE))
    assert sorted(exported_names() - documented) == []
    assert {"process_cpu_seconds_total", "python_info", "crm_sync_deliveries_total"} <= exported_names()
