"""render.py: Salesforce Task fields (SPEC §5), HubSpot meetings/notes (§6), dates, truncation, HTML, templates."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from processors.domain import render
from processors.domain.model import (
    QA,
    EventType,
    MeetingBooked,
    MeetingTypeSettings,
    Person,
    ResearchCompleted,
    SurveyAnswered,
)
from processors.domain.render import (
    DEFAULT_SUBJECTS,
    DESCRIPTION_LIMIT,
    NOTE_BODY_LIMIT,
    SUBJECT_LIMIT,
    TRUNCATION_MARKER,
)


def ms(text: str) -> int:
    """ISO-8601 UTC ('2026-11-23T16:30Z') → epoch millis."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp() * 1000)


# 2026-11-23T16:30Z is 2026-11-24 01:30 in Asia/Tokyo: the UTC and local dates differ.
T = ms("2026-11-23T16:30:00Z")
HOST = Person("host@example.com", "Hana Host", "Booking Inc", "+81-3-0000-0000")
BOOKER = Person("lead@example.org", "Lee Lead", "Lead Co", "+81-90-1111-2222")
FORM = (QA("Team size?", "12"), QA("Budget?", "未定"))
ANSWERS = (QA("What to discuss?", "Pricing"), QA("Attendees?", "3"))
SCRIPT = "<script>alert('x')&\"</script>"
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&amp;&quot;&lt;/script&gt;"


def meeting(**kw) -> MeetingBooked:
    base = dict(
        event_id="evt-m", occurred_at=T - 3_600_000, company_id="acme", meeting_type_id="mt-1", meeting_id="m-1",
        meeting_type_name="製品デモ", host=HOST, booker=BOOKER, start_at=T, end_at=T + 3_600_000,
        timezone="Asia/Tokyo", meeting_url="https://meet.example.com/abc", form_answers=FORM,
    )
    base.update(kw)
    return MeetingBooked(**base)


def research(**kw) -> ResearchCompleted:
    base = dict(
        event_id="evt-r", occurred_at=T, company_id="acme", meeting_type_id="mt-1", research_kind="COMPANY",
        target=BOOKER, result="Lead Co is a 40-person SaaS vendor.", form_answers=FORM,
    )
    base.update(kw)
    return ResearchCompleted(**base)


def survey(kind: str = "PRE_MEETING", **kw) -> SurveyAnswered:
    base = dict(
        event_id="evt-s", occurred_at=T, company_id="acme", meeting_type_id="mt-1", survey_kind=kind,
        respondent=BOOKER, host=HOST if kind == "PRE_MEETING" else None,
        meeting_start_at=ms("2026-11-30T15:30:00Z") if kind == "PRE_MEETING" else None,
        timezone="Asia/Tokyo" if kind == "PRE_MEETING" else None, answers=ANSWERS,
    )
    base.update(kw)
    return SurveyAnswered(**base)


def mt(**kw) -> MeetingTypeSettings:
    return MeetingTypeSettings(company_id="acme", meeting_type_id="mt-1", **kw)


ALL_EVENTS = {
    EventType.MEETING_BOOKED: meeting,
    EventType.RESEARCH_COMPLETED: research,
    EventType.PRE_MEETING_SURVEY_ANSWERED: lambda **kw: survey("PRE_MEETING", **kw),
    EventType.PRE_EXIT_SURVEY_ANSWERED: lambda **kw: survey("PRE_EXIT", **kw),
}


# ---- Subject defaults (SPEC §5) ---------------------------------------------------------------

EXPECTED_SUBJECTS = [
    (EventType.MEETING_BOOKED, "面談予約のお知らせ"),
    (EventType.RESEARCH_COMPLETED, "リサーチ結果のお知らせ"),
    (EventType.PRE_MEETING_SURVEY_ANSWERED, "面談前アンケート回答のお知らせ"),
    (EventType.PRE_EXIT_SURVEY_ANSWERED, "離脱前アンケート回答のお知らせ"),
]


