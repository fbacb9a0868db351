"""One sandbox tenant: a Salesforce org and a HubSpot portal with their own credentials and data.

Tenants share the sandbox's re-entrant lock and id sequence, so ids never repeat across tenants
(as real record ids do not across orgs); a request reaches the tenant its credentials belong to.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import Counter, deque
from dataclasses import asdict
from datetime import datetime
from typing import Any

from connectors.sandbox.ids import salesforce_id, to15
from connectors.sandbox.records import (
    HsAssociation, HsContact, HsOAuthApp, HsObject, HsOwner, SfConnectedApp, SfPerson, SfTask,
    SfUser, hs_time, now_utc, parse_time, sf_time,
)

SEARCH_LAG_ENV = "CRM_SANDBOX_HUBSPOT_SEARCH_LAG_SECONDS"
DEFAULT_API_LIMIT = 15_000
DEFAULT_HUBSPOT_DAILY_LIMIT = 250_000
DEFAULT_HUBSPOT_SCOPES = frozenset({
    "crm.objects.contacts.read", "crm.objects.owners.read", "crm.objects.contacts.write",
    "crm.schemas.contacts.read", "sales-email-read", "oauth",
})


class SalesforceState:
    """Users, Contacts, Leads, Tasks and valid session ids."""

    def __init__(self, lock: threading.RLock, sequence: Counter[str]) -> None:
        self._lock = lock
        self._seq = sequence
        self.sessions: set[str] = set()
        self.expired: set[str] = set()
        self.users: dict[str, SfUser] = {}
        self.people: dict[str, SfPerson] = {}
        self.tasks: list[SfTask] = []
        self.task_custom_fields: set[str] = set()
        self.task_unique_fields: set[str] = set()
        self.api_usage = 0
        self.api_limit = DEFAULT_API_LIMIT
        self.apps: dict[str, SfConnectedApp] = {}
        # Sessions the token endpoint issues live this long (None: until expired by hand).
        self.session_lifetime: float | None = None
        self.session_expiry: dict[str, float] = {}
        self.task_createable = True

    def add_connected_app(self, consumer_key: str, *, certificate: str = "", consumer_secret: str = "",
                          users: list[str] | tuple[str, ...] = (), run_as: str = "",
                          refresh_tokens: dict[str, str] | None = None) -> SfConnectedApp:
        """Register a Connected App (JWT: ``certificate`` + pre-authorized ``users``; client
        credentials: ``consumer_secret`` + ``run_as``)."""
        with self._lock:
            app = SfConnectedApp(consumer_key, certificate, consumer_secret, list(users), run_as,
                                 dict(refresh_tokens or {}))
            self.apps[consumer_key] = app
            return app

    def issue_session(self, session_id: str) -> None:
        """A session from the token endpoint, valid for ``session_lifetime``."""
        with self._lock:
            self.add_session(session_id)
            if self.session_lifetime is not None:
                self.session_expiry[session_id] = time.time() + self.session_lifetime

    def valid_session(self, session_id: str | None) -> bool:
        """True while ``session_id`` is accepted; an expired one moves to ``expired``."""
        with self._lock:
            if session_id not in self.sessions:
                return False
            until = self.session_expiry.get(session_id)
            if until is not None and time.time() >= until:
                self.expire_session(session_id)
                return False
            return True

    def next_id(self, sobject: str) -> str:
        """A fresh id for ``sobject``."""
        with self._lock:
            self._seq[sobject] += 1
            return salesforce_id(sobject, self._seq[sobject])

    def add_session(self, session_id: str) -> None:
        """Accept ``session_id`` as a valid Bearer token."""
        with self._lock:
            self.sessions.add(session_id)
            self.expired.discard(session_id)

    def expire_session(self, session_id: str) -> None:
        """Requests with ``session_id`` now get 401 INVALID_SESSION_ID."""
        with self._lock:
            self.sessions.discard(session_id)
            self.expired.add(session_id)

    def add_user(self, email: str, *, id: str | None = None, active: bool = True, name: str = "") -> str:
        """Seed a User; returns its id."""
        with self._lock:
            user = SfUser(id or self.next_id("User"), email, active, name)
            self.users[to15(user.id)] = user
            return user.id

    def _add_person(self, sobject: str, email: str, owner_id: str | None, last_modified: str | datetime | None,
                    id: str | None, first_name: str, last_name: str, is_converted: bool) -> str:
        with self._lock:
            owner = owner_id
            if not owner:
                first = next(iter(self.users.values()), None)
                owner = first.id if first else self.add_user("owner@sandbox.invalid")
            person = SfPerson(
                id or self.next_id(sobject), sobject, email, owner,
                sf_time(parse_time(last_modified)), first_name, last_name, is_converted,
            )
            self.people[to15(person.id)] = person
            return person.id

    def add_contact(self, email: str, *, owner_id: str | None = None,
                    last_modified: str | datetime | None = None, id: str | None = None,
                    first_name: str = "", last_name: str = "Contact") -> str:
        """Seed a Contact (owner defaults to the first User); returns its id."""
        return self._add_person("Contact", email, owner_id, last_modified, id, first_name, last_name, False)

    def add_lead(self, email: str, *, owner_id: str | None = None,
                 last_modified: str | datetime | None = None, id: str | None = None,
                 first_name: str = "", last_name: str = "Lead", is_converted: bool = False) -> str:
        """Seed a Lead (owner defaults to the first User); returns its id."""
        return self._add_person("Lead", email, owner_id, last_modified, id, first_name, last_name,
                                is_converted)

    def add_task(self, fields: dict[str, Any], *, created_at: str | datetime | None = None) -> str:
        """Store a Task (unvalidated; the API validates first); ``created_at`` backdates a seeded one."""
        with self._lock:
            task = SfTask(self.next_id("Task"), {k: v for k, v in fields.items() if k != "attributes"},
                          sf_time(parse_time(created_at)))
            self.tasks.append(task)
            return task.id

    def list_tasks(self) -> list[dict[str, Any]]:
        """Created Tasks: ``{"id", "created_at", **fields}``."""
        with self._lock:
            return [{"id": t.id, "created_at": t.created_at, **copy.deepcopy(t.fields)} for t in self.tasks]


class HubSpotState:
    """Contacts, owners, created meetings/notes, associations and valid tokens."""

    def __init__(self, lock: threading.RLock, sequence: Counter[str]) -> None:
        self._lock = lock
        self._seq = sequence
        self.tokens: set[str] = set()
        self.revoked: set[str] = set()
        self.contacts: dict[str, HsContact] = {}
        self.owners: dict[str, HsOwner] = {}
        self.objects: dict[str, HsObject] = {}
        self.associations: list[HsAssociation] = []
        self.custom_properties: set[str] = set()
        self.unique_properties: dict[str, set[str]] = {}  # object type → properties with unique values
        self.property_defs: dict[tuple[str, str], dict[str, Any]] = {}
        self.rate_windows: dict[str, deque[float]] = {}
        self.apps: dict[str, HsOAuthApp] = {}
        self.token_lifetime: float = 1800.0
        self.token_expiry: dict[str, float] = {}
        self.scopes: set[str] = set(DEFAULT_HUBSPOT_SCOPES)
        self.token_scopes: dict[str, set[str]] = {}
        self.daily_limit = DEFAULT_HUBSPOT_DAILY_LIMIT
        self.daily_usage = 0
        # HubSpot's search index lags its object store: a meeting or note is found by search only
        # this long after it was created (reads by id or unique property see it at once).
        self.search_lag_seconds: float = float(os.environ.get(SEARCH_LAG_ENV) or 0.0)

    def add_oauth_app(self, client_id: str, client_secret: str, refresh_token: str, *,
                      rotate: bool = False) -> HsOAuthApp:
        """Install a public app with one valid refresh token."""
        with self._lock:
            app = self.apps.get(client_id) or HsOAuthApp(client_id, client_secret, set(), rotate)
            app.client_secret, app.rotate = client_secret, rotate
            app.refresh_tokens.add(refresh_token)
            self.apps[client_id] = app
            return app

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """The refresh token stops working (the app was uninstalled or the grant revoked)."""
        with self._lock:
            for app in self.apps.values():
                app.refresh_tokens.discard(refresh_token)

    def issue_token(self, token: str) -> None:
        """An access token from the token endpoint, valid for ``token_lifetime`` seconds."""
        with self._lock:
            self.add_token(token)
            self.token_expiry[token] = time.time() + self.token_lifetime

    def valid_token(self, token: str | None) -> bool:
        """True while ``token`` is accepted; an expired one moves to ``revoked``."""
        with self._lock:
            if token not in self.tokens:
                return False
            until = self.token_expiry.get(token)
            if until is not None and time.time() >= until:
                self.revoke_token(token)
                return False
            return True

    def next_id(self, kind: str) -> str:
        """A fresh numeric id; kinds get distinct ranges like HubSpot portals do."""
        base = {"contacts": 1_000, "owners": 70_000_000, "objects": 40_000_000_000, "users": 9_000_000}
        with self._lock:
            self._seq[f"hs-{kind}"] += 1
            return str(base[kind] + self._seq[f"hs-{kind}"])

    def add_token(self, token: str) -> None:
        """Accept ``token`` as a valid Bearer token."""
        with self._lock:
            self.tokens.add(token)
            self.revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        """Requests with ``token`` now get 401 INVALID_AUTHENTICATION."""
        with self._lock:
            self.tokens.discard(token)
            self.revoked.add(token)

    def add_contact(self, email: str, *, id: str | None = None, **properties: str) -> str:
        """Seed a contact with extra properties (``firstname``, ``company``…); returns its id."""
        with self._lock:
            contact_id = id or self.next_id("contacts")
            stamp = hs_time(now_utc())
            props = {"email": email, **{k: str(v) for k, v in properties.items()}}
            self.contacts[contact_id] = HsContact(contact_id, email, props, stamp)
            return contact_id

    def add_owner(self, email: str, *, id: str | None = None, first_name: str = "",
                  last_name: str = "") -> str:
        """Seed an owner; returns its id."""
        with self._lock:
            owner_id = id or self.next_id("owners")
            self.owners[owner_id] = HsOwner(owner_id, email, first_name, last_name,
                                            int(self.next_id("users")))
            return owner_id

    def _list(self, object_type: str) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for obj in self.objects.values():
                if obj.object_type != object_type:
                    continue
                links = [asdict(a) for a in self.associations
                         if a.from_type == object_type and a.from_id == obj.id]
                out.append({"id": obj.id, "created_at": obj.created_at,
                            "properties": dict(obj.properties), "associations": links})
            return out

    def list_meetings(self) -> list[dict[str, Any]]:
        """Created meetings with their properties and associations."""
        return self._list("meetings")

    def list_notes(self) -> list[dict[str, Any]]:
        """Created notes with their properties and associations."""
        return self._list("notes")

    def list_associations(self) -> list[dict[str, Any]]:
        """All associations made through the API."""
        with self._lock:
            return [asdict(a) for a in self.associations]


class Tenant:
    """One org + portal; ``session_id`` and ``hubspot_token`` are the credentials it was created with."""

    def __init__(self, name: str, lock: threading.RLock, sequence: Counter[str],
                 sessions: tuple[str, ...], tokens: tuple[str, ...]) -> None:
        self.name = name
        self.lock = lock
        self.salesforce = SalesforceState(lock, sequence)
        self.hubspot = HubSpotState(lock, sequence)
        self.calls: Counter[str] = Counter()
        self.session_id = sessions[0] if sessions else None
        self.hubspot_token = tokens[0] if tokens else None
        for session in sessions:
            self.salesforce.add_session(session)
        for token in tokens:
            self.hubspot.add_token(token)

    def owns(self, crm: str, credential: str | None, *, revoked: bool = False) -> bool:
        """True if ``credential`` is valid here (or, with ``revoked``, was and no longer is)."""
        if crm == "salesforce":
            return credential in (self.salesforce.expired if revoked else self.salesforce.sessions)
        return credential in (self.hubspot.revoked if revoked else self.hubspot.tokens)

    def credentials(self) -> dict[str, Any]:
        """What a client of this tenant needs besides the URLs."""
        return {"tenant": self.name, "session_id": self.session_id, "hubspot_token": self.hubspot_token}

    def seed(self, data: dict[str, Any]) -> dict[str, Any]:
        """Load a seed document (see the package docstring) into this tenant; returns the created ids."""
        sf = data.get("salesforce") or {}
        hs = data.get("hubspot") or {}
        created: dict[str, dict[str, Any]] = {"salesforce": {}, "hubspot": {}}
        with self.lock:
            for session in sf.get("sessions", []):
                self.salesforce.add_session(session)
            users = created["salesforce"].setdefault("users", {})
            for user in sf.get("users", []):
                users[user["email"]] = self.salesforce.add_user(
                    user["email"], id=user.get("id"), active=user.get("active", True),
                    name=user.get("name", ""))
            for kind, add in (("contacts", self.salesforce.add_contact), ("leads", self.salesforce.add_lead)):
                ids = created["salesforce"].setdefault(kind, [])
                for person in sf.get(kind, []):
                    owner = person.get("owner_id") or users.get(person.get("owner_email", ""))
                    extra = {"is_converted": person["is_converted"]} if "is_converted" in person else {}
                    ids.append(add(person["email"], owner_id=owner, id=person.get("id"),
                                   last_modified=person.get("last_modified"),
                                   first_name=person.get("first_name", ""), **extra))
            for field_name in sf.get("task_custom_fields", []):
                self.salesforce.task_custom_fields.add(field_name)
            for token in hs.get("tokens", []):
                self.hubspot.add_token(token)
            for name in hs.get("custom_properties", []):
                self.hubspot.custom_properties.add(name)
            for object_type, names in hs.get("unique_properties", {}).items():  # as `crm prepare` makes them
                self.hubspot.custom_properties.update(names)
                self.hubspot.unique_properties.setdefault(object_type, set()).update(names)
            contacts = created["hubspot"].setdefault("contacts", {})
            for contact in hs.get("contacts", []):
                props = {k: v for k, v in contact.items() if k not in {"email", "id"}}
                contacts[contact["email"]] = self.hubspot.add_contact(
                    contact["email"], id=contact.get("id"), **props)
            owners = created["hubspot"].setdefault("owners", {})
            for owner in hs.get("owners", []):
                owners[owner["email"]] = self.hubspot.add_owner(
                    owner["email"], id=owner.get("id"), first_name=owner.get("first_name", ""),
                    last_name=owner.get("last_name", ""))
        return created

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of this tenant's credentials, data and call counters."""
        with self.lock:
            sf, hs = self.salesforce, self.hubspot
            return {
                "session_id": self.session_id,
                "hubspot_token": self.hubspot_token,
                "calls": dict(self.calls),
                "salesforce": {
                    "sessions": sorted(sf.sessions),
                    "expired_sessions": sorted(sf.expired),
                    "users": [asdict(u) for u in sf.users.values()],
                    "people": [asdict(p) for p in sf.people.values()],
                    "tasks": [asdict(t) for t in sf.tasks],
                    "task_custom_fields": sorted(sf.task_custom_fields),
                    "task_unique_fields": sorted(sf.task_unique_fields),
                    "api_usage": sf.api_usage,
                    "api_limit": sf.api_limit,
                    "apps": [asdict(a) for a in sf.apps.values()],
                    "session_expiry": dict(sf.session_expiry),
                },
                "hubspot": {
                    "tokens": sorted(hs.tokens),
                    "revoked_tokens": sorted(hs.revoked),
                    "custom_properties": sorted(hs.custom_properties),
                    "unique_properties": {k: sorted(v) for k, v in hs.unique_properties.items()},
                    "apps": [{**asdict(a), "refresh_tokens": sorted(a.refresh_tokens)}
                             for a in hs.apps.values()],
                    "token_expiry": dict(hs.token_expiry),
                    "contacts": [asdict(c) for c in hs.contacts.values()],
                    "owners": [asdict(o) for o in hs.owners.values()],
                    "objects": [asdict(o) for o in hs.objects.values()],
                    "associations": [asdict(a) for a in hs.associations],
                },
            }

    def load(self, data: dict[str, Any]) -> None:
        """Replace this tenant's data with a ``to_dict`` snapshot (older files lack the credentials)."""
        with self.lock:
            self.session_id = data.get("session_id", self.session_id)
            self.hubspot_token = data.get("hubspot_token", self.hubspot_token)
            self.calls = Counter(data.get("calls", {}))
            sf, hs = data.get("salesforce", {}), data.get("hubspot", {})
            self.salesforce.sessions = set(sf.get("sessions", []))
            self.salesforce.expired = set(sf.get("expired_sessions", []))
            self.salesforce.users = {to15(u["id"]): SfUser(**u) for u in sf.get("users", [])}
            self.salesforce.people = {to15(p["id"]): SfPerson(**p) for p in sf.get("people", [])}
            self.salesforce.tasks = [SfTask(**t) for t in sf.get("tasks", [])]
            self.salesforce.task_custom_fields = set(sf.get("task_custom_fields", []))
            self.salesforce.api_usage = int(sf.get("api_usage", 0))
            self.salesforce.api_limit = int(sf.get("api_limit", self.salesforce.api_limit))
            self.salesforce.task_unique_fields = set(sf.get("task_unique_fields", []))
            self.salesforce.apps = {a["consumer_key"]: SfConnectedApp(**a) for a in sf.get("apps", [])}
            self.salesforce.session_expiry = dict(sf.get("session_expiry", {}))
            self.hubspot.tokens = set(hs.get("tokens", []))
            self.hubspot.revoked = set(hs.get("revoked_tokens", []))
            self.hubspot.custom_properties = set(hs.get("custom_properties", []))
            self.hubspot.unique_properties = {k: set(v) for k, v in hs.get("unique_properties", {}).items()}
            self.hubspot.apps = {a["client_id"]: HsOAuthApp(**{**a, "refresh_tokens": set(a["refresh_tokens"])})
                                 for a in hs.get("apps", [])}
            self.hubspot.token_expiry = dict(hs.get("token_expiry", {}))
            self.hubspot.contacts = {c["id"]: HsContact(**c) for c in hs.get("contacts", [])}
            self.hubspot.owners = {o["id"]: HsOwner(**o) for o in hs.get("owners", [])}
            self.hubspot.objects = {o["id"]: HsObject(**o) for o in hs.get("objects", [])}
            self.hubspot.associations = [HsAssociation(**a) for a in hs.get("associations", [])]
