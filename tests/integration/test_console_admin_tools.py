"""The console's admin tools over raw HTTP against the real broker: a meeting type's preview of its
last booking, and a backfill with its review step (admin only)."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from confluent_kafka import KafkaException

from processors.domain.model import Crm, EventType
from processors.kafka.read import TopicReader
from processors.kafka.topics import ensure_topics
from processors.ops.admin import SettingsAdmin
from processors.ops.publisher import EventPublisher
from tests.integration.harness import Deployment, unique_topics, wait_for
from tests.integration.test_console_security import ADMIN, VIEWER, Console, write_users

pytestmark = pytest.mark.integration


def csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str, Console]]:
    home = tmp_path_factory.mktemp("console-tools")
    d = Deployment(bootstrap=kafka_bootstrap, topics=unique_topics("contools"), secrets_dir=home / "secrets", ca_file="")
    ensure_topics(d.config())
    company = f"co-{uuid.uuid4().hex[:6]}"
    admin = SettingsAdmin(d.config(), actor="test-setup")

    def connected() -> bool:
        try:
            admin.set_connected(company, Crm.SALESFORCE, True)
        except KafkaException:
            return False
        return True

    wait_for(connected, 60, 0.5, "the settings topic")
    admin.set_content(company, "intro", meeting_type_name="Intro (30分)")
    admin.set_content(company, "demo", meeting_type_name="Demo")
    admin.set_toggle(company, "intro", Crm.SALESFORCE, EventType.MEETING_BOOKED, True)
    start = int(time.time() * 1000) + 86_400_000
    person = {"email": "pat@buyer.example", "name": "Pat <b>Bold</b>", "company_name": None, "phone": None}
    publisher = EventPublisher({"bootstrap.servers": kafka_bootstrap}, d.topics)
    publisher.publish_meeting_booked({
        "event_id": f"evt-{uuid.uuid4().hex}", "occurred_at": int(time.time() * 1000) - 60_000, "company_id": company,
        "meeting_type_id": "intro", "meeting_id": "m-1", "meeting_type_name": "Intro", "host": person, "booker": person,
        "start_at": start, "end_at": start + 1_800_000, "timezone": "Asia/Tokyo", "meeting_url": None, "form_answers": [],
    })
    publisher.flush()
    users = write_users(home / "users.json", alice=("admin", ADMIN[1]), vera=("viewer", VIEWER[1]))
    console = Console(d.env(), users, home / "console.log", {"CRM_SYNC_STATE_DIR": str(home / "state")}).start()
    yield d, company, console
    console.stop()
    assert "Traceback" not in console.log.read_text(), console.log.read_text()[-3000:]


def test_a_meeting_type_s_preview_shows_what_its_last_booking_would_create(stack: tuple[Deployment, str, Console]) -> None:
    _, company, console = stack
    viewer = console.session(VIEWER)
    settings = console.call("GET", f"/c/{company}", cookies=viewer)
    assert f'href="/c/{company}/preview?meeting_type=intro"' in settings.text
    page = console.call("GET", f"/c/{company}/preview?meeting_type=intro", cookies=viewer)
    assert page.status == 200
    assert 'id="preview-salesforce-meeting_type"' in page.text and "<code>Subject</code>" in page.text
    assert "Pat &lt;b&gt;Bold&lt;/b&gt;" in page.text and "<b>Bold</b>" not in page.text  # escaped
    empty = console.call("GET", f"/c/{company}/preview?meeting_type=demo", cookies=viewer)
    assert empty.status == 200 and 'id="no-booking"' in empty.text


def test_a_backfill_is_reviewed_then_confirmed_by_an_admin_only(stack: tuple[Deployment, str, Console]) -> None:
    d, company, console = stack
    viewer = console.session(VIEWER)
    form = {"csrf": csrf(console.call("GET", f"/c/{company}/backfill", cookies=viewer).text), "days": "1"}
    assert console.call("POST", f"/c/{company}/backfill/review", form, viewer).status == 403

    admin = console.session(ADMIN)
    token = csrf(console.call("GET", f"/c/{company}/backfill", cookies=admin).text)
    review = console.call("POST", f"/c/{company}/backfill/review", {"csrf": token, "days": "1"}, admin)
    assert review.status == 200 and 'id="backfill-to-deliver">1<' in review.text and 'id="backfill-confirm"' in review.text
    assert _copies(d, company) == 1  # a review sends nothing
    done = console.call("POST", f"/c/{company}/backfill", {"csrf": token, "days": "1"}, admin)
    assert done.status == 303
    assert _copies(d, company) == 2  # the booking once more, marked as the backfill's
    bad = console.call("POST", f"/c/{company}/backfill/review", {"csrf": token, "days": "99"}, admin)
    assert bad.status == 303


def _copies(d: Deployment, company: str) -> int:
    found: list[Any] = []
    with TopicReader({"bootstrap.servers": d.bootstrap}, d.topics.meetings) as reader:
        reader.assign(reader.partitions())
        reader.read_to_end(lambda m: found.append(m) if m.key() == company.encode() else None)
    return len(found)