@pytest.mark.parametrize("event_type,subject", EXPECTED_SUBJECTS)
@pytest.mark.parametrize("settings", [None, mt()], ids=["company-level", "meeting-type-without-custom"])
def test_default_subject_per_event_type(event_type, subject, settings):
    assert DEFAULT_SUBJECTS[event_type] == subject
    assert render.salesforce_task(ALL_EVENTS[event_type](), "Asia/Tokyo", settings)["Subject"] == subject


@pytest.mark.parametrize(
    "event_type", [EventType.RESEARCH_COMPLETED, EventType.PRE_MEETING_SURVEY_ANSWERED, EventType.PRE_EXIT_SURVEY_ANSWERED]
)
def test_custom_subject_and_comment_apply_to_meeting_booked_only(event_type):
    settings = mt(salesforce_subject="Custom {booker_name}", salesforce_comment="Comment")
    fields = render.salesforce_task(ALL_EVENTS[event_type](), "Asia/Tokyo", settings)
    assert fields["Subject"] == DEFAULT_SUBJECTS[event_type]
    assert fields["Description"] == render.event_text(ALL_EVENTS[event_type]())


def test_meeting_booked_subject_and_comment_from_meeting_type_settings():
    settings = mt(
        salesforce_subject="【{meeting_type_name}】{booker_name} 様 ({booker_company})",
        salesforce_comment="担当: {host_name}\n{start}–{end} {timezone}\n{meeting_url}\n{unknown}",
    )
    fields = render.salesforce_task(meeting(), "UTC", settings)
    assert fields["Subject"] == "【製品デモ】Lee Lead 様 (Lead Co)"
    # start/end are in the meeting's time zone, not the company's
    assert fields["Description"] == (
        "担当: Hana Host\n2026-11-24 01:30–2026-11-24 02:30 Asia/Tokyo\nhttps://meet.example.com/abc\n{unknown}"
    )


def test_company_level_todo_ignores_meeting_type_custom_texts():
    # mt=None is what the planner passes for the company-level ToDo
    fields = render.salesforce_task(meeting(), "Asia/Tokyo", None)
    assert fields["Subject"] == "面談予約のお知らせ"
    assert fields["Description"] == render.meeting_text(meeting())


def test_empty_custom_subject_falls_back_to_default():
    fields = render.salesforce_task(meeting(), "Asia/Tokyo", mt(salesforce_subject="", salesforce_comment=""))
    assert fields["Subject"] == "面談予約のお知らせ"
    assert fields["Description"] == render.meeting_text(meeting())


# ---- Description contents (SPEC §5) -----------------------------------------------------------


def test_meeting_description_default_contents():
    text = render.salesforce_task(meeting(), "UTC", mt())["Description"]
    for part in [
        "製品デモ",  # meeting type
        "2026-11-24 01:30–02:30 (Asia/Tokyo)",  # start–end in the meeting's time zone
        "URL: https://meet.example.com/abc",
        "Hana Host",
        "Lee Lead", "Lead Co", "lead@example.org", "+81-90-1111-2222",  # booker
        "Q. Team size?", "A. 12", "Q. Budget?", "A. 未定",  # form answers
    ]:
        assert part in text, part


def test_meeting_description_range_spanning_midnight_shows_end_date():
    event = meeting(start_at=ms("2026-11-23T14:30:00Z"), end_at=ms("2026-11-23T15:30:00Z"))
    assert "2026-11-23 23:30–2026-11-24 00:30 (Asia/Tokyo)" in render.meeting_text(event)


def test_meeting_description_without_optional_parts():
    event = meeting(meeting_url=None, form_answers=(), booker=Person("lead@example.org", "Lee Lead"))
    text = render.meeting_text(event)
    assert "URL" not in text and "フォーム回答" not in text and "会社名" not in text and "電話番号" not in text
    assert "Lee Lead" in text and "lead@example.org" in text


