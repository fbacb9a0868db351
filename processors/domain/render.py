"""Rendering of Salesforce Tasks and HubSpot meetings/notes (SPEC §5, §6), pure.

Rendering happens at ingest so that the action carries a snapshot of the settings it was planned
with (rule 7). Lookups of users, owners and contacts happen at delivery, in the connectors.
"""

from __future__ import annotations

import html
import re
from datetime import date, datetime, timedelta, timezone
from typing import Mapping
from zoneinfo import ZoneInfo

from processors.domain.model import (
    QA,
    Event,
    EventType,
    MeetingBooked,
    MeetingTypeSettings,
    Person,
    ResearchCompleted,
    SurveyAnswered,
)

SUBJECT_LIMIT = 255
DESCRIPTION_LIMIT = 32_000
NOTE_BODY_LIMIT = 65_536
TRUNCATION_MARKER = "…(以下省略 / truncated)"

DEFAULT_SUBJECTS = {
    EventType.MEETING_BOOKED: "面談予約のお知らせ",
    EventType.RESEARCH_COMPLETED: "リサーチ結果のお知らせ",
    EventType.PRE_MEETING_SURVEY_ANSWERED: "面談前アンケート回答のお知らせ",
    EventType.PRE_EXIT_SURVEY_ANSWERED: "離脱前アンケート回答のお知らせ",
}

NOTE_TITLES = {
    EventType.RESEARCH_COMPLETED: "リサーチ結果",
    EventType.PRE_MEETING_SURVEY_ANSWERED: "面談前アンケート回答",
    EventType.PRE_EXIT_SURVEY_ANSWERED: "離脱前アンケート回答",
}

RESEARCH_KINDS = {"COMPANY": "企業リサーチ", "CUSTOMER": "顧客リサーチ"}


def truncate(text: str, limit: int) -> str:
    """Cut to the CRM field limit with a visible marker, so a long value never fails a create."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def truncate_html(markup: str, limit: int) -> str:
    """`truncate` for HTML built by `text_to_html`: never leaves half a tag or entity before the marker."""
    if len(markup) <= limit:
        return markup
    cut = markup[: limit - len(TRUNCATION_MARKER)]
    tag, amp = cut.rfind("<"), cut.rfind("&")
    if tag > cut.rfind(">"):
        cut = cut[:tag]
    if amp > cut.rfind(";"):
        cut = cut[:amp]
    return cut + TRUNCATION_MARKER


def local_datetime(millis: int, tz: str) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).astimezone(ZoneInfo(tz))


def local_date(millis: int, tz: str) -> date:
    return local_datetime(millis, tz).date()


def iso_utc(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt_range(start: int, end: int, tz: str) -> str:
    s, e = local_datetime(start, tz), local_datetime(end, tz)
    end_fmt = "%H:%M" if s.date() == e.date() else "%Y-%m-%d %H:%M"
    return f"{s:%Y-%m-%d %H:%M}–{e.strftime(end_fmt)} ({tz})"


def _person_lines(label: str, p: Person, *, email: bool = True, phone: bool = True) -> list[str]:
    lines = [f"{label}: {p.name}"]
    if p.company_name:
        lines.append(f"会社名: {p.company_name}")
    if email:
        lines.append(f"メールアドレス: {p.email}")
    if phone and p.phone:
        lines.append(f"電話番号: {p.phone}")
    return lines


def _qa_lines(items: tuple[QA, ...]) -> list[str]:
    return [line for qa in items for line in (f"Q. {qa.question}", f"A. {qa.answer}")]


def template_values(event: Event) -> dict[str, str]:
    """Placeholders admins may use in custom subjects, comments, titles and bodies."""
    values: dict[str, str] = {"event_id": event.event_id, "meeting_type_id": event.meeting_type_id}
    if isinstance(event, MeetingBooked):
        values.update(
            meeting_type_name=event.meeting_type_name,
            booker_name=event.booker.name,
            booker_company=event.booker.company_name or "",
            host_name=event.host.name,
            start=f"{local_datetime(event.start_at, event.timezone):%Y-%m-%d %H:%M}",
            end=f"{local_datetime(event.end_at, event.timezone):%Y-%m-%d %H:%M}",
            timezone=event.timezone,
            meeting_url=event.meeting_url or "",
        )
    return values


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """`{name}` placeholders are filled; unknown ones and stray braces stay as typed."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# ---- plain-text content shared by both CRMs ---------------------------------------------------


def meeting_text(event: MeetingBooked) -> str:
    lines = [
        f"面談タイプ: {event.meeting_type_name}",
        f"日時: {_fmt_range(event.start_at, event.end_at, event.timezone)}",
    ]
    if event.meeting_url:
        lines.append(f"URL: {event.meeting_url}")
    lines.append(f"担当者: {event.host.name}")
    lines += _person_lines("予約者", event.booker)
    if event.form_answers:
        lines += ["", "フォーム回答:"] + _qa_lines(event.form_answers)
    return "\n".join(lines)


