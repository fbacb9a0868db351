"""deploy/k8s: valid for Kubernetes (offline, kubernetes-validate's bundled schemas), consistent
with the image, the worker's configuration and the alert rules; and the compose worker's
environment is one the worker knows."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from processors.config import Config, Topics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still supported upstream; newer ones accept it too
CRDS = {"monitoring.coreos.com/v1"}  # Prometheus Operator kinds: no bundled schema, checked below
KNOWN_VARS = {f.metadata["env"] for cls in (Config, Topics) for f in dataclasses.fields(cls) if "env" in f.metadata}


def manifests() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((K8S / name).read_text()) for name in kustomization["resources"]}


def by_kind(kind: str) -> dict[str, Any]:
    """The worker's one manifest of that kind (the dashboard's ConfigMap is Grafana's, not the worker's)."""
    [doc] = [doc for name, doc in manifests().items() if doc["kind"] == kind and name != "grafana-dashboard.yaml"]
    return doc


def worker_container() -> dict[str, Any]:
    [container] = by_kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("name", sorted(n for n, doc in manifests().items() if doc["apiVersion"] not in CRDS))
def test_every_built_in_manifest_is_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(manifests()[name], KUBERNETES_VERSION, strict=True)


def test_the_custom_resources_have_the_operator_s_shape() -> None:
    """ServiceMonitor and PrometheusRule have no bundled schema: the fields the operator needs."""
    custom = {doc["kind"]: doc for doc in manifests().values() if doc["apiVersion"] in CRDS}
    assert set(custom) == {"ServiceMonitor", "PrometheusRule"}
    for doc in custom.values():
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"} and doc["metadata"]["name"]
    assert set(custom["ServiceMonitor"]["spec"]) == {"selector", "endpoints"}
    for group in custom["PrometheusRule"]["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"} and rule["expr"]


def test_the_validator_does_reject_a_broken_statefulset() -> None:
    broken = copy.deepcopy(by_kind("StatefulSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [9464]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(by_kind("StatefulSet"))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_environment_variable_is_one_the_config_knows() -> None:
    container = worker_container()
    names = [e["name"] for e in container["env"]] + list(by_kind("ConfigMap")["data"])
    assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == [by_kind("ConfigMap")["metadata"]["name"]]
    unknown = sorted(set(names) - KNOWN_VARS)
    assert unknown == [], f"not variables of processors/config.py: {unknown}"
    assert len(names) == len(set(names)), "a variable is set twice"
    config = Config.from_env({**by_kind("ConfigMap")["data"], "KAFKA_SASL_PASSWORD": "x", "CRM_SYNC_HTTP_TOKEN": "t"})
    assert config.http_problems() == []


def test_compose_sets_only_variables_the_config_knows() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["worker"]["environment"]
    assert sorted(set(env) - KNOWN_VARS) == []


def test_static_membership_probes_grace_and_resources() -> None:
    sts = by_kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = worker_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["CRM_SYNC_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert pod["terminationGracePeriodSeconds"] > 30  # the worker's drain is 30 s
    port = int(by_kind("ConfigMap")["data"]["CRM_SYNC_METRICS_PORT"])
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def test_credentials_come_from_secret_volumes_at_the_paths_the_worker_reads() -> None:
    container = worker_container()
    pod = by_kind("StatefulSet")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    credentials = volumes[mounts[env["CRM_SYNC_SECRETS_DIR"]]]
    sources = credentials["projected"]["sources"]
    # Whole Secrets in the flat layout (no items to list per company): onboarding changes no pod template.
    assert sources and all(set(s) == {"secret"} and "items" not in s["secret"] and s["secret"]["optional"] for s in sources)
    assert [s["secret"]["name"] for s in sources] == [f"crm-sync-credentials-{i}" for i in range(len(sources))]
    ca_dir = str(Path(by_kind("ConfigMap")["data"]["KAFKA_SSL_CA_LOCATION"]).parent)
    assert "secret" in volumes[mounts[ca_dir]]
    assert env["CRM_SYNC_STATE_DIR"] in mounts
    secret_env = [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert {e["name"] for e in secret_env} == {"KAFKA_SASL_PASSWORD", "CRM_SYNC_HTTP_TOKEN"}


def test_the_pod_runs_as_the_image_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    security = by_kind("StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user
    assert security["runAsNonRoot"] is True
    [volume] = re.findall(r'^VOLUME \["([^"]+)"\]$', dockerfile, re.M)
    assert {"name": "state", "mountPath": volume} in worker_container()["volumeMounts"]


def test_the_service_monitor_scrapes_the_metrics_service_as_job_crm_sync() -> None:
    service, monitor, sts = by_kind("Service"), by_kind("ServiceMonitor"), by_kind("StatefulSet")
    assert service["metadata"]["name"] == "crm-sync"  # the job label; the alerts select up{job="crm-sync"}
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"] and "metrics" in ports
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_the_prometheus_rule_is_generated_from_the_alert_rules() -> None:
    generator = _generator()
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert (K8S / "prometheusrule.yaml").read_text() == generator.render(alerts), "run deploy/k8s/generate.py"
    rule = by_kind("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(alerts)["groups"]
    # A changed alert changes the rendering (the comparison above is not vacuous).
    assert generator.render(alerts.replace("for: 2m", "for: 3m", 1)) != generator.render(alerts)


def test_runbook_links_can_be_made_absolute_for_an_overlay() -> None:
    generator = _generator()
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    rendered = yaml.safe_load(generator.render(alerts, "https://git.example/crm-sync/blob/main/"))
    urls = [r["annotations"]["runbook_url"] for g in rendered["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u.startswith("https://git.example/crm-sync/blob/main/deploy/OPERATIONS.md#") for u in urls)


def test_the_dashboard_configmap_is_generated_from_the_dashboard_and_the_grafana_sidecar_finds_it() -> None:
    generator = _generator()
    dashboard = (ROOT / "deploy" / "grafana" / "crm-sync.json").read_text()
    assert (K8S / "grafana-dashboard.yaml").read_text() == generator.render_dashboard(dashboard), "run deploy/k8s/generate.py"
    config_map = manifests()["grafana-dashboard.yaml"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # kube-prometheus-stack's sidecar label
    assert json.loads(config_map["data"]["crm-sync.json"]) == json.loads(dashboard)
    [provider] = yaml.safe_load(config_map["data"]["crm-sync-provider.yaml"])["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_kube_prometheus_stack_selects_the_monitor_and_the_rules_by_a_release_label_set_in_the_kustomization() -> None:
    """The operator's default selectors match `release: <helm release>`; without it nothing is scraped."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [patch] = [p for p in kustomization["patches"] if p["target"].get("group") == "monitoring.coreos.com"]
    ops = yaml.safe_load(patch["patch"])
    assert {"op": "add", "path": "/metadata/labels/release", "value": "kube-prometheus-stack"} in ops
    custom = [doc for doc in manifests().values() if doc["apiVersion"] in CRDS]
    assert len(custom) == 2
    for doc in custom:  # `add` to /metadata/labels/release needs the labels map to exist
        assert isinstance(doc["metadata"].get("labels"), dict)


