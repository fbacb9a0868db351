"""settings_file.py: the settings-as-code format read back exactly as written, its refusals with
the line they are on, and the plan of what applying it changes."""

from __future__ import annotations

import dataclasses

import pytest

from processors.domain.model import CompanySettings, Crm, EventToggles, EventType, FieldMapping, MeetingTypeSettings
from processors.ops.settings_file import SettingsFileError, export, parse, plan

ACME = CompanySettings("acme", salesforce_connected=True, salesforce_company_todo=EventToggles(meeting_booked=True),
                       timezone="Europe/Paris", contact_recheck_seconds=(1200, 3600))
INTRO = MeetingTypeSettings("acme", "intro", meeting_type_name="Intro (30分)", salesforce_todo=EventToggles(True, True, False, False),
                            hubspot_meeting_title="Intro with {booker_name}", hubspot_meeting_body="line 1\nline 2",
                            field_mappings=(FieldMapping(Crm.SALESFORCE, EventType.MEETING_BOOKED, "Type", "meeting_type_name"),))
GLOBEX = CompanySettings("globex", hubspot_connected=True, paused=True)


def text(*companies: CompanySettings) -> str:
    mts = {"acme": [INTRO]}
    return export(companies, lambda c: mts.get(c, []), lambda key: 7)


def test_export_then_parse_gives_the_same_documents_and_versions() -> None:
    desired = parse(text(ACME, GLOBEX))
    assert desired.docs == [ACME, INTRO, GLOBEX]
    assert set(desired.versions.values()) == {7}


def test_the_format_is_stable_sorted_and_carries_no_timestamps() -> None:
    stamped = dataclasses.replace(ACME, updated_at=123, updated_by="alice")
    assert text(GLOBEX, stamped) == text(ACME, GLOBEX)
    assert "updated" not in text(ACME) and text(ACME).index("acme:") < text(ACME, GLOBEX).index("globex:")


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda t: t.replace("    paused: false", "    paused: false\n    colour: red"), r"line \d+: unknown key 'colour' in company acme"),
        (lambda t: t.replace("        salesforce_subject: null", "        salesforce_subjekt: null"), r"line \d+: unknown key 'salesforce_subjekt' in meeting type acme/intro"),
        (lambda t: t.replace("paused: false", "paused: maybe"), r"line \d+: paused must be true or false"),
        (lambda t: t.replace("timezone: Europe/Paris", "timezone: Mars/Olympus"), r"line \d+: unknown time zone"),
        (lambda t: t.replace("- meeting_booked\n    contact", "- meeting_broken\n    contact"), r"line \d+: salesforce_company_todo must be a list of event types"),
        (lambda t: t.replace("crm-sync-settings: 1", "crm-sync-settings: 2"), "not a crm-sync settings file of format 1"),
        (lambda t: t.replace("  acme:\n    version: 7", "  acme:\n    version: -1"), r"line \d+: version must be a whole number"),
        (lambda t: "", "the file is empty"),
        (lambda t: "companies: [", "not YAML"),
    ],
)
def test_a_bad_file_is_refused_with_the_line(edit: object, error: str) -> None:
    with pytest.raises(SettingsFileError, match=error):
        parse(edit(text(ACME)))  # type: ignore[operator]


def test_the_line_named_is_the_line_of_the_bad_key() -> None:
    bad = text(ACME).replace("    paused: false", "    paused: false\n    colour: red")
    with pytest.raises(SettingsFileError) as refused:
        parse(bad)
    line = int(str(refused.value).split(":")[0].removeprefix("line "))
    assert bad.splitlines()[line - 1].strip() == "colour: red"


def test_the_plan_writes_only_what_differs_and_says_what() -> None:
    current = {("acme", None): ACME, ("acme", "intro"): INTRO}

    def now(doc: object) -> object:
        key = (doc.company_id, getattr(doc, "meeting_type_id", None))  # type: ignore[attr-defined]
        return current.get(key)

    same = parse(text(ACME))
    assert plan(same, now) == ([], [])  # type: ignore[arg-type]
    edited = parse(text(ACME, GLOBEX).replace("    paused: false\n    timezone: Europe/Paris", "    paused: true\n    timezone: Europe/Paris"))
    write, changes = plan(edited, now)  # type: ignore[arg-type]
    assert [d.company_id for d in write] == ["acme", "globex"]
    assert changes[0].line() == "company/acme: paused: false → true" and changes[1].new
