"""``CrmSandbox``: both fake CRMs in one object, each on its own loopback HTTP server.

Salesforce is served over HTTPS (simple-salesforce only builds ``https://`` URLs) with a
certificate from a throwaway CA that trustme generates; HubSpot and the control API over plain
HTTP. Data lives in one ``SandboxState``; with a ``state_file`` it is loaded at start and
rewritten after every request that changes it, so another process can inspect it afterwards.
Both servers serve every tenant: the request's credentials pick the org or portal.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import trustme

from connectors.sandbox import control_api, hubspot_api, oauth, salesforce_api
from connectors.sandbox.http import Request, Response
from connectors.sandbox.state import DEFAULT_HUBSPOT_TOKEN, DEFAULT_SESSION_ID, Fault, SandboxState
from connectors.sandbox.tenant import HubSpotState, SalesforceState, Tenant

logger = logging.getLogger(__name__)
App = Callable[[Request], Response | None]


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP/1.1 requests into ``Request`` values for the server's ``app``."""

    protocol_version = "HTTP/1.1"
    server_version = "crm-sync-sandbox"
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        resp = self.server.app(Request(self.command, self.path, dict(self.headers.items()), body))
        if resp is None:
            self.close_connection = True
            return
        payload = resp.encoded()
        self.send_response(resp.status)
        if payload:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Method and path only: query strings and email-keyed paths carry personal data."""
        path = urlsplit(getattr(self, "path", "") or "").path
        safe = "/".join("***" if "@" in part else part for part in path.split("/"))
        logger.debug("sandbox %s %s", getattr(self, "command", "-"), safe)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: App, tls: ssl.SSLContext | None) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.tls = tls

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("sandbox connection error", exc_info=True)


class CrmSandbox:
    """A local Salesforce (HTTPS) + HubSpot (HTTP) sandbox with seeding, inspection and faults."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        sf_port: int = 0,
        hs_port: int = 0,
        state_file: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        sessions: tuple[str, ...] = (DEFAULT_SESSION_ID,),
        tokens: tuple[str, ...] = (DEFAULT_HUBSPOT_TOKEN,),
        cert_names: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        # Extra names the Salesforce certificate is valid for, e.g. `sandbox` for clients that reach
        # it by a compose service name rather than by the address it binds.
        self.cert_names = cert_names
        self.state = SandboxState(sessions, tokens)
        self.state_file = Path(state_file) if state_file else None
        self.session_id = sessions[0] if sessions else None
        self.hubspot_token = tokens[0] if tokens else None
        self._ports = (sf_port, hs_port)
        self._ca_file = Path(ca_file) if ca_file else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.loaded_from_file = False
        self._save_lock = threading.Lock()

    @property
    def salesforce(self) -> SalesforceState:
        """Seed and inspect the default tenant's Salesforce data (``add_user``, ``list_tasks``…)."""
        return self.state.salesforce

    @property
    def hubspot(self) -> HubSpotState:
        """Seed and inspect the default tenant's HubSpot data (``add_contact``, ``list_notes``…)."""
        return self.state.hubspot

    def add_tenant(self, name: str, *, session_id: str | None = None,
                   hubspot_token: str | None = None) -> dict[str, Any]:
        """Create an isolated org + portal; returns ``info()`` with its ``tenant``, ``session_id``
        and ``hubspot_token`` (only those three before ``start``)."""
        tenant = self.state.add_tenant(name, session_id=session_id, hubspot_token=hubspot_token)
        self.save()
        return {**(self.info() if self._servers else {}), **tenant.credentials()}

    def tenant(self, name: str) -> Tenant:
        """A tenant, to seed and inspect: ``sb.tenant("b").salesforce.add_user(...)``."""
        return self.state.tenant(name)

    @property
    def salesforce_instance(self) -> str:
        """``127.0.0.1:PORT``, the ``instance_url`` simple-salesforce wants."""
        return f"{self.host}:{self._servers[0].server_address[1]}"

    @property
    def salesforce_url(self) -> str:
        return f"https://{self.salesforce_instance}"

    @property
    def hubspot_url(self) -> str:
        return f"http://{self.host}:{self._servers[1].server_address[1]}"

    @property
    def ca_file(self) -> str:
        """PEM file of the CA that signed the Salesforce server certificate."""
        if self._ca_file is None:
            raise RuntimeError("the sandbox is not started")
        return str(self._ca_file)

    def info(self) -> dict[str, Any]:
        """What a client needs to connect (printed by the CLI, served at ``/__sandbox/health``)."""
        return {
            "salesforce_url": self.salesforce_url,
            "salesforce_instance": self.salesforce_instance,
            "hubspot_url": self.hubspot_url,
            "ca_file": self.ca_file,
            "session_id": self.session_id,
            "hubspot_token": self.hubspot_token,
        }

    def start(self) -> CrmSandbox:
        """Generate the certificates, load the state file and start both servers."""
        if self._servers:
            return self
        if self.state_file is not None and self.state_file.exists():
            self.state.load(json.loads(self.state_file.read_text(encoding="utf-8")))
            self.loaded_from_file = True
        tls = self._tls_context()
        self._servers = [
            _Server((self.host, self._ports[0]), self._crm_app("salesforce", salesforce_api), tls),
            _Server((self.host, self._ports[1]), self._crm_app("hubspot", hubspot_api), None),
        ]
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, name="crm-sandbox", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, save the state file and remove temporary certificates."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []
        self.save()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._ca_file = None

    def __enter__(self) -> CrmSandbox:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def seed(self, data: dict[str, Any], tenant: str | None = None) -> dict[str, Any]:
        """Load a seed document into a tenant (default: the document's, else the default one)."""
        return self.state.seed(data, tenant)

    def reset(self) -> None:
        """Drop all data, counters, faults and added tenants."""
        self.state.reset()

    def inject(self, fault: Fault) -> None:
        """Queue a fault for upcoming requests (``fault.tenant`` scopes it to one tenant)."""
        self.state.inject(fault)

    def calls(self, tenant: str | None = None) -> dict[str, int]:
        """Requests received per ``"<crm> <METHOD> <route>"``, for one tenant or all together."""
        return self.state.call_counts(tenant)

    def save(self) -> None:
        """Write the state file atomically (no-op without one)."""
        if self.state_file is None:
            return
        with self._save_lock:
            data = json.dumps(self.state.to_dict(), ensure_ascii=False, indent=1)
            tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, self.state_file)

    def _tls_context(self) -> ssl.SSLContext:
        ca = trustme.CA(organization_name="crm-sync sandbox")
        cert = ca.issue_cert(*dict.fromkeys((self.host, "127.0.0.1", "localhost", *self.cert_names)))
        if self._ca_file is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="crm-sandbox-")
            self._ca_file = Path(self._tmpdir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self._ca_file))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    def _crm_app(self, crm: str, api: ModuleType) -> App:
        def app(req: Request) -> Response | None:
            if crm == "hubspot" and req.path.startswith(control_api.PREFIX):
                resp = control_api.handle(self.state, req, self.info())
            elif oauth.is_token_route(crm, req.path):
                with self.state.lock:
                    if crm == "salesforce":
                        owner, resp = oauth.salesforce_token(self.state, req, self.salesforce_url)
                    else:
                        owner, resp = oauth.hubspot_token(self.state, req)
                    route = req.path if crm == "salesforce" else req.path.split("/access-tokens/")[0]
                    self.state.count(crm, f"{req.method} {route}", owner)
            else:
                tenant = self.state.tenant_for(crm, req.bearer())
                self.state.count(crm, api.route_name(req), tenant)
                fault = self.state.take_fault(crm, req.path, tenant.name)
                if fault is not None and fault.latency:
                    time.sleep(fault.latency)
                if fault is not None and fault.drop:
                    return None
                resp = api.handle(tenant, req, fault if fault and fault.status else None)
            if req.method != "GET":
                self.save()
            return resp
        return app
