"""The sandbox's tenants, call counters and fault queue, shared by both servers and the control API.

The ``default`` tenant exists from the start (and after ``reset``) with the default session id
and token; ``add_tenant`` creates more, each an isolated org + portal. A request is served by the
tenant that owns its Bearer credential, or that expired or revoked it (unknown credentials
reach the default tenant, which answers 401). Every public method takes the shared re-entrant lock, so tests may seed and
inspect from any thread.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from connectors.sandbox import records
from connectors.sandbox.records import HsOAuthApp, SfConnectedApp
from connectors.sandbox.tenant import HubSpotState, SalesforceState, Tenant

DEFAULT_SESSION_ID = "00Dsandbox!SESSION"
DEFAULT_HUBSPOT_TOKEN = "pat-sandbox-token"
DEFAULT_TENANT = "default"
CRMS = ("salesforce", "hubspot")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class Fault:
    """Applies to the next ``count`` requests to ``crm`` whose path contains ``path_contains``.

    ``status`` answers with a CRM-shaped error (429 and Salesforce's 403 carry ``retry_after``
    as ``Retry-After``); ``latency`` delays the request first; ``drop`` closes the connection
    without an answer (a network error). ``error_code`` overrides the CRM error code.
    ``commit`` carries the request out first and then answers with the fault, as when a CRM acted
    but its answer was lost or garbled: with an error status the client sees that error, with a
    2xx status an empty batch answer (no outcome for any record).
    ``tenant`` limits the fault to requests carrying that tenant's credentials (None: any tenant),
    e.g. ``Fault("hubspot", latency=60, count=100, tenant="b")`` hangs only company B's portal.
    """

    crm: str
    status: int | None = None
    count: int = 1
    path_contains: str | None = None
    retry_after: float | None = None
    latency: float = 0.0
    error_code: str | None = None
    drop: bool = False
    tenant: str | None = None
    commit: bool = False

    def __post_init__(self) -> None:
        if self.crm not in CRMS:
            raise ValueError(f"crm must be one of {CRMS}")
        if self.count < 1:
            raise ValueError("count must be >= 1")


class SandboxState:
    """All tenants plus the fault queue; ``to_dict``/``load`` persist it as JSON-able data."""

    def __init__(self, sessions: tuple[str, ...] = (DEFAULT_SESSION_ID,),
                 tokens: tuple[str, ...] = (DEFAULT_HUBSPOT_TOKEN,)) -> None:
        self.lock = threading.RLock()
        self._default_sessions = sessions
        self._default_tokens = tokens
        self.reset()

    def reset(self) -> None:
        """Drop all data, counters, faults and added tenants; keep the default session and token.
        The clock skew goes back to its environment default."""
        with self.lock:
            records.clock_skew_seconds = float(os.environ.get(records.CLOCK_SKEW_ENV) or 0.0)
            self.sequence: Counter[str] = Counter()
            self.faults: list[Fault] = []
            default = Tenant(DEFAULT_TENANT, self.lock, self.sequence, self._default_sessions,
                             self._default_tokens)
            self.tenants: dict[str, Tenant] = {DEFAULT_TENANT: default}

    @property
    def default(self) -> Tenant:
        """The tenant that was there before any ``add_tenant``."""
        return self.tenants[DEFAULT_TENANT]

    @property
    def salesforce(self) -> SalesforceState:
        """The default tenant's Salesforce org."""
        return self.default.salesforce

    @property
    def hubspot(self) -> HubSpotState:
        """The default tenant's HubSpot portal."""
        return self.default.hubspot

    def add_tenant(self, name: str, *, session_id: str | None = None,
                   hubspot_token: str | None = None) -> Tenant:
        """A new isolated tenant; credentials default to ones derived from ``name``."""
        if not _TENANT_NAME.match(name):
            raise ValueError("a tenant name is 1-64 letters, digits, '-' or '_'")
        session = session_id or f"00Dsandbox-{name}!SESSION"
        token = hubspot_token or f"pat-sandbox-{name}-token"
        with self.lock:
            if name in self.tenants:
                raise ValueError(f"tenant {name!r} already exists")
            for other in self.tenants.values():
                if any(other.owns("salesforce", session, revoked=r) or other.owns("hubspot", token, revoked=r)
                       for r in (False, True)):
                    raise ValueError(f"tenant {other.name!r} already uses these credentials")
            tenant = Tenant(name, self.lock, self.sequence, (session,), (token,))
            self.tenants[name] = tenant
            return tenant

    def tenant(self, name: str | None = None) -> Tenant:
        """The tenant called ``name`` (None: the default one)."""
        with self.lock:
            found = self.tenants.get(name or DEFAULT_TENANT)
        if found is None:
            raise ValueError(f"no tenant {name!r}")
        return found

    def tenant_for(self, crm: str, credential: str | None) -> Tenant:
        """The tenant whose session id (Salesforce) or token (HubSpot) ``credential`` is, else the
        one that expired or revoked it (so its 401s and scoped faults stay its own), else default."""
        with self.lock:
            for revoked in (False, True):
                for tenant in self.tenants.values():
                    if tenant.owns(crm, credential, revoked=revoked):
                        return tenant
            return self.default

    def salesforce_app(self, consumer_key: str) -> tuple[Tenant | None, SfConnectedApp | None]:
        """The tenant and Connected App with this consumer key (a JWT's ``iss``, a ``client_id``)."""
        with self.lock:
            for tenant in self.tenants.values():
                app = tenant.salesforce.apps.get(consumer_key)
                if app is not None:
                    return tenant, app
            return None, None

    def hubspot_app(self, client_id: str) -> tuple[Tenant | None, HsOAuthApp | None]:
        """The tenant (portal) where the public app with this client id is installed."""
        with self.lock:
            for tenant in self.tenants.values():
                app = tenant.hubspot.apps.get(client_id)
                if app is not None:
                    return tenant, app
            return None, None

    def count(self, crm: str, route: str, tenant: Tenant | None = None) -> None:
        """Record one received request for ``route`` (on the default tenant unless told)."""
        with self.lock:
            (tenant or self.default).calls[f"{crm} {route}"] += 1

    def call_counts(self, tenant: str | None = None) -> dict[str, int]:
        """Requests received per ``"<crm> <METHOD> <route>"``: one tenant's, or all tenants' summed."""
        with self.lock:
            if tenant is not None:
                return dict(self.tenant(tenant).calls)
            total: Counter[str] = Counter()
            for each in self.tenants.values():
                total.update(each.calls)
            return dict(total)

    def clear_calls(self) -> None:
        """Zero every tenant's counters."""
        with self.lock:
            for tenant in self.tenants.values():
                tenant.calls.clear()

    def inject(self, fault: Fault) -> None:
        """Queue a fault; faults apply in the order they were added."""
        with self.lock:
            if fault.tenant is not None:
                self.tenant(fault.tenant)
            self.faults.append(fault)

    def clear_faults(self) -> None:
        """Drop all pending faults."""
        with self.lock:
            self.faults.clear()

    def take_fault(self, crm: str, path: str, tenant: str = DEFAULT_TENANT) -> Fault | None:
        """Consume one use of the first pending fault matching ``crm``, ``path`` and ``tenant``."""
        with self.lock:
            for fault in self.faults:
                if (fault.crm == crm and (not fault.path_contains or fault.path_contains in path)
                        and fault.tenant in (None, tenant)):
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return Fault(**{**asdict(fault), "count": 1})
            return None

    def seed(self, data: dict[str, Any], tenant: str | None = None) -> dict[str, Any]:
        """Seed one tenant: ``tenant``, else the document's ``"tenant"``, else the default one."""
        return self.tenant(tenant or data.get("tenant")).seed(data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (faults excluded: they are transient by nature).

        The default tenant's sections stay at the top level, as before tenants existed; the
        others are under ``"tenants"``.
        """
        with self.lock:
            return {
                "sequence": dict(self.sequence),
                **self.default.to_dict(),
                "tenants": {name: t.to_dict() for name, t in self.tenants.items()
                            if name != DEFAULT_TENANT},
            }

    def load(self, data: dict[str, Any]) -> None:
        """Replace all data with a ``to_dict`` snapshot."""
        with self.lock:
            self.reset()
            self.sequence.update(data.get("sequence", {}))
            self.default.load(data)
            for name, section in (data.get("tenants") or {}).items():
                tenant = Tenant(name, self.lock, self.sequence, (), ())
                tenant.load(section)
                self.tenants[name] = tenant
