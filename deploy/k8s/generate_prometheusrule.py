"""Writes deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml, so the two cannot drift.

    .venv/bin/python deploy/k8s/generate_prometheusrule.py          # rewrite the file
    .venv/bin/python deploy/k8s/generate_prometheusrule.py --check  # exit 1 if it is stale

tests/unit/test_k8s_manifests.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = "# Generated from deploy/prometheus/alerts.yml by deploy/k8s/generate_prometheusrule.py: do not edit.\n"


def render(alerts_text: str) -> str:
    """The PrometheusRule (Prometheus Operator) whose groups are alerts.yml's groups, unchanged."""
    groups = yaml.safe_load(alerts_text)["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "crm-sync", "labels": {"app.kubernetes.io/name": "crm-sync"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, width=1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the committed file is current")
    args = parser.parse_args(argv)
    wanted = render(ALERTS.read_text(encoding="utf-8"))
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != wanted:
            print(f"{TARGET} is stale: run deploy/k8s/generate_prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