@pytest.mark.parametrize("kind,label", [("COMPANY", "企業リサーチ"), ("CUSTOMER", "顧客リサーチ")])
def test_research_description_has_form_inputs_and_result(kind, label):
    text = render.salesforce_task(research(research_kind=kind), "Asia/Tokyo", mt())["Description"]
    for part in [label, "Lee Lead", "Lead Co", "lead@example.org", "+81-90-1111-2222",
                 "Q. Team size?", "A. 12", "Lead Co is a 40-person SaaS vendor."]:
        assert part in text, part
    assert text.index("フォーム入力情報") < text.index("リサーチ結果:") < text.index("Lead Co is a 40-person")


@pytest.mark.parametrize("kind", ["PRE_MEETING", "PRE_EXIT"])
def test_survey_description_has_the_qa(kind):
    text = render.salesforce_task(survey(kind), "Asia/Tokyo", mt())["Description"]
    for part in ["Q. What to discuss?", "A. Pricing", "Q. Attendees?", "A. 3", "Lee Lead"]:
        assert part in text, part


# ---- ActivityDate (SPEC §5 期日) ----------------------------------------------------------------

ACTIVITY_DATES = [
    # meeting booked: the meeting date in the event's time zone (company tz irrelevant)
    ("meeting tokyo, utc date differs", lambda: meeting(start_at=T), "UTC", "2026-11-24"),
    ("meeting in UTC", lambda: meeting(start_at=T, timezone="UTC"), "Asia/Tokyo", "2026-11-23"),
    ("meeting in LA", lambda: meeting(start_at=ms("2026-11-24T03:00:00Z"), end_at=ms("2026-11-24T04:00:00Z"),
                                      timezone="America/Los_Angeles"), "Asia/Tokyo", "2026-11-23"),
    ("meeting date, not booking date", lambda: meeting(occurred_at=ms("2026-11-01T00:00:00Z")), "UTC", "2026-11-24"),
    # research: research date + 1 day, in the company's time zone
    ("research tokyo", lambda: research(occurred_at=T), "Asia/Tokyo", "2026-11-25"),
    ("research utc", lambda: research(occurred_at=T), "UTC", "2026-11-24"),
    ("research month end", lambda: research(occurred_at=ms("2026-11-30T10:00:00Z")), "Asia/Tokyo", "2026-12-01"),
    # pre-meeting survey: the meeting date
    ("pre-meeting: meeting date", lambda: survey("PRE_MEETING"), "UTC", "2026-12-01"),
    ("pre-meeting: company tz when the event has none",
     lambda: survey("PRE_MEETING", timezone=None), "Asia/Tokyo", "2026-12-01"),
    ("pre-meeting: company tz UTC", lambda: survey("PRE_MEETING", timezone=None), "UTC", "2026-11-30"),
    ("pre-meeting: no meeting start → answered date",
     lambda: survey("PRE_MEETING", meeting_start_at=None, timezone=None), "Asia/Tokyo", "2026-11-24"),
    # pre-exit survey: answered date + 1 day
    ("pre-exit tokyo", lambda: survey("PRE_EXIT"), "Asia/Tokyo", "2026-11-25"),
    ("pre-exit utc", lambda: survey("PRE_EXIT"), "UTC", "2026-11-24"),
    ("pre-exit year end", lambda: survey("PRE_EXIT", occurred_at=ms("2026-12-31T15:00:00Z")), "Asia/Tokyo", "2027-01-02"),
]


@pytest.mark.parametrize("name,make,company_tz,expected", ACTIVITY_DATES, ids=[c[0] for c in ACTIVITY_DATES])
def test_activity_date(name, make, company_tz, expected):
    event = make()
    assert render.activity_date(event, company_tz).isoformat() == expected
    assert render.salesforce_task(event, company_tz, mt())["ActivityDate"] == expected
    assert render.salesforce_task(event, company_tz, None)["ActivityDate"] == expected


