"""`CRM_SYNC_KAFKA_<KEY>` on a real worker and broker: keys librdkafka and aiokafka take reach the
group members the broker sees; a key librdkafka does not know stops start-up with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess, wait_for

CLIENT_ID = "crm-sync-passthrough"


def _members(bootstrap: str, app_id: str) -> dict[str, list[str]]:
    """Client ids of the members of each of the app's consumer groups."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid if g.group_id.startswith(app_id)]
    if not groups:
        return {}
    described = admin.describe_consumer_groups(groups)
    return {group: [m.client_id for m in future.result(timeout=30).members] for group, future in described.items()}


def test_a_worker_runs_with_passthrough_keys_and_its_members_carry_the_client_id(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.extra_env.update(
        CRM_SYNC_KAFKA_CLIENT_ID=CLIENT_ID, CRM_SYNC_KAFKA_COMPRESSION_TYPE="lz4", CRM_SYNC_KAFKA_SESSION_TIMEOUT_MS="30000"
    )
    start_worker(deployment, workers, tmp_path)

    def joined() -> dict[str, list[str]] | None:
        members = _members(deployment.bootstrap, deployment.app_id)
        return members if members and all(members.values()) else None

    members = wait_for(joined, 120, 1.0, "the stages' consumer groups with members")
    assert all(client == CLIENT_ID for clients in members.values() for client in clients), members


def test_an_unknown_key_stops_the_worker_with_exit_2_naming_the_variable(deployment: Deployment) -> None:
    env = {**deployment.env(), "CRM_SYNC_KAFKA_NO_SUCH_KEY": "hunter2-secret"}
    done = subprocess.run(
        [sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "CRM_SYNC_KAFKA_NO_SUCH_KEY" in done.stderr and "no such property" in done.stderr
    assert "hunter2-secret" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1
