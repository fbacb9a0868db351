"""`crm-sync preview`: exactly what delivery would do with one event under the current settings,
without doing any of it.

It runs the worker's own pure steps: the planner (settings → actions, with the same deterministic
ids) and the delivery's field functions (`salesforce_task_fields`, `hubspot_properties`), so what it
prints is what a delivery would send. With a resolver it also does the read-only CRM lookups a
delivery does first (the Lead/Contact or HubSpot contact, the owner); it never creates anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Mapping, Protocol
from zoneinfo import ZoneInfo

from processors.codec import Codec, DecodeError
from processors.domain.deliver import hubspot_properties, salesforce_task_fields
from processors.domain.history import DEFAULT_TIMEZONE
from processors.domain.model import Action, Crm, Event, ValidationError
from processors.domain.planner import plan
from processors.domain.records import event_from_record
from processors.domain.rules import SettingsView

# How a bare JSON event says which schema it is: the field only that schema has.
SCHEMA_BY_FIELD = (("meeting_id", "MeetingBooked"), ("research_kind", "ResearchCompleted"), ("survey_kind", "SurveyAnswered"))
INPUT_SCHEMAS = {name for _, name in SCHEMA_BY_FIELD}


class PreviewError(ValueError):
    """An event preview cannot read, or one that is not the company's."""


@dataclass(frozen=True)
class Person:
    """A CRM record a lookup found: its id and, for Salesforce, its owner."""

    id: str
    owner_id: str | None = None


class Resolver(Protocol):
    """The read-only lookups a delivery makes before it creates (per company, per CRM)."""

    def salesforce_person(self, email: str) -> Person | None: ...
    def salesforce_user(self, email: str) -> str | None: ...
    def hubspot_contact(self, email: str) -> str | None: ...
    def hubspot_owner(self, email: str) -> str | None: ...


@dataclass
class PreviewAction:
    crm: str
    object_type: str
    origin: str
    action_id: str
    due_at: str
    due_now: bool
    held: str | None
    outcome: str
    contact: str
    owner: str | None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Preview:
    event_id: str
    event_type: str
    company_id: str
    meeting_type_id: str
    occurred_at: str
    actions: list[PreviewAction] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    resolved: bool = False

    @property
    def nothing(self) -> bool:
        return not self.actions

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


def decode_event(raw: bytes, codec: Codec) -> Event:
    """An event from a file or a record: Avro (single-object or Confluent wire format, as upstream
    publishes it) or JSON (the publisher's record, timestamps in ms; bare, or as
    `{"schema": "MeetingBooked", "value": {...}}`)."""
    stripped = raw.lstrip()
    if stripped[:1] == b"{":
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise PreviewError(f"not JSON: {exc}") from None
        if isinstance(doc, dict) and "schema" in doc and "value" in doc:
            schema, value = doc["schema"], doc["value"]
        else:
            schema = next((name for key, name in SCHEMA_BY_FIELD if isinstance(doc, dict) and key in doc), None)
            value = doc
        if schema not in INPUT_SCHEMAS or not isinstance(value, dict):
            raise PreviewError("a JSON event needs a meeting_id, research_kind or survey_kind field, or a schema name")
    else:
        try:
            decoded = codec.decode(raw)
        except DecodeError as exc:
            raise PreviewError(f"not an event record: {exc}") from None
        schema, value = decoded.schema_name, dict(decoded.value)
        if schema not in INPUT_SCHEMAS:
            raise PreviewError(f"schema {schema} is not an input event")
    try:
        return event_from_record(schema, value)
    except ValidationError as exc:
        raise PreviewError(f"the worker would dead-letter this event: {exc}") from None


def _when(ms: int, tz: str) -> str:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).isoformat(timespec="seconds")


def preview(
    event: Event, company_id: str, settings: SettingsView, now_ms: int, delay_ms: int,
    resolver: Resolver | None = None, id_fields: Mapping[Crm, str | None] | None = None,
) -> Preview:
    """What ingest would plan now and delivery would then do, action by action. `id_fields` are the
    company's external-id field or property per CRM, which a delivery fills with the action id."""
    if event.company_id != company_id:
        raise PreviewError(f"the event belongs to company {event.company_id}, not {company_id}")
    company = settings.company(company_id)
    tz = company.timezone if company is not None and company.timezone else DEFAULT_TIMEZONE
    planned = plan(event, company, settings.meeting_type(company_id, event.meeting_type_id), now_ms, delay_ms)
    out = Preview(event.event_id, event.event_type.value, company_id, event.meeting_type_id, _when(event.occurred_at, tz),
                  resolved=resolver is not None)
    out.skipped = [{"crm": s.crm.value if s.crm else "any", "reason": s.reason} for s in planned.skips]
    held = "the company is paused: held until it resumes" if company is not None and company.paused else None
    for action in planned.actions:
        out.actions.append(_action(action, tz, now_ms, held, resolver, (id_fields or {}).get(action.crm)))
    return out