def test_local_date_and_iso_utc():
    assert render.local_date(T, "Asia/Tokyo").isoformat() == "2026-11-24"
    assert render.local_date(T, "UTC").isoformat() == "2026-11-23"
    assert render.iso_utc(T + 7) == "2026-11-23T16:30:00.007Z"


# ---- truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [SUBJECT_LIMIT, DESCRIPTION_LIMIT])
@pytest.mark.parametrize("extra", [0, 1, 2, 1_000])
def test_truncate_exact_limit(limit, extra):
    text = "あ" * (limit + extra)
    out = render.truncate(text, limit)
    assert len(out) == limit
    if extra == 0:
        assert out == text
    else:
        assert out.endswith(TRUNCATION_MARKER) and out.startswith("あ" * (limit - len(TRUNCATION_MARKER)))


def test_short_text_not_truncated():
    assert render.truncate("abc", 255) == "abc"
    assert render.truncate("", 255) == ""


@pytest.mark.parametrize("length,truncated", [(SUBJECT_LIMIT, False), (SUBJECT_LIMIT + 1, True), (1_000, True)])
def test_subject_truncated_at_255(length, truncated):
    fields = render.salesforce_task(meeting(), "Asia/Tokyo", mt(salesforce_subject="s" * length))
    assert len(fields["Subject"]) == min(length, SUBJECT_LIMIT)
    assert fields["Subject"].endswith(TRUNCATION_MARKER) is truncated


@pytest.mark.parametrize("length,truncated", [(DESCRIPTION_LIMIT, False), (DESCRIPTION_LIMIT + 1, True), (99_000, True)])
def test_description_truncated_at_32000(length, truncated):
    fields = render.salesforce_task(meeting(), "Asia/Tokyo", mt(salesforce_comment="d" * length))
    assert len(fields["Description"]) == min(length, DESCRIPTION_LIMIT)
    assert fields["Description"].endswith(TRUNCATION_MARKER) is truncated


@pytest.mark.parametrize("event_type", list(EventType))
def test_long_default_description_never_longer_than_limit(event_type):
    big = "x" * 50_000
    kw = {
        EventType.MEETING_BOOKED: dict(form_answers=(QA("q", big), QA("q2", big))),
        EventType.RESEARCH_COMPLETED: dict(result=big * 2),
        EventType.PRE_MEETING_SURVEY_ANSWERED: dict(answers=(QA("q", big), QA("q2", big))),
        EventType.PRE_EXIT_SURVEY_ANSWERED: dict(answers=(QA("q", big), QA("q2", big))),
    }[event_type]
    fields = render.salesforce_task(ALL_EVENTS[event_type](**kw), "Asia/Tokyo", mt())
    assert len(fields["Description"]) == DESCRIPTION_LIMIT
    assert fields["Description"].endswith(TRUNCATION_MARKER)
    assert len(fields["Subject"]) <= SUBJECT_LIMIT


def test_truncate_html_never_leaves_half_a_tag_or_entity():
    markup = render.text_to_html("\n".join(["<a & b>"] * 40))
    limit = 120
    for cut in range(len(TRUNCATION_MARKER) + 1, limit):
        out = render.truncate_html(markup, cut)
        assert len(out) <= cut and out.endswith(TRUNCATION_MARKER)
        body = out[: -len(TRUNCATION_MARKER)]
        assert body.count("<") == body.count(">"), out  # every tag closed
        assert not re.search(r"&[a-z#0-9]*$", body), out  # no half entity
        assert markup.startswith(body)
    assert render.truncate_html(markup, len(markup)) == markup


def test_hubspot_note_body_truncated_within_limit_with_marker():
    event = research(result="<b>" * 40_000)
    body = render.hubspot_note(event)["hs_note_body"]
    assert len(body) <= NOTE_BODY_LIMIT and body.endswith(TRUNCATION_MARKER)
    assert "<b>" not in body.replace("<br>", "")


