"""`crm-sync` as an admin runs it: a subprocess against a real broker, judged by exit code and output."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from processors.ops.cli import build_parser
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration

ALL_EVENTS = ["meeting_booked", "research_completed", "pre_meeting_survey_answered", "pre_exit_survey_answered"]


class Cli:
    """Runs `python -m processors.ops.cli` with its own settings and dead-letter topics."""

    def __init__(self, bootstrap: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_SYNC_")}
        self.env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            CRM_SYNC_TOPIC_SETTINGS=f"cli.settings.{suffix}",
            CRM_SYNC_TOPIC_DEAD_LETTER=f"cli.dlq.{suffix}",
            CRM_SYNC_TOPIC_PARTITIONS="1",
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "processors.ops.cli", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"{args}: exit {done.returncode}, stderr: {done.stderr}"
        assert done.stderr == ""
        return done.stdout

    def fails(self, *args: str) -> str:
        """The one-line reason of a failing command."""
        done = self.run(*args)
        assert done.returncode != 0, f"{args} succeeded: {done.stdout}"
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("crm-sync: error: "), done.stderr
        return lines[0]

    def show(self, company: str) -> dict[str, Any]:
        return json.loads(self.ok("settings", "show", "--company", company, "--json"))


@pytest.fixture
def cli(kafka_bootstrap: str) -> Cli:
    return Cli(kafka_bootstrap)


def toggles(*on: str) -> dict[str, bool]:
    return {e: e in on for e in ALL_EVENTS}


def meeting_types(shown: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mt["meeting_type_id"]: mt for mt in shown["meeting_types"]}


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand the parser knows, so a new one cannot miss its --help check."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, prefix + (name,))
    return paths


def test_help_on_every_command_exits_zero(cli: Cli) -> None:
    paths = command_paths(build_parser())
    assert ("settings", "apply") in paths and ("dlq", "retry") in paths and ("worker",) in paths
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda path: cli.run(*path, "--help"), paths))
    for path, done in zip(paths, results):
        assert done.returncode == 0, (path, done.stderr)
        assert done.stdout.startswith(f"usage: {' '.join(('crm-sync',) + path)}"), (path, done.stdout[:200])
        assert done.stderr == ""


def test_every_settings_change_can_answer_in_json_with_the_documents_it_wrote(cli: Cli) -> None:
    company = f"acme-{uuid.uuid4().hex[:6]}"
    connected = json.loads(cli.ok("settings", "connect", "--company", company, "--crm", "salesforce", "--json"))
    assert connected["command"] == "connect" and connected["documents"][0]["salesforce_connected"] is True
    toggled = json.loads(cli.ok("settings", "set", "--company", company, "--meeting-type", "intro", "--crm", "hubspot",
                                "--event", "meeting_booked", "--on", "--json"))
    [doc] = toggled["documents"]
    assert (doc["meeting_type_id"], doc["hubspot_sync"]["meeting_booked"]) == ("intro", True)
    paused = json.loads(cli.ok("settings", "pause", "--company", company, "--json"))
    assert paused["documents"][0]["paused"] is True
    assert cli.ok("settings", "resume", "--company", company) == f"{company}: resumed\n"


def test_version_prints_the_installed_package_version(cli: Cli) -> None:
    from importlib import metadata

    done = cli.run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"crm-sync {metadata.version('crm-sync')}\n", "")


def test_every_settings_command_changes_what_show_prints(cli: Cli) -> None:
    company = f"acme-{uuid.uuid4().hex[:6]}"
    c = ("--company", company)

    assert cli.ok("settings", "connect", *c, "--crm", "salesforce") == f"{company}: salesforce connected\n"
    shown = cli.show(company)
    assert shown["company"] | {"updated_at": 0} == {
        "company_id": company, "salesforce_connected": True, "hubspot_connected": False,
        "salesforce_company_todo": toggles(), "paused": False, "timezone": "Asia/Tokyo",
        "contact_recheck_seconds": [], "updated_at": 0, "updated_by": getpass.getuser(),  # no SASL principal, no --actor: the OS user
    }
    assert shown["meeting_types"] == []

    cli.ok("settings", "connect", *c, "--crm", "hubspot")
    assert cli.ok("settings", "company-todo", *c, "--event", "research_completed", "--on") == (
        f"{company}: company-level Salesforce ToDo for research_completed on\n"
    )
    assert cli.ok("settings", "timezone", *c, "--tz", "America/New_York") == f"{company}: timezone America/New_York\n"
    shown = cli.show(company)["company"]
    assert (shown["hubspot_connected"], shown["timezone"]) == (True, "America/New_York")
    assert shown["salesforce_company_todo"] == toggles("research_completed")

    assert cli.ok("settings", "set", *c, "--meeting-type", "intro", "--crm", "salesforce", "--event", "meeting_booked", "--on") == (
        f"{company}/intro: salesforce meeting_booked on\n"
    )
    cli.ok("settings", "set", *c, "--meeting-type", "intro", "--crm", "salesforce", "--event", "pre_exit_survey_answered", "--on")
    cli.ok("settings", "set", *c, "--meeting-type", "intro", "--crm", "hubspot", "--event", "research_completed", "--on")
    cli.ok("settings", "set", *c, "--meeting-type", "demo", "--crm", "salesforce", "--event", "pre_meeting_survey_answered", "--on")
    assert cli.ok(
        "settings", "content", *c, "--meeting-type", "intro", "--name", "Intro call",
        "--salesforce-subject", "{booker_name}様 面談予約", "--salesforce-comment", "URL: {meeting_url}",
        "--hubspot-title", "Intro with {booker_name}", "--hubspot-body", "Agenda",
    ) == f"{company}/intro: texts updated\n"
    intro = meeting_types(cli.show(company))["intro"]
    assert intro["salesforce_todo"] == toggles("meeting_booked", "pre_exit_survey_answered")
    assert intro["hubspot_sync"] == toggles("research_completed")
    assert (intro["meeting_type_name"], intro["salesforce_subject"], intro["salesforce_comment"]) == (
        "Intro call", "{booker_name}様 面談予約", "URL: {meeting_url}"
    )
    assert (intro["hubspot_meeting_title"], intro["hubspot_meeting_body"]) == ("Intro with {booker_name}", "Agenda")

    # apply: selected event types of one CRM only; the target's other settings stay
    assert cli.ok(
        "settings", "apply", *c, "--from", "intro", "--to", "demo,new-one", "--crm", "salesforce", "--event", "meeting_booked"
    ) == f"{company}: applied salesforce meeting_booked from intro to demo, new-one\n"
    mts = meeting_types(cli.show(company))
    assert mts["demo"]["salesforce_todo"] == toggles("meeting_booked", "pre_meeting_survey_answered")
    assert mts["new-one"]["salesforce_todo"] == toggles("meeting_booked")
    assert mts["demo"]["hubspot_sync"] == mts["new-one"]["hubspot_sync"] == toggles()
    assert mts["demo"]["salesforce_subject"] == "{booker_name}様 面談予約"
    assert mts["demo"]["hubspot_meeting_title"] is None
    cli.ok("settings", "apply", *c, "--from", "intro", "--to", "demo", "--crm", "hubspot",
           "--event", "research_completed,pre_exit_survey_answered")
    demo = meeting_types(cli.show(company))["demo"]
    assert demo["hubspot_sync"] == toggles("research_completed")  # pre_exit copied as off
    assert demo["salesforce_todo"] == toggles("meeting_booked", "pre_meeting_survey_answered")

    assert cli.ok("settings", "pause", *c) == f"{company}: paused\n"
    assert cli.show(company)["company"]["paused"] is True
    assert cli.ok("settings", "resume", *c) == f"{company}: resumed\n"
    assert cli.show(company)["company"]["paused"] is False

    text = cli.ok("settings", "show", *c)
    assert text.splitlines() == [
        f"company {company}  timezone=America/New_York  paused=False",
        "  salesforce connected=True  hubspot connected=True",
        "  company-level Salesforce ToDo: research_completed",
        "meeting type demo",
        "  salesforce: meeting_booked, pre_meeting_survey_answered",
        "  hubspot: research_completed",
        "meeting type intro (Intro call)",
        "  salesforce: meeting_booked, pre_exit_survey_answered",
        "  hubspot: research_completed",
        "meeting type new-one",
        "  salesforce: meeting_booked",
        "  hubspot: off",
    ]


def test_disconnect_keeps_meeting_type_settings_and_reconnect_resumes_them(cli: Cli) -> None:
    company = f"keep-{uuid.uuid4().hex[:6]}"
    c = ("--company", company)
    cli.ok("settings", "connect", *c, "--crm", "salesforce")
    cli.ok("settings", "connect", *c, "--crm", "hubspot")
    cli.ok("settings", "set", *c, "--meeting-type", "intro", "--crm", "salesforce", "--event", "meeting_booked", "--on")
    cli.ok("settings", "set", *c, "--meeting-type", "intro", "--crm", "hubspot", "--event", "meeting_booked", "--on")
    before = meeting_types(cli.show(company))

    assert cli.ok("settings", "disconnect", *c, "--crm", "salesforce") == f"{company}: salesforce disconnected\n"
    shown = cli.show(company)
    assert (shown["company"]["salesforce_connected"], shown["company"]["hubspot_connected"]) == (False, True)
    assert meeting_types(shown) == before

    cli.ok("settings", "connect", *c, "--crm", "salesforce")
    shown = cli.show(company)
    assert shown["company"]["salesforce_connected"] is True
    assert meeting_types(shown) == before


def test_errors_exit_non_zero_with_one_line(cli: Cli) -> None:
    company = f"err-{uuid.uuid4().hex[:6]}"
    c = ("--company", company)
    assert "unknown company" in cli.fails("settings", "pause", *c)
    assert "unknown company" in cli.fails("settings", "show", *c)
    assert "unknown company" in cli.fails("settings", "disconnect", *c, "--crm", "hubspot")
    cli.ok("settings", "connect", *c, "--crm", "salesforce")
    assert "unknown meeting type: nope" in cli.fails(
        "settings", "apply", *c, "--from", "nope", "--to", "a", "--crm", "salesforce", "--event", "meeting_booked"
    )
    assert "--event" in cli.fails("settings", "set", *c, "--meeting-type", "m", "--crm", "salesforce", "--event", "booked", "--on")
    assert "--event" in cli.fails("settings", "company-todo", *c, "--event", "meeting_booked,research_completed", "--on")
    assert "--crm" in cli.fails("settings", "connect", *c, "--crm", "pipedrive")
    assert "--on" in cli.fails("settings", "set", *c, "--meeting-type", "m", "--crm", "hubspot", "--event", "meeting_booked")
    assert "time zone" in cli.fails("settings", "timezone", *c, "--tz", "Tokyo")
    assert "nothing to change" in cli.fails("settings", "content", *c, "--meeting-type", "m")
    assert "meeting type id must not be empty" in cli.fails(
        "settings", "set", *c, "--meeting-type", " ", "--crm", "hubspot", "--event", "meeting_booked", "--on"
    )
    assert "required" in cli.fails("settings")
    assert "invalid choice" in cli.fails("settings", "frobnicate")
    # nothing above changed the company
    assert cli.show(company)["meeting_types"] == []


def test_apply_changes_all_targets_or_none(cli: Cli) -> None:
    company = f"atomic-{uuid.uuid4().hex[:6]}"
    c = ("--company", company)
    cli.ok("settings", "connect", *c, "--crm", "salesforce")
    cli.ok("settings", "set", *c, "--meeting-type", "src", "--crm", "salesforce", "--event", "meeting_booked", "--on")
    cli.ok("settings", "set", *c, "--meeting-type", "t1", "--crm", "salesforce", "--event", "research_completed", "--on")
    before = cli.show(company)

    apply = ("settings", "apply", *c, "--from", "src", "--crm", "salesforce", "--event", "meeting_booked")
    assert "cannot be its own target" in cli.fails(*apply, "--to", "t1,t2,src")
    assert "too long" in cli.fails(*apply, "--to", "t1,t2," + "x" * 300)
    after = cli.show(company)
    assert after == before  # neither t1 changed nor t2 created
    assert meeting_types(after)["t1"]["salesforce_todo"] == toggles("research_completed")

    cli.ok(*apply, "--to", "t1,t2")
    mts = meeting_types(cli.show(company))
    assert mts["t1"]["salesforce_todo"] == toggles("meeting_booked", "research_completed")
    assert mts["t2"]["salesforce_todo"] == toggles("meeting_booked")


def test_map_unmap_recheck_and_apply_copies_mappings(cli: Cli) -> None:
    cli.ok("settings", "connect", "--company", "m", "--crm", "salesforce")
    target = ("--company", "m", "--meeting-type", "src", "--crm", "salesforce", "--event", "meeting_booked")
    assert "Phone__c ← booker.phone" in cli.ok("settings", "map", *target, "--field", "Phone__c", "--from", "booker.phone")
    cli.ok("settings", "map", *target, "--field", "Day__c", "--from", "start_at:date")
    cli.ok("settings", "map", *target, "--field", "phone__c", "--from", "host.phone")  # same field: replaced
    cli.ok("settings", "map", *target, "--field", "Subject", "--from", "booker.name", "--allow-core", "--actor", "mapper")
    # (every refusal is a unit-test table in tests/unit/test_mapping.py; one here for the exit path)
    assert "private attributes cannot be mapped" in cli.fails("settings", "map", *target, "--field", "C__c", "--from", "__class__")
    [src] = cli.show("m")["meeting_types"]
    assert src["field_mappings"] == [
        {"crm": "salesforce", "event_type": "meeting_booked", "crm_field": "phone__c", "source": "host.phone", "allow_core": False},
        {"crm": "salesforce", "event_type": "meeting_booked", "crm_field": "Day__c", "source": "start_at:date", "allow_core": False},
        {"crm": "salesforce", "event_type": "meeting_booked", "crm_field": "Subject", "source": "booker.name", "allow_core": True},
    ]
    cli.ok("settings", "unmap", *target, "--field", "Subject")
    audits = [json.loads(line) for line in cli.ok("settings", "log", "--company", "m", "--json").splitlines()]
    allowed = [a for a in audits if a["actor"] == "mapper"]
    assert len(allowed) == 1 and allowed[0]["changes"]["field_mappings"]["new"][-1]["allow_core"] is True
    assert "no mapping to salesforce field 'Subject'" in cli.fails("settings", "unmap", *target, "--field", "Subject")
    cli.ok("settings", "apply", "--company", "m", "--from", "src", "--to", "dst", "--crm", "salesforce", "--event", "meeting_booked")
    shown = cli.show("m")
    mts = meeting_types(shown)
    assert mts["dst"]["field_mappings"] == mts["src"]["field_mappings"] and len(mts["dst"]["field_mappings"]) == 2

    assert shown["company"]["contact_recheck_seconds"] == []  # off by default
    assert "after 1200s,3600s" in cli.ok("settings", "recheck", "--company", "m", "--after", "20m,1h")
    assert cli.show("m")["company"]["contact_recheck_seconds"] == [1200, 3600]
    assert "rising" in cli.fails("settings", "recheck", "--company", "m", "--after", "60m,20m")
    assert "off" in cli.ok("settings", "recheck", "--company", "m", "--off")
    assert cli.show("m")["company"]["contact_recheck_seconds"] == []


def test_bad_settings_records_are_reported_once_as_a_count_with_the_command_that_lists_them(cli: Cli, kafka_bootstrap: str) -> None:
    from confluent_kafka import Producer

    company = f"noisy-{uuid.uuid4().hex[:6]}"
    c = ("--company", company)
    cli.ok("settings", "connect", *c, "--crm", "salesforce")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n in range(3):
        producer.produce(cli.env["CRM_SYNC_TOPIC_SETTINGS"], key=f"company/bad-{n}".encode(), value=b"not a settings record")
    assert producer.flush(30) == 0

    done = cli.run("settings", "show", *c, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["company"]["company_id"] == company
    assert done.stderr.splitlines() == [
        "crm-sync: note: 3 settings records were refused and ignored; list them with `crm-sync dlq list --error-class SettingsError`"
    ]
    # A change reads the settings more than once (compare-and-set): still one line, the same count.
    changed = cli.run("settings", "pause", *c)
    assert changed.returncode == 0 and len(changed.stderr.splitlines()) == 1 and "3 settings records" in changed.stderr, changed.stderr
    # An error stays the one line scripts read.
    assert "unknown company" in cli.fails("settings", "show", "--company", f"{company}-missing")