def _action(action: Action, tz: str, now_ms: int, held: str | None, resolver: Resolver | None, id_field: str | None) -> PreviewAction:
    base = dict(crm=action.crm.value, object_type=action.object_type.value, origin=action.origin.value, action_id=action.action_id,
                due_at=_when(action.due_at, tz), due_now=action.due_at <= now_ms, held=held)
    contact_hint = f"the {'Lead/Contact' if action.crm is Crm.SALESFORCE else 'contact'} with e-mail {action.contact_email}"
    owner_hint = f"the owner with e-mail {action.owner_email}" if action.owner_email else None
    if resolver is None:
        return PreviewAction(**base, outcome="create", contact=contact_hint, owner=owner_hint, fields=dict(action.properties))
    if action.crm is Crm.SALESFORCE:
        who = resolver.salesforce_person(action.contact_email)
        user = resolver.salesforce_user(action.owner_email) if action.owner_email and who is not None else None
        resolved = salesforce_task_fields(action, who, user)
        if resolved.fields is None:
            return PreviewAction(**base, outcome=f"skip: {resolved.skip_reason}", contact=f"none: no {contact_hint}", owner=None)
        fields = {k: str(v) for k, v in resolved.fields.items()}
        if id_field:
            fields[id_field] = action.action_id
        return PreviewAction(**base, outcome="create", contact=fields["WhoId"], owner=fields.get("OwnerId"), fields=fields)
    contact_id = resolver.hubspot_contact(action.contact_email)
    if contact_id is None:
        return PreviewAction(**base, outcome="skip: contact_not_found", contact=f"none: no {contact_hint}", owner=None)
    owner = resolver.hubspot_owner(action.owner_email) if action.owner_email else None
    properties = hubspot_properties(action, owner)
    if id_field:
        properties[id_field] = action.action_id
    return PreviewAction(**base, outcome="create", contact=contact_id, owner=owner, fields=properties)


class CrmResolver:
    """A company's real CRM clients, used for lookups only (the same calls a delivery starts with)."""

    def __init__(self, clients: Mapping[Crm, Any]) -> None:
        self._clients = clients

    def _client(self, crm: Crm) -> Any:
        if crm not in self._clients:
            raise PreviewError(f"no {crm.value} credentials to resolve with")
        return self._clients[crm]

    def salesforce_person(self, email: str) -> Person | None:
        found = self._client(Crm.SALESFORCE).find_people([email]).get(email.lower())
        return None if found is None else Person(found.id, found.owner_id)

    def salesforce_user(self, email: str) -> str | None:
        found: str | None = self._client(Crm.SALESFORCE).find_users([email]).get(email.lower())
        return found

    def hubspot_contact(self, email: str) -> str | None:
        found: str | None = self._client(Crm.HUBSPOT).find_contacts([email]).get(email.lower())
        return found

    def hubspot_owner(self, email: str) -> str | None:
        found: str | None = self._client(Crm.HUBSPOT).find_owner(email.lower())
        return found


def format_text(p: Preview) -> str:
    lines = [f"event {p.event_id} ({p.event_type}), company {p.company_id}, meeting type {p.meeting_type_id}, occurred {p.occurred_at}"]
    if p.nothing:
        reasons = ", ".join(f"{s['crm']}: {s['reason']}" for s in p.skipped) or "no toggle is on for this event type"
        lines.append(f"nothing would be created ({reasons})")
        return "\n".join(lines)
    for a in p.actions:
        when = "at once (already due)" if a.due_now else a.due_at
        lines.append(f"{a.crm} {a.object_type.lower()} ({a.origin.replace('_', '-')}-level), action {a.action_id}: {a.outcome}, due {when}")
        if a.held:
            lines.append(f"  {a.held}")
        lines.append(f"  contact: {a.contact}")
        if a.owner:
            lines.append(f"  owner: {a.owner}")
        for name, value in a.fields.items():
            text = str(value)
            if "\n" in text:
                lines.append(f"  {name}: |")
                lines.extend(f"    {line}" for line in text.splitlines())
            else:
                lines.append(f"  {name}: {text}")
    for s in p.skipped:
        lines.append(f"skipped: {s['crm']} ({s['reason']})")
    if not p.resolved:
        lines.append("(contact and owner are looked up at delivery; --resolve looks them up now, read-only)")
    return "\n".join(lines)


def last_booking(config: Any, codec: Codec, company_id: str, meeting_type_id: str, since_ms: int) -> Event | None:
    """The company's latest booking of that meeting type on the meetings topic since `since_ms`
    (each partition from the broker's time index; other companies' records skipped by key)."""
    from processors.kafka import clients
    from processors.kafka.read import TopicReader

    key = company_id.encode()
    latest: Event | None = None

    def keep(msg: Any) -> None:
        nonlocal latest
        if msg.key() != key or msg.value() is None:
            return
        try:
            event = decode_event(msg.value(), codec)
        except PreviewError:
            return
        if event.meeting_type_id == meeting_type_id and event.event_type.value == "meeting_booked" and (
            latest is None or event.occurred_at >= latest.occurred_at
        ):
            latest = event

    with TopicReader(clients.librdkafka(config), config.topics.meetings) as reader:
        partitions = reader.partitions()
        if partitions:
            reader.assign(partitions, since_ms)
            reader.read_to_end(keep, timeout=60.0)
    return latest
