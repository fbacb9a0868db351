"""Topics owned by a platform team: the worker, with topic creation off, runs on the topics made
from `crm-sync topics print`, and stops with the list of those missing otherwise."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess

pytestmark = pytest.mark.integration


def create_from_printed_commands(deployment: Deployment) -> list[str]:
    """Runs what `topics print --format kafka-topics` prints, through the AdminClient (same flags)."""
    printed = subprocess.run([sys.executable, "-m", "processors.ops.cli", "topics", "print", "--format", "kafka-topics"],
                             cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    topics = []
    for line in printed.stdout.splitlines():
        words = shlex.split(line)
        flag = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--") and words[i] != "--config"}
        configs = dict(words[i + 1].split("=", 1) for i in range(len(words) - 1) if words[i] == "--config")
        topics.append(NewTopic(flag["--topic"], int(flag["--partitions"]), int(flag["--replication-factor"]), config=configs))
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    for future in admin.create_topics(topics).values():
        future.result(30)
    return [t.topic for t in topics]


def test_with_topic_creation_off_the_worker_names_what_is_missing_then_runs_on_the_printed_topics(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.extra_env["CRM_SYNC_CREATE_TOPICS"] = "false"
    refused = WorkerProcess(deployment, tmp_path / "refused.log").start()
    assert refused.proc is not None
    assert refused.proc.wait(60) == 2
    log = refused.log_text()
    assert "CRM_SYNC_CREATE_TOPICS=false" in log and deployment.topics.delay in log and deployment.topics.meetings in log

    made = create_from_printed_commands(deployment)
    assert deployment.topics.delay in made and deployment.topics.meetings not in made  # the inputs are the upstream's
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    for future in admin.create_topics([NewTopic(t, deployment.partitions, 1) for t in deployment.topics.inputs]).values():
        future.result(30)
    start_worker(deployment, workers, tmp_path)
    ours = set(made) | set(deployment.topics.inputs)
    suffix = deployment.topics.delay.rsplit(".", 1)[1]
    assert {t for t in admin.list_topics(timeout=10).topics if t.endswith(suffix)} == ours  # it created nothing
