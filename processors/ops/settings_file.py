"""Settings as code: the whole settings of some or all companies as one YAML document, and what
applying such a file would change. `crm-sync settings export | diff | apply FILE`.

The format (version 1) is stable: keys in a fixed order, event types as sorted lists of ids, no
timestamps or authors (those are the audit's), so export → apply → export gives the same text.
Every company and meeting type carries the `version` of the document it was exported from;
applying checks it, so a change made since (in the console, say) is reported as a conflict and
never overwritten. Documents missing from the file are left as they are: settings are never
deleted. Unknown keys and bad values are refused with the line they are on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from processors.domain.audit import changes, summary
from processors.domain.model import CompanySettings, Crm, EventToggles, EventType, FieldMapping, MeetingTypeSettings
from processors.domain.records import valid_timezone
from processors.ops.admin import SettingsAdmin, doc_key, now_ms
from processors.state.settings import SettingsStore

FORMAT = 1
EVENT_IDS = [e.value for e in EventType]
COMPANY_KEYS = ("version", "salesforce_connected", "hubspot_connected", "paused", "timezone", "salesforce_company_todo",
                "contact_recheck_seconds", "meeting_types")
MEETING_TYPE_KEYS = ("version", "name", "salesforce_todo", "hubspot_sync", "salesforce_subject", "salesforce_comment",
                     "hubspot_meeting_title", "hubspot_meeting_body", "field_mappings")
MAPPING_KEYS = ("crm", "event_type", "crm_field", "source", "allow_core")

Doc = CompanySettings | MeetingTypeSettings


class SettingsFileError(ValueError):
    """The file is not a settings file this version reads; the message names the line."""


@dataclass
class Desired:
    """What the file says: the documents, and the version each was exported from (None: new)."""

    docs: list[Doc] = field(default_factory=list)
    versions: dict[str, int | None] = field(default_factory=dict)


def _toggles(t: EventToggles) -> list[str]:
    return [e for e in EVENT_IDS if getattr(t, e)]


def export(companies: Iterable[CompanySettings], meeting_types: Callable[[str], Sequence[MeetingTypeSettings]],
           version: Callable[[str], int]) -> str:
    """The YAML text of these companies' settings (sorted by company and meeting type id)."""
    out: dict[str, Any] = {}
    for c in sorted(companies, key=lambda c: c.company_id):
        mts: dict[str, Any] = {}
        for m in sorted(meeting_types(c.company_id), key=lambda m: m.meeting_type_id):
            mts[m.meeting_type_id] = {
                "version": version(doc_key(m)), "name": m.meeting_type_name,
                "salesforce_todo": _toggles(m.salesforce_todo), "hubspot_sync": _toggles(m.hubspot_sync),
                "salesforce_subject": m.salesforce_subject, "salesforce_comment": m.salesforce_comment,
                "hubspot_meeting_title": m.hubspot_meeting_title, "hubspot_meeting_body": m.hubspot_meeting_body,
                "field_mappings": [
                    {"crm": f.crm.value, "event_type": f.event_type.value, "crm_field": f.crm_field, "source": f.source,
                     "allow_core": f.allow_core}
                    for f in m.field_mappings
                ],
            }
        out[c.company_id] = {
            "version": version(doc_key(c)), "salesforce_connected": c.salesforce_connected, "hubspot_connected": c.hubspot_connected,
            "paused": c.paused, "timezone": c.timezone, "salesforce_company_todo": _toggles(c.salesforce_company_todo),
            "contact_recheck_seconds": list(c.contact_recheck_seconds), "meeting_types": mts,
        }
    header = "# crm-sync settings (docs/settings-as-code.md). `version`: the document's version when exported.\n"
    return header + yaml.safe_dump({"crm-sync-settings": FORMAT, "companies": out}, sort_keys=False, allow_unicode=True, width=1000)


# -- reading, with line numbers -------------------------------------------------------------------

