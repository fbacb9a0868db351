"""Fixtures for end-to-end tests: a CRM sandbox per test and an isolated deployment per test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from connectors.credentials import HubSpotCredentials, SalesforceCredentials
from connectors.hubspot import HubSpotClient
from connectors.salesforce import SalesforceClient
from connectors.sandbox.server import CrmSandbox
from tests.integration.harness import Deployment, WorkerProcess, unique_topics, write_default_secrets


@pytest.fixture
def sandbox() -> Iterator[CrmSandbox]:
    with CrmSandbox() as sb:
        yield sb


@pytest.fixture
def deployment(kafka_bootstrap: str, sandbox: CrmSandbox, tmp_path: Path) -> Deployment:
    info = sandbox.info()
    secrets = tmp_path / "secrets"
    write_default_secrets(
        secrets,
        sf_instance=info["salesforce_instance"],
        session_id=info["session_id"],
        hs_url=info["hubspot_url"],
        hs_token=info["hubspot_token"],
    )
    return Deployment(bootstrap=kafka_bootstrap, topics=unique_topics("e2e"), secrets_dir=secrets, ca_file=info["ca_file"])


@pytest.fixture
def workers(deployment: Deployment, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Started workers are stopped at teardown; their logs stay in tmp_path for a failing test."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def start_worker(deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path) -> WorkerProcess:
    worker = WorkerProcess(deployment, tmp_path / f"worker-{len(workers)}.log").start()
    workers.append(worker)
    worker.wait_ready()
    return worker


@pytest.fixture(scope="module")
def running() -> Iterator[CrmSandbox]:
    """One sandbox per module for the client tests (`sb` resets it for each test)."""
    with CrmSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sb(running: CrmSandbox) -> CrmSandbox:
    running.reset()
    return running


@pytest.fixture
def sf(sb: CrmSandbox) -> SalesforceClient:
    creds = SalesforceCredentials(instance_url=sb.salesforce_url, session_id=sb.session_id)
    return SalesforceClient(creds, sb.ca_file, timeout=5)


@pytest.fixture
def hs(sb: CrmSandbox) -> HubSpotClient:
    assert sb.hubspot_token is not None
    return HubSpotClient(HubSpotCredentials(sb.hubspot_token, sb.hubspot_url), timeout=5)
