"""The Salesforce I/O shell over simple-salesforce: lookups, Task creation and reconciliation.

Every failure leaves as a ``connectors.errors.CrmError``. On ``INVALID_SESSION_ID`` the client
logs in again (login credentials) or re-reads its credentials (``reload``, e.g. after a secret
rotation) and retries once; a second failure is an ``AuthError`` (permanent). The JWT bearer and
client-credentials flows run through ``connectors.auth`` and their session is cached in a
``TokenCache`` (shared per company by the deliverer), so a login happens once, not per batch.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import requests
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import SalesforceError

from connectors import auth
from connectors.base import CrmClient, chunks, unique_lower
from connectors.credentials import SalesforceCredentials
from connectors.errors import (
    SALESFORCE, CrmError, PermanentError, Result, classify_salesforce, classify_salesforce_errors,
)

__all__ = ["Person", "Result", "SalesforceClient", "soql_datetime"]

PASSWORD_FLOW_WARNING = (
    "this company's Salesforce login uses the OAuth username-password flow, which Salesforce is "
    "retiring (announced for 2027): switch it to the JWT bearer or client credentials flow "
    "(docs/connecting-a-crm.md)"
)

API_VERSION = "59.0"
QUERY_CHUNK = 100
COLLECTION_LIMIT = 200
PERSON_SOBJECTS = ("Contact", "Lead")
RECONCILE_FIELDS = ("Id", "WhoId", "Subject", "ActivityDate", "Description", "CreatedDate")


@dataclass(frozen=True)
class Person:
    """A matched Lead or Contact."""

    id: str
    owner_id: str
    sobject: str


_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def soql_datetime(epoch_ms: int) -> str:
    """A SOQL datetime literal (UTC, whole seconds rounded down, never quoted)."""
    moment = datetime.fromtimestamp(epoch_ms // 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SalesforceClient(CrmClient[SalesforceCredentials, Salesforce]):
    """One company's Salesforce connection; blocking, meant to run in an executor thread."""

    crm = SALESFORCE

    def __init__(
        self,
        creds: SalesforceCredentials,
        ca_bundle: str | None = None,
        *,
        reload: Callable[[], SalesforceCredentials] | None = None,
        timeout: float = 30.0,
        api_version: str = API_VERSION,
        throttle: Callable[[], None] | None = None,
        tokens: auth.TokenCache | None = None,
        token_key: Hashable = "",
    ) -> None:
        super().__init__(creds, ca_bundle, reload=reload, timeout=timeout, throttle=throttle)
        self._api_version = api_version
        self._last = threading.local()
        self._sf: Salesforce | None = None
        self._usage: tuple[int, int] | None = None
        self._tokens = tokens if tokens is not None else auth.TokenCache()
        self._token_key = token_key
        self.logins = 0  # token requests made by this client (tests and `crm check` read it)

    def _session(self) -> requests.Session:
        """A session that ignores REQUESTS_CA_BUNDLE & co. so ``verify`` really applies."""
        session = requests.Session()
        session.trust_env = False
        session.verify = self._ca_bundle or True
        session.hooks["response"].append(self._remember)
        return session

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Keep headers for ``Retry-After`` and the org's API usage."""
        self._last.headers = response.headers
        limit_info = response.headers.get("Sforce-Limit-Info")
        usage = Salesforce.parse_api_usage(limit_info).get("api-usage") if limit_info else None
        if usage is not None:
            self._usage = (usage.used, usage.total)

    def _cache_key(self) -> Hashable:
        """The company's key plus who logs in where: new credentials never reuse an old org's token."""
        creds = self._creds
        return (self._token_key, creds.auth_type, creds.consumer_key, creds.username, creds.token_base_url)

    def _login(self) -> auth.Token:
        """A token from the cache, else from the org's token endpoint (JWT or client credentials)."""
        token = self._tokens.get(self._cache_key())
        if token is not None:
            return token
        creds = self._creds
        self.logins += 1
        with auth.plain_session(self._ca_bundle) as session:
            if creds.auth_type == "jwt":
                token = auth.salesforce_jwt(
                    session, consumer_key=creds.consumer_key or "", username=creds.username or "",
                    login_url=creds.token_base_url, private_key_file=creds.private_key_file or "",
                    timeout=self._timeout)
            else:
                token = auth.salesforce_client_credentials(
                    session, consumer_key=creds.consumer_key or "", consumer_secret=creds.consumer_secret or "",
                    my_domain_url=creds.token_base_url, timeout=self._timeout)
        self._tokens.put(self._cache_key(), token)
        return token

    def _connect(self) -> Salesforce:
        if self._creds.oauth:
            token = self._login()
            instance = self._creds.instance_for(token.instance_url)
            return Salesforce(session=self._session(), version=self._api_version,
                              session_id=token.access_token, instance_url=instance)
        kwargs: dict[str, Any] = dict(self._creds.salesforce_kwargs())
        instance_url = kwargs.get("instance_url", "")
        if "instance_url" in kwargs and "://" not in instance_url:
            kwargs["instance"] = kwargs.pop("instance_url")
        sf = Salesforce(session=self._session(), version=self._api_version, **kwargs)
        if self._creds.auth_type == "password":  # the SOAP login answer names the instance: checked like a token answer
            self._creds.instance_for(sf.sf_instance)
        return sf

    @property
    def sf(self) -> Salesforce:
        """The simple-salesforce client (logs in on first use for login credentials)."""
        if self._sf is None:
            self._sf = self._guard(self._connect)
        return self._sf

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """``(used, limit)`` from the last ``Sforce-Limit-Info`` header, if any."""
        return self._usage

    def _handle(self) -> Salesforce:
        return self.sf

    def _on_request(self) -> None:
        """Forget the previous response's headers so an error never reads stale ones."""
        self._last.headers = None

    def _classify(self, exc: Exception) -> CrmError | None:
        if isinstance(exc, SalesforceError):
            return classify_salesforce(exc, getattr(self._last, "headers", None))
        return None

    def _reauthenticate(self) -> bool:
        """Login credentials log in again; a bare session id can only be re-read (``reload``)."""
        if self._creds.oauth:
            self._tokens.drop(self._cache_key())
            if self._reload is not None:
                self._creds = self._reload()
            self._sf = None
            return True
        if self._creds.can_login:
            self._sf = None
            return True
        if self._reload is None:
            return False
        fresh = self._reload()
        self._creds, self._sf = fresh, None
        return True

    def _query(self, soql: str) -> list[dict[str, Any]]:
        result = self._call(lambda sf: sf.query_all(soql, timeout=self._timeout))
        return list(result.get("records", []))

    def find_users(self, emails: Iterable[str], active_only: bool = True) -> dict[str, str]:
        """Active Users by email: ``{email_lower: user_id}``."""
        wanted = unique_lower(emails)
        found: dict[str, str] = {}
        active = " AND IsActive = true" if active_only else ""
        for chunk in chunks(wanted, QUERY_CHUNK):
            soql = format_soql("SELECT Id, Email FROM User WHERE Email IN {}", list(chunk)) + active
            for record in self._query(soql):
                found.setdefault(str(record["Email"]).lower(), str(record["Id"]))
        return found

    def find_people(self, emails: Iterable[str]) -> dict[str, Person]:
        """Contacts, else unconverted Leads, by email; the most recently modified wins."""
        remaining = unique_lower(emails)
        found: dict[str, Person] = {}
        for sobject in PERSON_SOBJECTS:
            extra = " AND IsConverted = false" if sobject == "Lead" else ""
            for chunk in chunks(remaining, QUERY_CHUNK):
                soql = (
                    format_soql(
                        f"SELECT Id, OwnerId, Email, LastModifiedDate FROM {sobject} WHERE Email IN {{}}",
                        list(chunk),
                    )
                    + extra
                    + " ORDER BY LastModifiedDate DESC"
                )
                for record in self._query(soql):
                    key = str(record["Email"]).lower()
                    if key not in found:
                        found[key] = Person(str(record["Id"]), str(record["OwnerId"]), sobject)
            remaining = [e for e in remaining if e not in found]
        return found

    def find_tasks(self, field: str, values: Iterable[str]) -> dict[str, str]:
        """Tasks whose external-id ``field`` is one of ``values``: ``{value: task_id}``.

        The sink's check before creating: a Task created before a crash is found, not duplicated.
        """
        found: dict[str, str] = {}
        if not _FIELD_NAME.match(field):
            raise ValueError(f"not a Salesforce field name: {field!r}")
        for chunk in chunks(list(dict.fromkeys(values)), QUERY_CHUNK):
            soql = format_soql(f"SELECT Id, {field} FROM Task WHERE {field} IN {{}}", list(chunk))
            for record in self._query(soql):
                found.setdefault(str(record[field]), str(record["Id"]))
        return found

    def find_tasks_for(self, who_ids: Iterable[str], since_ms: int) -> list[dict[str, str]]:
        """Tasks on these Leads/Contacts created at or after ``since_ms`` (epoch milliseconds).

        Crash reconciliation without an external-id field: the worker compares what it meant to
        create with what exists. Each dict has Id, WhoId, Subject, ActivityDate, Description and
        CreatedDate (the org's clock; ``""`` where a field is empty); ``since`` is rounded down to
        the second, so a Task created in the same second is never missed.
        """
        since = soql_datetime(since_ms)
        columns = ", ".join(RECONCILE_FIELDS)
        found: list[dict[str, str]] = []
        for chunk in chunks(list(dict.fromkeys(who_ids)), QUERY_CHUNK):
            soql = format_soql(
                f"SELECT {columns} FROM Task WHERE WhoId IN {{}} AND CreatedDate >= {{:literal}}",
                list(chunk), since,
            )
            for record in self._query(soql):
                found.append({name: "" if record.get(name) is None else str(record[name])
                              for name in RECONCILE_FIELDS})
        return found

    def create_task(self, fields: Mapping[str, Any]) -> str:
        """Create one Task; returns its id."""
        result = self._call(lambda sf: sf.Task.create(dict(fields)))
        return str(result["id"])

    def create_tasks(self, records: Sequence[Mapping[str, Any]]) -> list[Result]:
        """Create Tasks through sObject Collections (200 per call); one ``Result`` per record."""
        results: list[Result] = []
        for chunk in chunks(records, COLLECTION_LIMIT):
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": "Task"}, **dict(r)} for r in chunk],
            }
            answer = self._call(
                lambda sf: sf.restful("composite/sobjects", method="POST", json=body,
                                      timeout=self._timeout)
            )
            results.extend(self._result(item) for item in answer or [])
        if len(results) != len(records):
            raise PermanentError(SALESFORCE, "UNEXPECTED_RESPONSE", None,
                                 "the CRM answered with a different number of results")
        return results

    @staticmethod
    def _result(item: Mapping[str, Any]) -> Result:
        if item.get("success"):
            return Result(id=str(item["id"]))
        return Result(error=classify_salesforce_errors(None, item.get("errors") or []))

    # -- preflight and preparation (``crm-sync crm check`` / ``prepare``) --

    def describe_task(self) -> dict[str, Any]:
        """``sobjects/Task/describe``: whether Tasks are createable and the fields they have."""
        return dict(self._call(lambda sf: sf.Task.describe()))

    def limits(self) -> dict[str, Any]:
        """The org's ``/limits`` (``DailyApiRequests``: ``{"Max", "Remaining"}``)."""
        return dict(self._call(lambda sf: sf.limits()))

    def create_external_id_field(self, field: str, label: str) -> dict[str, Any]:
        """A Task (Activity) custom text field marked External ID and Unique, via the Tooling API.

        External ID fields on Task are defined on the Activity object (``Activity.<field>``).
        """
        if not _FIELD_NAME.match(field) or not field.endswith("__c"):
            raise ValueError(f"not a custom field name (…__c): {field!r}")
        body = {
            "FullName": f"Activity.{field}",
            "Metadata": {"label": label, "type": "Text", "length": 64, "externalId": True,
                         "unique": True, "caseSensitive": True, "required": False},
        }
        return dict(self._call(lambda sf: sf.restful("tooling/sobjects/CustomField", method="POST",
                                                    json=body, timeout=self._timeout)) or {})
