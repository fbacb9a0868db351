"""Typed domain data: events, settings documents, actions, outcomes.

Records (the codec's plain dicts) become these dataclasses in `processors.domain.records`, which
raises `ValidationError` for a record that decodes but breaks the contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Mapping, Union

MAX_TEXT = 100_000
MAX_QA_ITEMS = 500
MAX_ID = 256


class ValidationError(ValueError):
    """A record that decoded but breaks the topic contract; the message is the dead-letter reason."""


class EventType(str, enum.Enum):
    MEETING_BOOKED = "meeting_booked"
    RESEARCH_COMPLETED = "research_completed"
    PRE_MEETING_SURVEY_ANSWERED = "pre_meeting_survey_answered"
    PRE_EXIT_SURVEY_ANSWERED = "pre_exit_survey_answered"


class Crm(str, enum.Enum):
    SALESFORCE = "salesforce"
    HUBSPOT = "hubspot"


class ObjectType(str, enum.Enum):
    TASK = "TASK"
    MEETING = "MEETING"
    NOTE = "NOTE"


class Origin(str, enum.Enum):
    COMPANY = "company"
    MEETING_TYPE = "meeting_type"


@dataclass(frozen=True)
class Person:
    email: str
    name: str
    company_name: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class MeetingBooked:
    event_id: str
    occurred_at: int
    company_id: str
    meeting_type_id: str
    meeting_id: str
    meeting_type_name: str
    host: Person
    booker: Person
    start_at: int
    end_at: int
    timezone: str
    meeting_url: str | None = None
    form_answers: tuple[QA, ...] = ()

    event_type = EventType.MEETING_BOOKED


@dataclass(frozen=True)
class ResearchCompleted:
    event_id: str
    occurred_at: int
    company_id: str
    meeting_type_id: str
    research_kind: str
    target: Person
    result: str
    form_answers: tuple[QA, ...] = ()

    event_type = EventType.RESEARCH_COMPLETED


@dataclass(frozen=True)
class SurveyAnswered:
    event_id: str
    occurred_at: int
    company_id: str
    meeting_type_id: str
    survey_kind: str
    respondent: Person
    host: Person | None = None
    meeting_start_at: int | None = None
    timezone: str | None = None
    answers: tuple[QA, ...] = ()

    @property
    def event_type(self) -> EventType:
        if self.survey_kind == "PRE_MEETING":
            return EventType.PRE_MEETING_SURVEY_ANSWERED
        return EventType.PRE_EXIT_SURVEY_ANSWERED


Event = Union[MeetingBooked, ResearchCompleted, SurveyAnswered]


@dataclass(frozen=True)
class EventToggles:
    meeting_booked: bool = False
    research_completed: bool = False
    pre_meeting_survey_answered: bool = False
    pre_exit_survey_answered: bool = False

    def get(self, event_type: EventType) -> bool:
        return bool(getattr(self, event_type.value))

    def with_(self, event_type: EventType, on: bool) -> "EventToggles":
        return replace(self, **{event_type.value: on})


@dataclass(frozen=True)
class CompanySettings:
    company_id: str
    salesforce_connected: bool = False
    hubspot_connected: bool = False
    salesforce_company_todo: EventToggles = EventToggles()
    paused: bool = False
    timezone: str = "Asia/Tokyo"
    contact_recheck_seconds: tuple[int, ...] = ()  # off: no re-check before contact_not_found
    updated_at: int = 0
    updated_by: str | None = None

    def connected(self, crm: Crm) -> bool:
        return self.salesforce_connected if crm is Crm.SALESFORCE else self.hubspot_connected


@dataclass(frozen=True)
class FieldMapping:
    crm: Crm
    event_type: EventType
    crm_field: str
    source: str
    allow_core: bool = False  # may overwrite a rendered core field (processors.domain.mapping)


@dataclass(frozen=True)
class MeetingTypeSettings:
    company_id: str
    meeting_type_id: str
    meeting_type_name: str | None = None
    salesforce_todo: EventToggles = EventToggles()
    hubspot_sync: EventToggles = EventToggles()
    salesforce_subject: str | None = None
    salesforce_comment: str | None = None
    hubspot_meeting_title: str | None = None
    hubspot_meeting_body: str | None = None
    field_mappings: tuple[FieldMapping, ...] = ()
    updated_at: int = 0
    updated_by: str | None = None

    def toggles(self, crm: Crm) -> EventToggles:
        return self.salesforce_todo if crm is Crm.SALESFORCE else self.hubspot_sync


@dataclass(frozen=True)
class Action:
    """One CRM write, planned at ingest with a settings snapshot, executed when due."""

    action_id: str
    event_id: str
    event_type: EventType
    company_id: str
    meeting_type_id: str
    crm: Crm
    object_type: ObjectType
    origin: Origin
    occurred_at: int
    due_at: int
    planned_at: int
    contact_email: str
    owner_email: str | None
    properties: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0
    first_due_at: int | None = None

    @property
    def give_up_clock(self) -> int:
        """When retrying started to count: the first due time (older records: their due time)."""
        return self.first_due_at if self.first_due_at is not None else self.due_at
