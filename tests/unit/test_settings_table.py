"""`SettingsStore` over a fake `TopicReader`: readiness only after the topic was read to its end
(an open admin transaction keeps it not ready), malformed records ignored and counted, tombstones
refused, lookups and change listeners, only audited next versions applied, and a restarted reader
rebuilding beside the live table. No broker: the readers are injected through `reader_factory`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

import pytest

from processors.codec import Codec
from processors.domain.model import CompanySettings, EventToggles, MeetingTypeSettings
from processors.domain.records import company_to_record, meeting_type_to_record
from processors.domain.rules import company_key, meeting_type_key
from processors.kafka.read import NotCaughtUp
from processors.domain.audit import AuditRecord, Refusal, Stamp
from processors.state.settings import Decision, SettingsStore

CODEC = Codec()
WAIT = 2.0  # upper bound for things that do happen (they take milliseconds)
SHORT = 0.05  # how long to watch for things that must not happen


@dataclass
class Msg:
    """The part of confluent_kafka.Message the store reads."""

    _key: bytes | None
    _value: bytes | None
    _offset: int = 0
    _partition: int = 0

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_800_000_000_000 + self._offset)

    def error(self) -> None:
        return None


def company_msg(doc: CompanySettings) -> tuple[bytes, bytes]:
    return company_key(doc.company_id).encode(), CODEC.encode("CompanySettings", company_to_record(doc))


def meeting_type_msg(doc: MeetingTypeSettings) -> tuple[bytes, bytes]:
    return (
        meeting_type_key(doc.company_id, doc.meeting_type_id).encode(),
        CODEC.encode("MeetingTypeSettings", meeting_type_to_record(doc)),
    )


class FakeTopic:
    """The settings topic as read_committed sees it: records after an open transaction's first
    record are not readable to the end until it is committed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.records: list[Msg] = []
        self.open_transaction = False
        self.read_to_end_calls = 0
        self.readers = 0
        self.closed = 0
        self.fail_follow = 0  # how many `follow` calls raise, as a broker failure would
        self.fail_read = 0  # how many `read_to_end` calls raise once they have fed the records
        self.hold_at: int | None = None  # a reader reaching this offset waits there until `release`
        self.held = threading.Event()  # a reader waits at `hold_at`

    def append(self, key: bytes | None, value: bytes | None) -> None:
        with self._arrived:
            self.records.append(Msg(key, value, len(self.records)))
            self._arrived.notify_all()

    def commit_transaction(self) -> None:
        with self._arrived:
            self.open_transaction = False
            self._arrived.notify_all()

    def reader(self) -> "FakeReader":
        self.readers += 1
        return FakeReader(self)

    def release(self) -> None:
        with self._arrived:
            self.hold_at = None
            self._arrived.notify_all()


class FakeReader:
    def __init__(self, topic: FakeTopic) -> None:
        self.topic = topic
        self.position = 0
        self.assigned: list[int] = []
        self.ends: dict[int, int] = {}

    def partitions(self, timeout: float = 10.0) -> list[int]:
        return [0]

    def assign(self, partitions: list[int]) -> None:
        self.assigned = list(partitions)
        self.position = 0

    def _feed(self, on_record: Callable[[Msg], None]) -> None:
        while True:
            with self.topic._arrived:
                if self.position == self.topic.hold_at:
                    self.topic.held.set()
                self.topic._arrived.wait_for(lambda: self.position != self.topic.hold_at)
                if self.position >= len(self.topic.records):
                    return
                msg = self.topic.records[self.position]
                self.position += 1
            on_record(msg)

    def read_to_end(self, on_record: Callable[[Msg], None], timeout: float = 30.0) -> int:
        with self.topic._lock:
            self.topic.read_to_end_calls += 1
            held_back = self.topic.open_transaction
        if held_back:
            # The real reader gives up after its timeout; a tiny wait stands for it.
            with self.topic._arrived:
                self.topic._arrived.wait(0.005)
            raise NotCaughtUp("settings not read to their end (transaction open)")
        before = self.position
        self._feed(on_record)
        if self.topic.fail_read:
            self.topic.fail_read -= 1
            raise RuntimeError("reading settings: broker gone")
        self.ends = {0: self.position}
        return self.position - before

    def follow(self, on_record: Callable[[Msg], None], seconds: float) -> None:
        with self.topic._arrived:
            if self.topic.fail_follow:
                self.topic.fail_follow -= 1
                raise RuntimeError("reading settings: broker gone")
            if self.position >= len(self.topic.records):
                self.topic._arrived.wait(0.005)
        if not self.topic.open_transaction:
            self._feed(on_record)

    def close(self) -> None:
        self.topic.closed += 1

    def __enter__(self) -> "FakeReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