def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.Node, what: str, allowed: Sequence[str] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise SettingsFileError(f"line {_line(node)}: {what} must be a mapping")
    found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if not isinstance(name, str) or (allowed is not None and name not in allowed):
            raise SettingsFileError(f"line {_line(key)}: unknown key {name!r} in {what}"
                                    + (f" (known: {', '.join(allowed)})" if allowed is not None else ""))
        if name in found:
            raise SettingsFileError(f"line {_line(key)}: {name!r} given twice in {what}")
        found[name] = (key, value)
    return found


def _value(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _bool(node: yaml.Node, what: str) -> bool:
    value = _value(node)
    if not isinstance(value, bool):
        raise SettingsFileError(f"line {_line(node)}: {what} must be true or false")
    return value


def _text(node: yaml.Node, what: str) -> str | None:
    value = _value(node)
    if value is not None and not isinstance(value, str):
        raise SettingsFileError(f"line {_line(node)}: {what} must be text or null")
    return value


def _events(node: yaml.Node, what: str) -> EventToggles:
    value = _value(node)
    if not isinstance(value, list) or any(v not in EVENT_IDS for v in value):
        raise SettingsFileError(f"line {_line(node)}: {what} must be a list of event types ({', '.join(EVENT_IDS)})")
    return EventToggles(**{e: e in value for e in EVENT_IDS})


def _version(node: yaml.Node | None) -> int | None:
    if node is None:
        return None
    value = _value(node)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SettingsFileError(f"line {_line(node)}: version must be a whole number (the one exported)")
    return value


def parse(text: str) -> Desired:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"not YAML: {exc}") from None
    if root is None:
        raise SettingsFileError("the file is empty")
    top = _mapping(root, "the file", ("crm-sync-settings", "companies"))
    if "crm-sync-settings" not in top or _value(top["crm-sync-settings"][1]) != FORMAT:
        raise SettingsFileError(f"line {_line(root)}: not a crm-sync settings file of format {FORMAT} (crm-sync-settings: {FORMAT})")
    desired = Desired()
    companies = _mapping(top["companies"][1], "companies", None) if "companies" in top else {}
    for company_id, (key_node, node) in companies.items():
        where = f"company {company_id}"
        keys = _mapping(node, where, COMPANY_KEYS)
        tz = _text(keys["timezone"][1], "timezone") if "timezone" in keys else "Asia/Tokyo"
        if not tz or not valid_timezone(tz):
            raise SettingsFileError(f"line {_line(keys['timezone'][1] if 'timezone' in keys else key_node)}: unknown time zone {tz!r}")
        recheck = _value(keys["contact_recheck_seconds"][1]) if "contact_recheck_seconds" in keys else []
        if not isinstance(recheck, list) or any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in recheck):
            raise SettingsFileError(f"line {_line(keys['contact_recheck_seconds'][1])}: contact_recheck_seconds must be a list of seconds")
        company = CompanySettings(
            company_id,
            salesforce_connected=_bool(keys["salesforce_connected"][1], "salesforce_connected") if "salesforce_connected" in keys else False,
            hubspot_connected=_bool(keys["hubspot_connected"][1], "hubspot_connected") if "hubspot_connected" in keys else False,
            salesforce_company_todo=_events(keys["salesforce_company_todo"][1], "salesforce_company_todo")
            if "salesforce_company_todo" in keys else EventToggles(),
            paused=_bool(keys["paused"][1], "paused") if "paused" in keys else False,
            timezone=tz, contact_recheck_seconds=tuple(recheck),
        )
        desired.docs.append(company)
        desired.versions[doc_key(company)] = _version(keys["version"][1] if "version" in keys else None)
        mts = _mapping(keys["meeting_types"][1], f"{where}'s meeting_types", None) if "meeting_types" in keys else {}
        for mt_id, (_, mt_node) in mts.items():
            mt_where = f"meeting type {company_id}/{mt_id}"
            mk = _mapping(mt_node, mt_where, MEETING_TYPE_KEYS)
            mappings = []
            if "field_mappings" in mk:
                items = mk["field_mappings"][1]
                if not isinstance(items, yaml.SequenceNode):
                    raise SettingsFileError(f"line {_line(items)}: field_mappings must be a list")
                for item in items.value:
                    fm = _mapping(item, f"a field mapping of {mt_where}", MAPPING_KEYS)
                    try:
                        mappings.append(FieldMapping(
                            Crm(_value(fm["crm"][1])), EventType(_value(fm["event_type"][1])), str(_value(fm["crm_field"][1])),
                            str(_value(fm["source"][1])), _bool(fm["allow_core"][1], "allow_core") if "allow_core" in fm else False,
                        ))
                    except (KeyError, ValueError) as exc:
                        raise SettingsFileError(f"line {_line(item)}: a field mapping needs crm, event_type, crm_field and source ({exc})") from None
            text = {k: _text(mk[k][1], k) if k in mk else None for k in ("salesforce_subject", "salesforce_comment", "hubspot_meeting_title", "hubspot_meeting_body")}
            mt = MeetingTypeSettings(
                company_id, mt_id, meeting_type_name=_text(mk["name"][1], "name") if "name" in mk else None,
                salesforce_todo=_events(mk["salesforce_todo"][1], "salesforce_todo") if "salesforce_todo" in mk else EventToggles(),
                hubspot_sync=_events(mk["hubspot_sync"][1], "hubspot_sync") if "hubspot_sync" in mk else EventToggles(),
                field_mappings=tuple(mappings), **text,
            )
            desired.docs.append(mt)
            desired.versions[doc_key(mt)] = _version(mk["version"][1] if "version" in mk else None)
    return desired