def research_text(event: ResearchCompleted) -> str:
    lines = [f"リサーチ種別: {RESEARCH_KINDS.get(event.research_kind, event.research_kind)}", "", "フォーム入力情報:"]
    lines += _person_lines("氏名", event.target)
    lines += _qa_lines(event.form_answers)
    lines += ["", "リサーチ結果:", event.result]
    return "\n".join(lines)


def survey_text(event: SurveyAnswered) -> str:
    pre_exit = event.event_type is EventType.PRE_EXIT_SURVEY_ANSWERED
    lines = _person_lines("回答者", event.respondent, email=pre_exit, phone=pre_exit)
    lines += ["", "アンケート回答:"] + _qa_lines(event.answers)
    return "\n".join(lines)


def event_text(event: Event) -> str:
    if isinstance(event, MeetingBooked):
        return meeting_text(event)
    if isinstance(event, ResearchCompleted):
        return research_text(event)
    return survey_text(event)


def text_to_html(text: str) -> str:
    """HubSpot bodies are HTML: user text is escaped, line breaks kept."""
    return html.escape(text).replace("\n", "<br>")  # escaping never touches a line break


# ---- Salesforce ------------------------------------------------------------------------------


def activity_date(event: Event, company_tz: str) -> date:
    """期日 per SPEC §5, in the event's time zone when it has one, else the company's."""
    if isinstance(event, MeetingBooked):
        return local_date(event.start_at, event.timezone)
    if isinstance(event, ResearchCompleted):
        return local_date(event.occurred_at, company_tz) + timedelta(days=1)
    tz = event.timezone or company_tz
    if event.event_type is EventType.PRE_MEETING_SURVEY_ANSWERED and event.meeting_start_at is not None:
        return local_date(event.meeting_start_at, tz)
    if event.event_type is EventType.PRE_MEETING_SURVEY_ANSWERED:
        return local_date(event.occurred_at, tz)
    return local_date(event.occurred_at, tz) + timedelta(days=1)


def salesforce_task(event: Event, company_tz: str, mt: MeetingTypeSettings | None, text: str | None = None) -> dict[str, str]:
    """Task fields. `mt` is None for the company-level ToDo, which always uses the defaults.

    `text` is `event_text(event)` when the caller has it already (one event renders up to three actions).
    """
    subject = DEFAULT_SUBJECTS[event.event_type]
    description = event_text(event) if text is None else text
    if isinstance(event, MeetingBooked) and mt is not None and (mt.salesforce_subject or mt.salesforce_comment):
        values = template_values(event)  # only for a template: its dates cost a time-zone conversion each
        if mt.salesforce_subject:
            subject = fill_template(mt.salesforce_subject, values)
        if mt.salesforce_comment:
            description = fill_template(mt.salesforce_comment, values)
    return {
        "Subject": truncate(subject, SUBJECT_LIMIT),
        "Description": truncate(description, DESCRIPTION_LIMIT),
        "ActivityDate": activity_date(event, company_tz).isoformat(),
    }


# ---- HubSpot ---------------------------------------------------------------------------------


def hubspot_meeting(
    event: MeetingBooked, company_tz: str, mt: MeetingTypeSettings | None, text: str | None = None
) -> dict[str, str]:
    title = event.meeting_type_name
    title_template = mt.hubspot_meeting_title if mt is not None else None
    body_template = mt.hubspot_meeting_body if mt is not None else None
    values = template_values(event) if title_template or body_template else {}
    if title_template:
        title = fill_template(title_template, values)
    body_html = text_to_html(fill_template(body_template, values) if body_template else text or meeting_text(event))
    start = iso_utc(event.start_at)
    props = {
        "hs_timestamp": start,
        "hs_meeting_title": truncate(title, SUBJECT_LIMIT),
        "hs_meeting_body": truncate_html(body_html, NOTE_BODY_LIMIT),
        "hs_meeting_start_time": start,
        "hs_meeting_end_time": iso_utc(event.end_at),
        "hs_meeting_outcome": "SCHEDULED",
    }
    if event.meeting_url:
        props["hs_meeting_external_url"] = event.meeting_url
    return props


def hubspot_note(event: ResearchCompleted | SurveyAnswered, text: str | None = None) -> dict[str, str]:
    body = f"<strong>{html.escape(NOTE_TITLES[event.event_type])}</strong><br>" + text_to_html(event_text(event) if text is None else text)
    return {"hs_timestamp": iso_utc(event.occurred_at), "hs_note_body": truncate_html(body, NOTE_BODY_LIMIT)}