AUDIT = FakeTopic()  # the audit topic of the tests that write no versioned record: always empty


def make_store(topic: FakeTopic, audit: FakeTopic = AUDIT) -> SettingsStore:
    def reader(name: str) -> FakeReader:
        return {"settings": topic, "audit": audit}[name].reader()

    return SettingsStore({}, "settings", CODEC, audit_topic="audit", ready_timeout=0.01, reader_factory=reader)


@pytest.fixture
def topic() -> FakeTopic:
    return FakeTopic()


@pytest.fixture
def store(topic: FakeTopic):
    s = make_store(topic)
    yield s
    s.stop()


def eventually(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if check():
            return True
        done.wait(0.005)
    return check()


ACME = CompanySettings("acme", salesforce_connected=True, timezone="Asia/Tokyo")
GLOBEX = CompanySettings("globex", hubspot_connected=True, paused=True, timezone="Europe/Berlin")
MT1 = MeetingTypeSettings("acme", "mt-1", meeting_type_name="Intro", salesforce_todo=EventToggles(meeting_booked=True))
MT2 = MeetingTypeSettings("acme", "mt-2", meeting_type_name="Demo")
MT_GLOBEX = MeetingTypeSettings("globex", "mt-1", meeting_type_name="Other company, same id")


# ---- readiness -----------------------------------------------------------------------------------


def test_not_ready_before_start_and_ready_once_read_to_its_end(topic: FakeTopic, store: SettingsStore) -> None:
    topic.append(*company_msg(ACME))
    assert not store.ready
    assert not store.wait_ready(0.0)
    store.start()
    assert store.wait_ready(WAIT)
    assert store.ready
    assert store.company("acme") == ACME


def test_an_empty_topic_read_to_its_end_is_ready(topic: FakeTopic, store: SettingsStore) -> None:
    store.start()
    assert store.wait_ready(WAIT)
    assert store.companies() == []
    assert store.company("acme") is None


def test_an_open_transaction_keeps_the_store_not_ready_until_it_is_committed(topic: FakeTopic, store: SettingsStore) -> None:
    topic.append(*company_msg(ACME))
    topic.open_transaction = True
    store.start()
    assert not store.wait_ready(SHORT)
    assert eventually(lambda: topic.read_to_end_calls >= 3)  # keeps trying, whatever the deadline
    assert not store.ready
    topic.commit_transaction()
    assert store.wait_ready(WAIT)
    assert store.company("acme") == ACME
    assert topic.readers == 1  # the same reader kept reading: NotCaughtUp is no reader failure


def test_records_after_ready_are_followed(topic: FakeTopic, store: SettingsStore) -> None:
    store.start()
    assert store.wait_ready(WAIT)
    topic.append(*company_msg(ACME))
    assert eventually(lambda: store.company("acme") == ACME)


def test_stop_ends_the_reader_thread_and_closes_the_reader(topic: FakeTopic) -> None:
    s = make_store(topic)
    s.start()
    assert s.wait_ready(WAIT)
    s.stop()  # joins the reader thread, which leaves the reader's `with`
    assert topic.closed == 1


def test_stop_while_not_caught_up_leaves_it_not_ready(topic: FakeTopic) -> None:
    topic.open_transaction = True
    s = make_store(topic)
    s.start()
    assert eventually(lambda: topic.read_to_end_calls >= 1)
    s.stop()
    assert topic.closed == 1
    assert not s.ready


def test_load_once_reads_to_the_end_and_raises_not_caught_up_when_held_back(topic: FakeTopic) -> None:
    topic.append(*company_msg(ACME))
    s = make_store(topic)
    s.load_once(timeout=0.01)
    assert s.company("acme") == ACME
    topic.open_transaction = True
    with pytest.raises(NotCaughtUp):
        make_store(topic).load_once(timeout=0.01)


# ---- contents ----------------------------------------------------------------------------------


def loaded(topic: FakeTopic) -> SettingsStore:
    s = make_store(topic)
    s.load_once(timeout=0.01)
    return s


def test_lookups_by_company_and_meeting_type(topic: FakeTopic) -> None:
    for doc in (ACME, GLOBEX):
        topic.append(*company_msg(doc))
    for doc in (MT2, MT1, MT_GLOBEX):
        topic.append(*meeting_type_msg(doc))
    s = loaded(topic)
    assert s.company("acme") == ACME
    assert s.company("globex") == GLOBEX
    assert s.company("nobody") is None
    assert s.meeting_type("acme", "mt-1") == MT1
    assert s.meeting_type("globex", "mt-1") == MT_GLOBEX
    assert s.meeting_type("acme", "nope") is None
    assert s.meeting_type("nobody", "mt-1") is None
    assert s.meeting_types("acme") == [MT1, MT2]  # sorted by id, only that company's
    assert s.meeting_types("globex") == [MT_GLOBEX]
    assert s.meeting_types("nobody") == []
    assert sorted(c.company_id for c in s.companies()) == ["acme", "globex"]
    # A company lookup never returns a meeting type and vice versa.
    assert s.company("mt-1") is None
    assert s.rejected == 0


def test_ids_that_need_quoting_round_trip(topic: FakeTopic) -> None:
    odd = CompanySettings("a/b c%")
    odd_mt = MeetingTypeSettings("a/b c%", "x/y")
    topic.append(*company_msg(odd))
    topic.append(*meeting_type_msg(odd_mt))
    s = loaded(topic)
    assert s.company("a/b c%") == odd
    assert s.meeting_type("a/b c%", "x/y") == odd_mt


def test_the_latest_record_per_key_wins(topic: FakeTopic) -> None:
    topic.append(*company_msg(ACME))
    topic.append(*company_msg(replace(ACME, paused=True, updated_at=5)))
    s = loaded(topic)
    company = s.company("acme")
    assert company is not None and company.paused and company.updated_at == 5
    assert len(s.companies()) == 1


def test_a_tombstone_is_refused_it_carries_no_audit(topic: FakeTopic) -> None:
    topic.append(*company_msg(ACME))
    topic.append(*meeting_type_msg(MT1))
    topic.append(company_key("acme").encode(), None)
    topic.append(meeting_type_key("acme", "mt-1").encode(), None)
    s = loaded(topic)
    assert s.company("acme") == ACME
    assert s.meeting_types("acme") == [MT1]
    assert s.rejected == 2
    assert s.wait_decision(0, 2, 0) == Decision(Refusal.TOMBSTONE, "a tombstone for company/acme: the admin tool never deletes a document")


def test_a_tombstone_for_an_unknown_key_changes_nothing(topic: FakeTopic) -> None:
    topic.append(company_key("ghost").encode(), None)
    s = loaded(topic)
    assert s.company("ghost") is None
    assert s.rejected == 1


def _malformed() -> list[tuple[str, bytes | None, bytes | None]]:
    company_value = company_msg(ACME)[1]
    mt_value = meeting_type_msg(MT1)[1]
    bad_tz = CODEC.encode("CompanySettings", {**company_to_record(ACME), "timezone": "Mars/Olympus"})
    return [
        ("no key", None, company_value),
        ("no key, tombstone", None, None),
        ("not a settings key", b"acme", company_value),
        ("not a settings key, tombstone", b"whatever/x/y/z", None),
        ("key not utf-8", b"company/\xff\xfe", company_value),
        ("value not a record", company_key("acme").encode(), b"\x07garbage"),
        ("value truncated", company_key("acme").encode(), company_value[:-3]),
        ("company key, meeting-type record", company_key("acme").encode(), mt_value),
        ("meeting-type key, company record", meeting_type_key("acme", "mt-1").encode(), company_value),
        ("company id differs from the key", company_key("globex").encode(), company_value),
        ("meeting type id differs from the key", meeting_type_key("acme", "mt-9").encode(), mt_value),
        ("invalid time zone", company_key("acme").encode(), bad_tz),
    ]


@pytest.mark.parametrize("name, key, value", _malformed(), ids=[m[0] for m in _malformed()])
def test_a_malformed_record_is_counted_and_never_changes_the_table(topic: FakeTopic, name: str, key: bytes | None, value: bytes | None) -> None:
    topic.append(*company_msg(ACME))
    topic.append(*meeting_type_msg(MT1))
    topic.append(key, value)
    changes: list[str] = []
    s = make_store(topic)
    s.add_listener(changes.append)
    s.load_once(timeout=0.01)
    assert s.rejected == 1
    assert s.company("acme") == ACME
    assert s.company("globex") is None
    assert s.meeting_type("acme", "mt-1") == MT1
    assert s.meeting_types("acme") == [MT1]
    assert changes == ["acme", "acme"]  # only the two good records


def test_malformed_records_do_not_stop_the_reader_or_readiness(topic: FakeTopic, store: SettingsStore) -> None:
    topic.append(None, b"x")
    topic.append(*company_msg(ACME))
    topic.append(b"company/acme", b"\x07garbage")
    topic.append(*company_msg(GLOBEX))
    store.start()
    assert store.wait_ready(WAIT)
    assert store.rejected == 2
    assert store.company("acme") == ACME
    assert store.company("globex") == GLOBEX
    topic.append(b"nonsense", None)
    topic.append(*meeting_type_msg(MT1))
    assert eventually(lambda: store.meeting_type("acme", "mt-1") == MT1)
    assert store.rejected == 3
    assert topic.readers == 1


# ---- listeners ---------------------------------------------------------------------------------


def test_listeners_are_called_with_the_company_id_of_every_change(topic: FakeTopic, store: SettingsStore) -> None:
    seen: list[str] = []
    others: list[str] = []
    store.add_listener(seen.append)
    store.add_listener(others.append)
    topic.append(*company_msg(ACME))
    topic.append(*meeting_type_msg(MT_GLOBEX))
    store.start()
    assert store.wait_ready(WAIT)
    assert seen == ["acme", "globex"]
    topic.append(meeting_type_key("globex", "mt-1").encode(), None)  # a tombstone: refused, no change
    topic.append(b"bad key", None)  # not a change
    topic.append(*company_msg(GLOBEX))
    assert eventually(lambda: len(seen) == 3)
    assert seen == ["acme", "globex", "globex"]
    assert others == seen
    assert store.meeting_type("globex", "mt-1") == MT_GLOBEX


def test_a_listener_sees_the_new_value_already_applied(topic: FakeTopic) -> None:
    s = make_store(topic)
    observed: list[CompanySettings | None] = []
    s.add_listener(lambda company_id: observed.append(s.company(company_id)))
    topic.append(*company_msg(ACME))
    topic.append(*company_msg(GLOBEX))
    topic.append(*company_msg(replace(ACME, paused=True)))
    s.load_once(timeout=0.01)
    assert observed == [ACME, GLOBEX, replace(ACME, paused=True)]


# ---- a restarted reader ----------------------------------------------------------------------------


def test_a_restarted_reader_rebuilds_beside_the_live_table_and_swaps_once_caught_up(topic: FakeTopic) -> None:
    """The replay passes the older version first: the live table must not show it meanwhile."""
    paused = replace(ACME, paused=True, updated_at=5)
    topic.append(*company_msg(ACME))
    topic.append(*company_msg(paused))
    seen: list[str] = []
    s = make_store(topic)
    s.add_listener(seen.append)
    s.start()
    try:
        assert s.wait_ready(WAIT)
        assert s.company("acme") == paused
        topic.hold_at = 1  # the rebuild will stop after the older version
        topic.fail_follow = 1
        assert topic.held.wait(10.0)  # restarted (after its backoff), and read the older version
        for _ in range(20):  # the rebuild has read the older version and waits: the live table answers
            assert s.ready
            assert s.company("acme") == paused
        topic.append(*company_msg(GLOBEX))
        topic.release()
        assert eventually(lambda: s.company("globex") == GLOBEX)
        assert s.company("acme") == paused
        assert seen[-1] == "globex"  # the swap reports what changed, nothing else
        assert seen.count("acme") == 2
    finally:
        s.stop()


# ---- only audited next versions ----------------------------------------------------------------


PAUSED = replace(ACME, paused=True)


def versioned(doc: CompanySettings, version: int, audit_id: str | None) -> tuple[bytes, bytes]:
    record = {**company_to_record(doc), "version": version, "audit_id": audit_id}
    return company_key(doc.company_id).encode(), CODEC.encode("CompanySettings", record)


def audit_entry(audit_id: str, version: int, key: str = "company/acme") -> tuple[bytes, bytes]:
    return b"acme", AuditRecord(1, "User:admin", "acme", key, {"paused": {"old": False, "new": True}}, id=audit_id, version=version).to_json()


@pytest.fixture
def audit() -> FakeTopic:
    return FakeTopic()


def test_a_versioned_record_is_applied_with_its_audit_entry_and_its_stamp_kept(topic: FakeTopic, audit: FakeTopic) -> None:
    audit.append(*audit_entry("a-1", 1))
    topic.append(*versioned(ACME, 1, "a-1"))
    s = make_store(topic, audit)
    s.load_once(timeout=0.01)
    assert s.company("acme") == ACME
    assert s.stamp("company/acme") == Stamp(1, "a-1")
    assert s.wait_decision(0, 0, 0) == Decision(None, "applied")
    assert s.rejected == 0


@pytest.mark.parametrize(
    "name, record, entries, reason",
    [
        ("no audit entry", versioned(PAUSED, 2, "a-2"), [], Refusal.AUDIT_MISSING),
        ("no audit id", versioned(PAUSED, 2, None), [], Refusal.AUDIT_MISSING),
        ("entry for another version", versioned(PAUSED, 2, "a-2"), [("a-2", 1)], Refusal.AUDIT_MISMATCH),
        ("entry for another document", versioned(PAUSED, 2, "a-2"), [("a-2", 2, "company/globex")], Refusal.AUDIT_MISMATCH),
        ("a replay", versioned(ACME, 1, "a-1"), [], Refusal.VERSION_REPEATED),
        ("a skipped version", versioned(PAUSED, 3, "a-3"), [("a-3", 3)], Refusal.VERSION_SKIPPED),
        ("old format after versions", company_msg(PAUSED), [], Refusal.UNVERSIONED),
        ("a tombstone", (company_key("acme").encode(), None), [], Refusal.TOMBSTONE),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_record_that_is_not_the_audited_next_version_is_refused_and_the_document_kept(
    topic: FakeTopic, audit: FakeTopic, name: str, record: tuple[bytes, bytes | None], entries: list[tuple[Any, ...]], reason: Refusal
) -> None:
    audit.append(*audit_entry("a-1", 1))
    topic.append(*versioned(ACME, 1, "a-1"))
    s = make_store(topic, audit)
    s.start()
    try:
        assert s.wait_ready(WAIT)
        for found in entries:
            audit.append(*audit_entry(*found))
        topic.append(*record)
        decision = s.wait_decision(0, 1, WAIT)
        assert decision is not None and decision.refusal is reason and "company/acme" in decision.detail
        assert s.company("acme") == ACME and s.stamp("company/acme") == Stamp(1, "a-1")
        assert s.rejected == 1 and s.ready
    finally:
        s.stop()


def test_old_format_records_are_a_baseline_that_the_first_version_follows(topic: FakeTopic, audit: FakeTopic) -> None:
    topic.append(*company_msg(ACME))
    topic.append(*company_msg(replace(ACME, paused=True)))  # still no version: the baseline moves
    audit.append(*audit_entry("a-1", 1))
    topic.append(*versioned(replace(ACME, paused=False, timezone="Europe/Paris"), 1, "a-1"))
    s = make_store(topic, audit)
    s.load_once(timeout=0.01)
    assert s.company("acme") == replace(ACME, timezone="Europe/Paris")
    assert s.rejected == 0


def test_a_record_whose_entry_comes_later_waits_for_it_and_records_after_it_wait_too(topic: FakeTopic, audit: FakeTopic) -> None:
    """Audit and settings are different topics: the reader may see the record first."""
    s = make_store(topic, audit)
    s.start()
    try:
        assert s.wait_ready(WAIT)
        audit.hold_at = 0  # the entry is not readable yet
        topic.append(*versioned(ACME, 1, "a-1"))
        topic.append(*company_msg(GLOBEX))
        audit.append(*audit_entry("a-1", 1))
        assert audit.held.wait(WAIT)
        assert s.wait_decision(0, 0, SHORT) is None and s.company("acme") is None
        assert s.company("globex") is None  # behind it, in the topic's order
        audit.release()
        assert s.wait_decision(0, 1, WAIT) == Decision(None, "applied")
        assert s.company("acme") == ACME and s.company("globex") == GLOBEX
    finally:
        s.stop()


def test_a_followed_record_without_an_entry_is_refused_once_the_audit_was_read_past_it(topic: FakeTopic, audit: FakeTopic) -> None:
    audit.append(*audit_entry("a-1", 1))
    topic.append(*versioned(ACME, 1, "a-1"))
    s = make_store(topic, audit)
    s.start()
    try:
        assert s.wait_ready(WAIT)
        topic.append(*versioned(replace(ACME, paused=True), 2, "forged"))  # a console producer's record
        decision = s.wait_decision(0, 1, WAIT)
        assert decision is not None and decision.refusal is Refusal.AUDIT_MISSING
        assert s.company("acme") == ACME and s.ready
    finally:
        s.stop()


def test_a_reader_failing_before_ready_starts_its_table_again_not_on_top_of_the_half_read_one(topic: FakeTopic, audit: FakeTopic) -> None:
    audit.append(*audit_entry("a-1", 1))
    audit.append(*audit_entry("a-2", 2))
    topic.append(*versioned(ACME, 1, "a-1"))
    topic.append(*versioned(PAUSED, 2, "a-2"))
    topic.fail_read = 1  # fails once it has fed both records, before ready
    s = make_store(topic, audit)
    s.start()
    try:
        assert s.wait_ready(10.0)  # after the restart's backoff
        assert topic.readers == 2
        assert s.company("acme") == PAUSED and s.rejected == 0  # the replay is no repeated version
    finally:
        s.stop()


def test_the_next_version_follows_the_applied_one_and_any_the_audit_vouches_for(topic: FakeTopic, audit: FakeTopic) -> None:
    audit.append(*audit_entry("a-1", 1))
    topic.append(*versioned(ACME, 1, "a-1"))
    s = make_store(topic, audit)
    s.load_once(timeout=0.01)
    assert s.next_version("company/acme") == 2
    assert s.next_version("company/globex") == 1
    # Version 1 replayed after version 2: compaction kept only the replay; version 2's entry is left.
    gone = FakeTopic()
    gone.append(*versioned(ACME, 1, "a-1"))
    audit.append(*audit_entry("a-2", 2))
    s = make_store(gone, audit)
    s.load_once(timeout=0.01)
    assert s.company("acme") is None  # version 1 is superseded by the audited version 2
    assert s.next_version("company/acme") == 3
