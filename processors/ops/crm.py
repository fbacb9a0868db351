"""`crm-sync crm check` (a preflight before a company goes live) and `crm-sync crm prepare`.

`check` runs, per CRM, one check per line, each ok or failed with a reason: the credentials log
in; the integration user may create Tasks (Salesforce) or meetings and notes associated with
contacts (HubSpot, by the token's scopes); a User/owner and a Contact/Lead lookup work; the
company's external-id field or property (if configured) exists and is unique; and how much of the
daily API quota is left. The evaluation of what the CRM answered is pure (the `*_checks`
functions); the I/O is the connectors'.

`prepare` creates the crash-safe idempotency field where the API allows it (Salesforce: an
Activity custom text field, External ID + Unique, through the Tooling API; HubSpot: a meeting and
a note property with unique values, through the properties API) and records it in the company's
credentials file (`action_id_field` / `action_id_property`), which the deliverer then uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.credentials import CredentialStore, HubSpotCredentials, SalesforceCredentials
from connectors.errors import CrmError
from connectors.hubspot import HubSpotClient
from connectors.salesforce import PASSWORD_FLOW_WARNING, SalesforceClient

SALESFORCE = "salesforce"
HUBSPOT = "hubspot"
DEFAULT_SALESFORCE_FIELD = "CrmSyncActionId__c"
DEFAULT_HUBSPOT_PROPERTY = "crm_sync_action_id"
FIELD_LABEL = "crm-sync action id"
# Meetings and notes associated with contacts are written under the contacts write scope.
HUBSPOT_SCOPES = ("crm.objects.contacts.read", "crm.objects.owners.read", "crm.objects.contacts.write")
PROBE_EMAIL = "crm-sync-preflight@example.invalid"


@dataclass(frozen=True)
class Check:
    """One preflight line."""

    crm: str
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        return f"{self.crm:<10} {self.name:<16} {mark:<6} {self.detail}".rstrip()


def exit_code(checks: Sequence[Check]) -> int:
    """0 when every check passed, else 1."""
    return 0 if checks and all(c.ok for c in checks) else 1


# ---- pure evaluation ------------------------------------------------------------------------------

def task_checks(describe: Mapping[str, Any], field: str | None) -> list[Check]:
    """Task describe → may the user create Tasks; does the external-id field exist and is it unique."""
    createable = bool(describe.get("createable"))
    out = [Check(SALESFORCE, "create Tasks", createable,
                 "the integration user may create Tasks" if createable
                 else "the integration user may not create Tasks (profile or permission set: Tasks create)")]
    out.append(field_check(SALESFORCE, field, _field(describe, field), "externalId", "unique"))
    return out


def _field(describe: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
    for item in describe.get("fields") or []:
        if isinstance(item, Mapping) and name and str(item.get("name", "")).lower() == name.lower():
            return item
    return None


def field_check(crm: str, name: str | None, found: Mapping[str, Any] | None, *flags: str) -> Check:
    """The optional external-id field/property: absent config is fine (reconciliation covers it)."""
    label = "external id"
    if not name:
        return Check(crm, label, True, "none configured (exactly-once relies on reconciliation; "
                                       "`crm-sync crm prepare` creates one)")
    if found is None:
        return Check(crm, label, False, f"{name} does not exist (run `crm-sync crm prepare`)")
    missing = [flag for flag in flags if not found.get(flag)]
    if missing:
        return Check(crm, label, False, f"{name} exists but is not {' and '.join(missing)}")
    return Check(crm, label, True, f"{name} exists and is unique")


def scope_check(scopes: Iterable[str]) -> Check:
    """HubSpot: meetings and notes with contact associations need these scopes."""
    have = set(scopes)
    missing = [s for s in HUBSPOT_SCOPES if s not in have]
    if missing:
        return Check(HUBSPOT, "create meetings", False, f"the token lacks the scopes {', '.join(missing)}")
    return Check(HUBSPOT, "create meetings", True,
                 "scopes allow meetings and notes associated with contacts")


def salesforce_limits_usage(limits: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(used, limit)`` from ``/limits`` DailyApiRequests."""
    daily = limits.get("DailyApiRequests")
    if not isinstance(daily, Mapping):
        return None
    try:
        limit, remaining = int(daily["Max"]), int(daily["Remaining"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0, limit - remaining), limit


def quota_check(crm: str, usage: tuple[int, int] | None, defer_ratio: float, extra: str = "") -> Check:
    """Remaining daily quota; failed at the share where the worker starts deferring."""
    if usage is None:
        return Check(crm, "api quota", True, "the CRM reported no daily quota" + (f"; {extra}" if extra else ""))
    used, limit = usage
    share = used / limit if limit > 0 else 1.0
    detail = f"{limit - used} of {limit} daily calls left ({share:.0%} used)" + (f"; {extra}" if extra else "")
    if share >= defer_ratio:
        return Check(crm, "api quota", False, f"{detail}: at or above {defer_ratio:.0%}, deliveries are deferred")
    return Check(crm, "api quota", True, detail)


def _failed(crm: str, name: str, error: CrmError) -> Check:
    return Check(crm, name, False, f"{error.message} ({error.code})")


def _step(crm: str, name: str, run: Callable[[], Check]) -> Check:
    try:
        return run()
    except CrmError as error:
        return _failed(crm, name, error)


# ---- the I/O of the preflight -------------------------------------------------------------------

def check_salesforce(client: SalesforceClient, creds: SalesforceCredentials, defer_ratio: float) -> list[Check]:
    """Login, Task permission, lookups, external-id field, quota."""
    note = f" (warning: {PASSWORD_FLOW_WARNING})" if creds.auth_type == "password" else ""
    try:
        limits = client.limits()
    except CrmError as error:
        login = _failed(SALESFORCE, "login", error)
        return [login, *(Check(SALESFORCE, n, False, "not run: the login failed")
                         for n in ("create Tasks", "lookups", "external id", "api quota"))]
    out = [Check(SALESFORCE, "login", True, f"logged in with the {creds.auth_type} flow{note}")]
    try:
        out.extend(task_checks(client.describe_task(), creds.action_id_field))
    except CrmError as error:
        out.extend([_failed(SALESFORCE, "create Tasks", error), _failed(SALESFORCE, "external id", error)])

    def lookups() -> Check:
        client.find_users([PROBE_EMAIL])
        client.find_people([PROBE_EMAIL])
        return Check(SALESFORCE, "lookups", True, "User, Contact and Lead queries work")

    out.insert(2, _step(SALESFORCE, "lookups", lookups))
    header = client.api_usage
    extra = f"Sforce-Limit-Info api-usage={header[0]}/{header[1]}" if header else ""
    out.append(quota_check(SALESFORCE, salesforce_limits_usage(limits) or header, defer_ratio, extra))
    return out


def check_hubspot(client: HubSpotClient, creds: HubSpotCredentials, defer_ratio: float) -> list[Check]:
    """Login (token introspection), scopes, lookups, external-id property, quota."""
    try:
        info = client.token_info() if creds.auth_type == "oauth" else client.private_app_info()
    except CrmError as error:
        login = _failed(HUBSPOT, "login", error)
        return [login, *(Check(HUBSPOT, n, False, "not run: the login failed")
                         for n in ("create meetings", "lookups", "external id", "api quota"))]
    flow = "an OAuth app (refresh token)" if creds.auth_type == "oauth" else "a private app token"
    out = [Check(HUBSPOT, "login", True, f"logged in with {flow}"), scope_check(info.get("scopes") or [])]

    def lookups() -> Check:
        client.find_contacts([PROBE_EMAIL])
        client.find_owner(PROBE_EMAIL)
        return Check(HUBSPOT, "lookups", True, "contact and owner lookups work")

    out.append(_step(HUBSPOT, "lookups", lookups))
    prop = creds.action_id_property

    def property_check() -> Check:
        if not prop:
            return field_check(HUBSPOT, None, None)
        for object_type in ("meetings", "notes"):
            found = client.property_info(object_type, prop)
            check = field_check(HUBSPOT, f"{object_type}.{prop}", found, "hasUniqueValue")
            if not check.ok:
                return check
        return Check(HUBSPOT, "external id", True, f"{prop} exists on meetings and notes and is unique")

    out.append(_step(HUBSPOT, "external id", property_check))
    headers = client.rate_headers
    interval = ""
    if "x-hubspot-ratelimit-remaining" in headers:
        interval = (f"{headers['x-hubspot-ratelimit-remaining']} of {headers.get('x-hubspot-ratelimit-max', '?')} "
                    f"calls left in the {headers.get('x-hubspot-ratelimit-interval-milliseconds', '?')} ms window")
    out.append(quota_check(HUBSPOT, client.api_usage, defer_ratio, interval))
    return out


def clients_for(store: CredentialStore, company: str, crm: str, ca_bundle: str | None) -> Any:
    """The company's client for one CRM, wired like the deliverer's (token write-back included)."""
    if crm == SALESFORCE:
        return SalesforceClient(store.salesforce(company), ca_bundle, timeout=15,
                                reload=lambda: store.salesforce(company, fresh=True))
    return HubSpotClient(store.hubspot(company), ca_bundle, timeout=15,
                         reload=lambda: store.hubspot(company, fresh=True),
                         persist=lambda changes: store.rotate(company, HUBSPOT, changes),
                         lease=lambda: store.refresh_lease(company, HUBSPOT))


def run_check(store: CredentialStore, company: str, crms: Sequence[str], ca_bundle: str | None,
              defer_ratio: float) -> list[Check]:
    """Every check for the company's CRMs; missing or unreadable credentials are a failed login."""
    out: list[Check] = []
    for crm in crms:
        try:
            client = clients_for(store, company, crm, ca_bundle)
            creds = store.salesforce(company) if crm == SALESFORCE else store.hubspot(company)
        except CrmError as error:
            out.append(_failed(crm, "login", error))
            continue
        if crm == SALESFORCE:
            out.extend(check_salesforce(client, creds, defer_ratio))
        else:
            out.extend(check_hubspot(client, creds, defer_ratio))
    return out


# ---- prepare ----------------------------------------------------------------------------------------

def _record(store: CredentialStore, company: str, crm: str, changes: dict[str, str], done: str) -> None:
    """Write the field into the company's file; where it is mounted read-only, say what to add."""
    try:
        store.update(company, crm, changes)
    except OSError as exc:
        raise ValueError(f"{crm}: {done}, but {crm}.json could not be written ({exc.strerror}): "
                         f"add {json.dumps(changes)} to the company's {crm}.json where it is kept") from None


def prepare_salesforce(store: CredentialStore, company: str, ca_bundle: str | None,
                       field: str = DEFAULT_SALESFORCE_FIELD) -> str:
    """Create the Task external-id field unless it exists (External ID + Unique), then record it."""
    client: SalesforceClient = clients_for(store, company, SALESFORCE, ca_bundle)
    found = _field(client.describe_task(), field)
    if found is None:
        client.create_external_id_field(field, FIELD_LABEL)
        outcome = f"created Activity.{field} (Text 64, External ID, Unique)"
    elif found.get("externalId") and found.get("unique"):
        outcome = f"Activity.{field} already exists (External ID, Unique)"
    else:
        raise ValueError(f"Activity.{field} exists but is not marked External ID and Unique: fix it in Setup")
    _record(store, company, SALESFORCE, {"action_id_field": field}, outcome)
    return f"salesforce: {outcome}; recorded as action_id_field"


def prepare_hubspot(store: CredentialStore, company: str, ca_bundle: str | None,
                    prop: str = DEFAULT_HUBSPOT_PROPERTY) -> str:
    """Create the unique meeting and note property unless they exist, then record it."""
    client: HubSpotClient = clients_for(store, company, HUBSPOT, ca_bundle)
    done = []
    for object_type in ("meetings", "notes"):
        found = client.property_info(object_type, prop)
        if found is None:
            client.create_unique_property(object_type, prop, FIELD_LABEL)
            done.append(f"created {object_type}.{prop}")
        elif found.get("hasUniqueValue"):
            done.append(f"{object_type}.{prop} already exists")
        else:
            raise ValueError(f"{object_type}.{prop} exists but does not have unique values: use another name")
    _record(store, company, HUBSPOT, {"action_id_property": prop}, ", ".join(done))
    return f"hubspot: {', '.join(done)} (unique values); recorded as action_id_property"