def test_the_keda_example_scales_only_on_groups_whose_lag_means_load() -> None:
    """The delay and retry groups carry lag on purpose (every action waits there)."""
    example = yaml.safe_load((K8S / "examples" / "keda-scaledobject.yaml").read_text())
    assert example["kind"] == "ScaledObject" and example["spec"]["scaleTargetRef"]["name"] == by_kind("StatefulSet")["metadata"]["name"]
    groups = {t["metadata"]["consumerGroup"] for t in example["spec"]["triggers"]}
    assert groups == {"crm-sync-ingest", "crm-sync-sink-salesforce", "crm-sync-sink-hubspot"}
    assert example["spec"]["maxReplicaCount"] <= int(by_kind("ConfigMap")["data"]["CRM_SYNC_TOPIC_PARTITIONS"])


def test_compose_builds_kafka_from_the_jars_of_the_pinned_version() -> None:
    import subprocess

    version = subprocess.run(["bash", str(ROOT / "deploy" / "kafka" / "kafka.sh"), "version"], capture_output=True, text=True, check=True).stdout.strip()
    kafka = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["kafka"]
    assert f"/kafka-{version}/libs" in kafka["build"]["additional_contexts"]["libs"]


def secret_volumes() -> dict[str, dict[str, Any]]:
    pod = by_kind("StatefulSet")["spec"]["template"]["spec"]
    return {v["name"]: v for v in pod["volumes"] if "secret" in v or "projected" in v}


