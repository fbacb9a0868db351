"""Onboarding a company changes no pod template and needs no restart: a running worker picks up
the company's credentials when they appear in the mounted secrets directory (the flat layout of
one Secret mounted whole), then delivers its bookings."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from connectors.sandbox.server import CrmSandbox
from processors.domain.model import Crm, EventType
from processors.ops.admin import SettingsAdmin
from processors.ops.dlq import read_dead_letters
from processors.codec import Codec
from processors.ops.publisher import EventPublisher
from tests.integration.conftest import start_worker
from tests.integration.harness import Deployment, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def booking(email: str) -> dict[str, object]:
    start = int(time.time() * 1000) + 86_400_000
    person = {"email": email, "name": "Nia New", "company_name": None, "phone": None}
    return {
        "event_id": f"evt-{uuid.uuid4().hex}", "occurred_at": int(time.time() * 1000) - 60_000, "company_id": "newco",
        "meeting_type_id": "intro", "meeting_id": "m-1", "meeting_type_name": "Intro", "host": person, "booker": person,
        "start_at": start, "end_at": start + 1_800_000, "timezone": "Asia/Tokyo", "meeting_url": None, "form_answers": [],
    }


def test_a_company_s_secret_added_while_the_worker_runs_is_used_for_its_next_booking(
    deployment: Deployment, sandbox: CrmSandbox, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    contact = sf.add_contact("nia@newco.example", owner_id=sf.add_user("owner@newco.example"))
    default = json.loads((deployment.secrets_dir / "_default" / "salesforce.json").read_text())
    shutil.rmtree(deployment.secrets_dir / "_default")  # production: no shared credentials
    deployment.extra_env["CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS"] = "false"
    admin = SettingsAdmin(deployment.config(), actor="test")
    admin.set_connected("newco", Crm.SALESFORCE, True)
    admin.set_toggle("newco", "intro", Crm.SALESFORCE, EventType.MEETING_BOOKED, True)
    start_worker(deployment, workers, tmp_path)
    publisher = EventPublisher({"bootstrap.servers": deployment.bootstrap}, deployment.topics)

    publisher.publish_meeting_booked(booking("nia@newco.example"))
    publisher.flush()
    config = deployment.config()
    [missing] = wait_for(lambda: [f for f in read_dead_letters(config, Codec(), company_id="newco")], 60, 0.5, "the dead letter")
    assert missing.record["error_code"] == "CREDENTIALS_MISSING"

    # The platform adds the company's keys to the mounted Secret; the kubelet updates the directory.
    (deployment.secrets_dir / "newco.salesforce.json").write_text(json.dumps(default))
    publisher.publish_meeting_booked(booking("nia@newco.example"))
    publisher.flush()
    [task] = wait_for(lambda: sf.list_tasks() or None, 60, 0.3, "the Task, with no restart")
    assert task["WhoId"] == contact
