"""A local Salesforce + HubSpot sandbox for tests and demos (see ``server.CrmSandbox``).

Login flows (``oauth``): Salesforce ``/services/oauth2/token`` (JWT bearer against a tenant's
Connected App certificate, client credentials, refresh token) and HubSpot ``/oauth/v1/token``
(refresh, rotation, revocation), with the CRMs' real error bodies and sessions/tokens that expire
after ``tenant.salesforce.session_lifetime`` / ``tenant.hubspot.token_lifetime``. Set them up with
``tenant.salesforce.add_connected_app(...)`` and ``tenant.hubspot.add_oauth_app(...)`` (or the
control API).

Tenants: the ``default`` tenant is one org + portal reached with ``DEFAULT_SESSION_ID`` and
``DEFAULT_HUBSPOT_TOKEN``; ``CrmSandbox.add_tenant(name)`` (``POST /__sandbox/tenants``) adds an
isolated one with its own session id, token and data. Requests reach the tenant whose
credentials they carry; a ``Fault(..., tenant=name)`` hits only that tenant's requests.

Seed document (Python ``CrmSandbox.seed``, ``POST /__sandbox/seed``, CLI ``--seed FILE``)::

    {"tenant"?: "default",
     "salesforce": {"sessions": ["..."],
                    "users": [{"email": "...", "id"?: "005...", "active"?: true, "name"?: "..."}],
                    "contacts": [{"email": "...", "owner_id" | "owner_email": "...",
                                  "last_modified"?: "2024-01-01T00:00:00Z", "id"?: "003..."}],
                    "leads": [{... as contacts ..., "is_converted"?: false}],
                    "task_custom_fields"?: ["CrmSyncActionId__c"]},
     "hubspot": {"tokens": ["..."], "custom_properties"?: ["crm_sync_action_id"],
                 "unique_properties"?: {"meetings": ["crm_sync_action_id"], "notes": [...]},
                 "contacts": [{"email": "...", "id"?: "...", "firstname"?: "...", ...}],
                 "owners": [{"email": "...", "first_name"?: "...", "last_name"?: "...", "id"?: "..."}]}}
"""

from connectors.sandbox.server import CrmSandbox
from connectors.sandbox.state import DEFAULT_HUBSPOT_TOKEN, DEFAULT_SESSION_ID, DEFAULT_TENANT, Fault
from connectors.sandbox.tenant import Tenant

__all__ = ["CrmSandbox", "DEFAULT_HUBSPOT_TOKEN", "DEFAULT_SESSION_ID", "DEFAULT_TENANT", "Fault",
           "Tenant"]