# -- comparing --------------------------------------------------------------------------------------

def _comparable(doc: Doc | None) -> Doc | None:
    return None if doc is None else dataclasses.replace(doc, updated_at=0, updated_by=None)


@dataclass(frozen=True)
class Change:
    key: str
    new: bool
    fields: Mapping[str, Mapping[str, Any]]

    def line(self) -> str:
        return f"{self.key}: {'new: ' if self.new else ''}{summary(self.fields)}"


def plan(desired: Desired, current: Callable[[Doc], Doc | None]) -> tuple[list[Doc], list[Change]]:
    """The documents whose settings differ from the current ones (to write), with what changes."""
    write: list[Doc] = []
    out: list[Change] = []
    for doc in desired.docs:
        before = _comparable(current(doc))
        diff = changes(before, doc)
        if before is None or diff:
            write.append(dataclasses.replace(doc, updated_at=0, updated_by=None))
            out.append(Change(doc_key(doc), before is None, diff))
    return write, out


def current_of(store: SettingsStore) -> Callable[[Doc], Doc | None]:
    def current(doc: Doc) -> Doc | None:
        if isinstance(doc, CompanySettings):
            return store.company(doc.company_id)
        return store.meeting_type(doc.company_id, doc.meeting_type_id)

    return current


def export_store(store: SettingsStore, company_ids: Sequence[str] | None) -> str:
    """The file of these companies (None: every company) as the store holds them now."""
    companies = store.companies() if company_ids is None else [c for c in store.companies() if c.company_id in set(company_ids)]
    if company_ids is not None and len(companies) != len(set(company_ids)):
        missing = sorted(set(company_ids) - {c.company_id for c in companies})
        raise SettingsFileError(f"unknown company: {', '.join(missing)}")

    def version(key: str) -> int:
        stamp = store.stamp(key)
        return stamp.version if stamp is not None else 0

    return export(companies, store.meeting_types, version)


def apply(admin: SettingsAdmin, desired: Desired, actor: str | None) -> list[Change]:
    """Write every document that differs, in one transaction with its audit entries, each only if
    it is still at the version the file was exported from (else `SettingsConflict`, nothing written)."""
    shown: list[Change] = []

    def make(store: SettingsStore) -> list[Doc]:
        write, found = plan(desired, current_of(store))
        shown[:] = found
        stamp = now_ms()
        return [dataclasses.replace(d, updated_at=stamp, updated_by=actor) for d in write]

    expected = {key: (version or 0) for key, version in desired.versions.items()}
    store = admin.load()
    if not plan(desired, current_of(store))[0]:
        return []
    admin.change(make, expected)
    return shown