def test_hubspot_meeting_title_and_body_truncated():
    event = meeting(form_answers=(QA("q", "&" * 70_000),))
    props = render.hubspot_meeting(event, "Asia/Tokyo", mt(hubspot_meeting_title="t" * 300))
    assert len(props["hs_meeting_title"]) == SUBJECT_LIMIT and props["hs_meeting_title"].endswith(TRUNCATION_MARKER)
    assert len(props["hs_meeting_body"]) <= NOTE_BODY_LIMIT and props["hs_meeting_body"].endswith(TRUNCATION_MARKER)
    assert not re.search(r"&[a-z]*…", props["hs_meeting_body"])


# ---- HubSpot meeting (SPEC §6) ---------------------------------------------------------------


def test_hubspot_meeting_defaults():
    props = render.hubspot_meeting(meeting(), "Asia/Tokyo", mt())
    assert props["hs_meeting_title"] == "製品デモ"  # default: the meeting type
    assert props["hs_meeting_start_time"] == "2026-11-23T16:30:00.000Z"
    assert props["hs_meeting_end_time"] == "2026-11-23T17:30:00.000Z"
    assert props["hs_timestamp"] == "2026-11-23T16:30:00.000Z"
    assert props["hs_meeting_external_url"] == "https://meet.example.com/abc"
    body = props["hs_meeting_body"]
    assert "製品デモ" in body and "Lee Lead" in body and "Q. Team size?" in body and "<br>" in body
    assert "hubspot_owner_id" not in props  # the owner is resolved at delivery, only when found


def test_hubspot_meeting_without_settings_or_url():
    props = render.hubspot_meeting(meeting(meeting_url=None), "Asia/Tokyo", None)
    assert props["hs_meeting_title"] == "製品デモ"
    assert "hs_meeting_external_url" not in props


def test_hubspot_meeting_title_and_body_from_meeting_type_settings():
    settings = mt(hubspot_meeting_title="{meeting_type_name} with {booker_name}",
                  hubspot_meeting_body="Host: {host_name}\nURL: {meeting_url}\n{nope}")
    props = render.hubspot_meeting(meeting(), "Asia/Tokyo", settings)
    assert props["hs_meeting_title"] == "製品デモ with Lee Lead"
    assert props["hs_meeting_body"] == "Host: Hana Host<br>URL: https://meet.example.com/abc<br>{nope}"


def test_hubspot_meeting_escapes_user_text():
    event = meeting(booker=Person("lead@example.org", SCRIPT, SCRIPT), meeting_type_name=SCRIPT,
                    form_answers=(QA(SCRIPT, SCRIPT),))
    body = render.hubspot_meeting(event, "Asia/Tokyo", mt())["hs_meeting_body"]
    assert "<script>" not in body and ESCAPED in body
    assert set(re.findall(r"<[^>]*>", body)) == {"<br>"}
    custom = render.hubspot_meeting(event, "Asia/Tokyo", mt(hubspot_meeting_body="<b>{booker_name}</b>"))
    # the admin's template is text too: nothing in it becomes markup
    assert custom["hs_meeting_body"] == "&lt;b&gt;" + ESCAPED + "&lt;/b&gt;"


# ---- HubSpot notes (SPEC §6) -----------------------------------------------------------------


def _note(event) -> str:
    return render.hubspot_note(event)["hs_note_body"]


def test_research_note_contents():
    body = _note(research())
    assert body.startswith("<strong>リサーチ結果</strong><br>")
    for part in ["Lead Co", "Lee Lead", "lead@example.org", "+81-90-1111-2222", "Q. Team size?", "A. 12",
                 "Lead Co is a 40-person SaaS vendor.", "企業リサーチ"]:
        assert part in body, part
    assert render.hubspot_note(research())["hs_timestamp"] == "2026-11-23T16:30:00.000Z"


