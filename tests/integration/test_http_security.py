"""The worker's HTTP server: loopback by default; off loopback `/history` needs the bearer token,
and without a token the worker does not start at all."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import start_worker
from tests.integration.harness import ROOT, Deployment, WorkerProcess

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-the-test"


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_network_bind_without_a_token_does_not_start(deployment: Deployment) -> None:
    env = {**deployment.env(), "CRM_SYNC_HTTP_BIND": "0.0.0.0"}
    run = subprocess.run([sys.executable, "-m", "processors.ops.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    [line] = run.stderr.splitlines()
    assert line.startswith("crm-sync: error: CRM_SYNC_HTTP_TOKEN: expected a token (CRM_SYNC_HTTP_BIND is 0.0.0.0"), line


def test_off_loopback_history_needs_the_token_and_probes_stay_open(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    deployment.extra_env.update(CRM_SYNC_HTTP_BIND="0.0.0.0", CRM_SYNC_HTTP_TOKEN=TOKEN)
    worker = start_worker(deployment, workers, tmp_path)
    base = f"http://127.0.0.1:{worker.port}"
    assert status(f"{base}/metrics") == 200
    assert status(f"{base}/health/live") == 200
    assert status(f"{base}/health/ready") == 200
    assert status(f"{base}/history?company=acme") == 401
    assert status(f"{base}/history?company=acme", "wrong") == 401
    assert status(f"{base}/history?company=acme", TOKEN) == 200
    assert TOKEN not in worker.metrics() and TOKEN not in worker.log_text()

    cli = [sys.executable, "-m", "processors.ops.cli", "history", "--company", "acme", "--url", base, "--json"]
    with_token = subprocess.run(cli, cwd=ROOT, env=deployment.env(), capture_output=True, text=True, timeout=60)
    assert with_token.returncode == 0, with_token.stderr
    env = {k: v for k, v in deployment.env().items() if k != "CRM_SYNC_HTTP_TOKEN"}
    without = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert without.returncode != 0 and "worker answered 401" in without.stderr
