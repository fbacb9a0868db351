"""(event, settings snapshot) → CRM actions with deterministic ids, pure (SPEC §3, §4)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from processors.domain import render
from processors.domain.mapping import mapped_fields
from processors.domain.model import (
    Action,
    CompanySettings,
    Crm,
    Event,
    EventType,
    MeetingBooked,
    MeetingTypeSettings,
    ObjectType,
    Origin,
    SurveyAnswered,
)


@dataclass(frozen=True)
class Skip:
    """An event that caused no action for a CRM, with the reason shown in history and metrics."""

    crm: Crm | None
    reason: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    skips: tuple[Skip, ...] = field(default_factory=tuple)


def action_id(company_id: str, event_id: str, crm: Crm, origin: Origin) -> str:
    """The idempotency key: the same event always plans the same ids, on any worker, at any time.

    Scoped to the tenant (SPEC §11): `event_id` is unique within a company only, so two companies'
    events with the same id plan different actions.
    """
    raw = f"{company_id}\x1f{event_id}\x1f{crm.value}\x1f{origin.value}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def due_at(occurred_at: int, now_ms: int, delay_ms: int) -> int:
    """occurred_at + delay; a future occurred_at is capped at arrival + delay (SPEC §4)."""
    return min(occurred_at, now_ms) + delay_ms


def contact_email(event: Event) -> str:
    if isinstance(event, MeetingBooked):
        return event.booker.email
    if isinstance(event, SurveyAnswered):
        return event.respondent.email
    return event.target.email


def owner_email(event: Event) -> str | None:
    """Host e-mail for 割り当て先 lookups; None where the table says 'record owner' only."""
    if isinstance(event, MeetingBooked):
        return event.host.email
    if isinstance(event, SurveyAnswered) and event.event_type is EventType.PRE_MEETING_SURVEY_ANSWERED and event.host:
        return event.host.email
    return None


def plan(
    event: Event,
    company: CompanySettings | None,
    meeting_type: MeetingTypeSettings | None,
    now_ms: int,
    delay_ms: int,
) -> Plan:
    if company is None or meeting_type is None:
        return Plan(skips=(Skip(None, "no_settings"),))
    event_type = event.event_type
    due = due_at(event.occurred_at, now_ms, delay_ms)

    def make(crm: Crm, object_type: ObjectType, origin: Origin, properties: dict[str, str]) -> Action:
        return Action(
            action_id=action_id(event.company_id, event.event_id, crm, origin),
            event_id=event.event_id,
            event_type=event_type,
            company_id=event.company_id,
            meeting_type_id=event.meeting_type_id,
            crm=crm,
            object_type=object_type,
            origin=origin,
            occurred_at=event.occurred_at,
            due_at=due,
            planned_at=now_ms,
            contact_email=contact_email(event),
            owner_email=owner_email(event),
            properties=properties,
            first_due_at=due,
        )

    actions: list[Action] = []
    skips: list[Skip] = []
    tz = company.timezone
    rendered: list[str] = []

    def text() -> str:
        """The event's text, rendered once for every action that shows it."""
        if not rendered:
            rendered.append(render.event_text(event))
        return rendered[0]

    sf_company = company.salesforce_company_todo.get(event_type)
    sf_type = meeting_type.salesforce_todo.get(event_type)
    if sf_company or sf_type:
        if not company.salesforce_connected:
            skips.append(Skip(Crm.SALESFORCE, "integration_disabled"))
        else:
            if sf_company:
                actions.append(make(Crm.SALESFORCE, ObjectType.TASK, Origin.COMPANY, render.salesforce_task(event, tz, None, text())))
            if sf_type:
                props = render.salesforce_task(event, tz, meeting_type, text()) | mapped_fields(event, Crm.SALESFORCE, meeting_type.field_mappings, tz)
                actions.append(make(Crm.SALESFORCE, ObjectType.TASK, Origin.MEETING_TYPE, props))

    if meeting_type.hubspot_sync.get(event_type):
        if not company.hubspot_connected:
            skips.append(Skip(Crm.HUBSPOT, "integration_disabled"))
        else:
            if isinstance(event, MeetingBooked):
                object_type, props = ObjectType.MEETING, render.hubspot_meeting(event, tz, meeting_type, text())
            else:
                object_type, props = ObjectType.NOTE, render.hubspot_note(event, text())
            props |= mapped_fields(event, Crm.HUBSPOT, meeting_type.field_mappings, tz)
            actions.append(make(Crm.HUBSPOT, object_type, Origin.MEETING_TYPE, props))

    return Plan(actions=tuple(actions), skips=tuple(skips))