def test_pre_meeting_note_contents_name_company_and_qa():
    body = _note(survey("PRE_MEETING"))
    assert body.startswith("<strong>面談前アンケート回答</strong><br>")
    for part in ["Lee Lead", "Lead Co", "Q. What to discuss?", "A. Pricing", "Q. Attendees?", "A. 3"]:
        assert part in body, part
    # the seed lists name and company only for this note
    assert "lead@example.org" not in body and "+81-90-1111-2222" not in body


def test_pre_exit_note_contents_name_company_email_phone_and_qa():
    body = _note(survey("PRE_EXIT"))
    assert body.startswith("<strong>離脱前アンケート回答</strong><br>")
    for part in ["Lee Lead", "Lead Co", "lead@example.org", "+81-90-1111-2222", "Q. What to discuss?", "A. Pricing"]:
        assert part in body, part


@pytest.mark.parametrize(
    "event",
    [
        research(target=Person("lead@example.org", SCRIPT, SCRIPT, SCRIPT), result=SCRIPT, form_answers=(QA(SCRIPT, SCRIPT),)),
        survey("PRE_MEETING", respondent=Person("lead@example.org", SCRIPT, SCRIPT), answers=(QA(SCRIPT, SCRIPT),)),
        survey("PRE_EXIT", respondent=Person("lead@example.org", SCRIPT, SCRIPT, SCRIPT), answers=(QA(SCRIPT, SCRIPT),)),
    ],
    ids=["research", "pre-meeting", "pre-exit"],
)
def test_notes_escape_user_text(event):
    body = _note(event)
    assert "<script>" not in body and "</script>" not in body
    assert ESCAPED in body
    assert set(re.findall(r"<[^>]*>", body)) <= {"<br>", "<strong>", "</strong>"}


def test_text_to_html_keeps_line_breaks():
    assert render.text_to_html("a<b\nc&d") == "a&lt;b<br>c&amp;d"


# ---- templates ---------------------------------------------------------------------------------

VALUES = {"booker_name": "Lee", "meeting_type_name": "Demo", "host_name": "Hana"}

TEMPLATES = [
    ("{booker_name}", "Lee"),
    ("{meeting_type_name}: {booker_name} / {host_name}", "Demo: Lee / Hana"),
    ("no placeholders", "no placeholders"),
    ("{unknown} {booker_name}", "{unknown} Lee"),
    ("{booker_name} {", "Lee {"),  # a stray brace stays and does not stop filling
    ("} {booker_name}", "} Lee"),
    ("{ booker_name }", "{ booker_name }"),
    ("{}", "{}"),
    ("{0}", "{0}"),
    ("{booker_name!r}", "{booker_name!r}"),
    ("{booker_name:>10}", "{booker_name:>10}"),
    ("{booker.name}", "{booker.name}"),
    ("{{booker_name}}", "{Lee}"),
    ("{{", "{{"),
    ("}}", "}}"),
    ("日本語{booker_name}様", "日本語Lee様"),
]


@pytest.mark.parametrize("template,expected", TEMPLATES)
def test_fill_template(template, expected):
    assert render.fill_template(template, VALUES) == expected
    assert render.fill_template(template, VALUES) == expected


def test_filled_values_are_not_expanded_again():
    assert render.fill_template("{booker_name} {host_name}", {"booker_name": "{host_name}", "host_name": "H"}) == "{host_name} H"


def test_template_values_for_meeting():
    values = render.template_values(meeting())
    assert values == {
        "event_id": "evt-m", "meeting_type_id": "mt-1", "meeting_type_name": "製品デモ", "booker_name": "Lee Lead",
        "booker_company": "Lead Co", "host_name": "Hana Host", "start": "2026-11-24 01:30", "end": "2026-11-24 02:30",
        "timezone": "Asia/Tokyo", "meeting_url": "https://meet.example.com/abc",
    }
    assert render.template_values(meeting(meeting_url=None, booker=Person("a@b.co", "A")))["meeting_url"] == ""

