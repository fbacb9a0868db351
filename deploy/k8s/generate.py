"""Writes the generated manifests of deploy/k8s from their sources, so the copies cannot drift:

- prometheusrule.yaml from deploy/prometheus/alerts.yml (the PrometheusRule);
- grafana-dashboard.yaml from deploy/grafana/crm-sync.json (the dashboard's provisioning ConfigMap).

    .venv/bin/python deploy/k8s/generate.py          # rewrite both files
    .venv/bin/python deploy/k8s/generate.py --check  # exit 1 if one is stale
    .venv/bin/python deploy/k8s/generate.py --runbook-base https://git.example/crm-sync/blob/main/
                                                     # runbook links made absolute (for an overlay)

tests/unit/test_k8s_manifests.py fails when a committed file differs from what this prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
DASHBOARD = HERE.parent / "grafana" / "crm-sync.json"
RULE = HERE / "prometheusrule.yaml"
DASHBOARD_CONFIGMAP = HERE / "grafana-dashboard.yaml"
LABELS = {"app.kubernetes.io/name": "crm-sync"}
# Grafana's file provider for the dashboard key of the ConfigMap below, for a Grafana without the
# kube-prometheus-stack sidecar: mount the ConfigMap's provider key under
# /etc/grafana/provisioning/dashboards/ and its dashboard key under the provider's path.
PROVIDER = {
    "apiVersion": 1,
    "providers": [
        {
            "name": "crm-sync",
            "folder": "crm-sync",
            "type": "file",
            "disableDeletion": True,
            "allowUiUpdates": False,
            "options": {"path": "/var/lib/grafana/dashboards/crm-sync"},
        }
    ],
}


def _header(source: str) -> str:
    return f"# Generated from {source} by deploy/k8s/generate.py: do not edit.\n"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the dashboard JSON) as literal blocks, so a diff of the file reads."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def render(alerts_text: str, runbook_base: str = "") -> str:
    """The PrometheusRule (Prometheus Operator) whose groups are alerts.yml's groups; runbook links
    are prefixed with `runbook_base` when one is given."""
    groups = yaml.safe_load(alerts_text)["groups"]
    if runbook_base:
        for group in groups:
            for rule in group["rules"]:
                annotations = rule.get("annotations", {})
                if "runbook_url" in annotations:
                    annotations["runbook_url"] = runbook_base + annotations["runbook_url"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "crm-sync", "labels": dict(LABELS)},
        "spec": {"groups": groups},
    }
    return _header("deploy/prometheus/alerts.yml") + _dump(rule)


def render_dashboard(dashboard_text: str) -> str:
    """The dashboard as a ConfigMap that kube-prometheus-stack's Grafana sidecar loads by its
    `grafana_dashboard` label, with a file provider for a Grafana without the sidecar."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "crm-sync-grafana-dashboard",
            "labels": {**LABELS, "grafana_dashboard": "1"},
            "annotations": {"grafana_folder": "crm-sync"},
        },
        "data": {"crm-sync.json": dashboard_text, "crm-sync-provider.yaml": _dump(PROVIDER)},
    }
    return _header("deploy/grafana/crm-sync.json") + _dump(config_map)


def wanted(runbook_base: str = "") -> dict[Path, str]:
    return {
        RULE: render(ALERTS.read_text(encoding="utf-8"), runbook_base),
        DASHBOARD_CONFIGMAP: render_dashboard(DASHBOARD.read_text(encoding="utf-8")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the committed files are current")
    parser.add_argument("--runbook-base", default="", help="prefix for the alerts' runbook_url (your repository's URL)")
    args = parser.parse_args(argv)
    stale = []
    for target, text in wanted(args.runbook_base).items():
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(target)
        else:
            target.write_text(text, encoding="utf-8")
    for target in stale:
        print(f"{target} is stale: run deploy/k8s/generate.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