def test_secret_files_are_mounted_0400_and_readable_by_the_image_user_s_group() -> None:
    """0400 leaves a file to its owner, root: the kubelet adds the group's read bit for the pod's
    fsGroup, so the worker (uid/gid 10001, the image's user) reads it and no other user does."""
    volumes = secret_volumes()
    assert set(volumes) == {"credentials", "kafka-ca"}
    for name, volume in volumes.items():
        source = volume.get("secret") or volume["projected"]
        assert source["defaultMode"] == 0o400, name
        for item in (i for s in volume.get("projected", {}).get("sources", []) for i in s["secret"].get("items", [])):
            assert item.get("mode", 0o400) == 0o400, item
    [(uid, gid)] = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    security = by_kind("StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert (str(security["runAsUser"]), str(security["fsGroup"])) == (uid, gid)
    mounts = {m["name"]: m for m in worker_container()["volumeMounts"]}
    assert all(mounts[name]["readOnly"] is True for name in volumes)


def network_policy() -> dict[str, Any]:
    return by_kind("NetworkPolicy")


def allows(rule: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    return any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"])


def test_the_network_policy_selects_the_worker_pods_and_denies_both_directions_by_default() -> None:
    policy = network_policy()
    pod_labels = by_kind("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    # Every rule names its ports: nothing is open on every port, in either direction.
    assert all(rule.get("ports") for rule in policy["spec"]["ingress"] + policy["spec"]["egress"])


def test_ingress_is_only_the_metrics_port_from_monitoring_and_the_console_port() -> None:
    metrics = int(by_kind("ConfigMap")["data"]["CRM_SYNC_METRICS_PORT"])
    console = Config().console_port
    rules = network_policy()["spec"]["ingress"]
    ports = sorted(p["port"] for rule in rules for p in rule["ports"])
    assert ports == sorted([metrics, console])
    [scrape] = [rule for rule in rules if allows(rule, metrics)]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_egress_is_only_dns_kafka_the_registry_and_https_to_public_addresses() -> None:
    import ipaddress

    rules = network_policy()["spec"]["egress"]
    kafka_port = int(by_kind("ConfigMap")["data"]["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)[1])
    [dns] = [rule for rule in rules if allows(rule, 53, "UDP")]
    assert allows(dns, 53, "TCP")
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    [kafka] = [rule for rule in rules if allows(rule, kafka_port)]
    assert all("podSelector" in peer for peer in kafka["to"])
    [registry] = [rule for rule in rules if any("registry" in str(peer) for peer in rule["to"])]
    assert all("podSelector" in peer for peer in registry["to"])
    [crm] = [rule for rule in rules if allows(rule, 443)]
    assert [p["port"] for p in crm["ports"]] == [443]
    blocks = [peer["ipBlock"] for peer in crm["to"]]

    def reachable(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(
            ip.version == ipaddress.ip_network(b["cidr"]).version and ip in ipaddress.ip_network(b["cidr"])
            and not any(ip in ipaddress.ip_network(e) for e in b.get("except", []) if ipaddress.ip_network(e).version == ip.version)
            for b in blocks
        )

    assert reachable("13.110.0.1") and reachable("104.18.0.1") and reachable("2606:4700::1")  # Salesforce, HubSpot (Cloudflare)
    private = ["10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.1.1", "169.254.169.254", "100.64.0.1", "127.0.0.1",
               "fd00::1", "fe80::1", "::1"]
    assert [a for a in private if reachable(a)] == []
    assert len(rules) == 4, "an egress rule beside DNS, Kafka, the registry and the CRMs"


def test_the_validator_does_reject_a_broken_network_policy() -> None:
    broken = copy.deepcopy(network_policy())
    broken["spec"]["egress"][0]["to"][0]["ipBlok"] = {"cidr": "0.0.0.0/0"}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
