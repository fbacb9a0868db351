"""Every credential of a company, random each round, planted where credentials really turn up: in
log messages, structured context and exception text (the worker's JSON formatter), in the errors
our own code raises about a credentials file, and in the real CLI's output (a subprocess given a bad
configuration that makes it print errors carrying them). None may appear in clear anywhere.

Values are drawn from the characters tokens, session ids and secrets are made of (letters, digits
and ``-_.!~``); each shape the CRMs issue is planted too (a Salesforce session ``00D…!…``, a
HubSpot ``pat-…`` token, a JWT, a PEM key). No Kafka: the CLI runs commands that need no broker.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import random
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.credentials import CredentialStore, HubSpotCredentials, SalesforceCredentials
from connectors.errors import CrmError
from processors.worker.logs import JsonFormatter
from tests.integration.harness import ROOT

ALPHABET = string.ascii_letters + string.digits + "-_.!~"
ROUNDS = 25
PEM = "-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"


def token(rng: random.Random, n: int | None = None) -> str:
    """A random credential value; it always holds a digit and a letter, so it never reads as a word."""
    size = n or rng.randint(12, 48)
    return rng.choice(string.digits) + "".join(rng.choice(ALPHABET) for _ in range(size)) + rng.choice("xyz")


def b64url(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "-_") for _ in range(n))


def company_credentials(rng: random.Random) -> dict[str, str]:
    """Every credential one company can have, both CRMs and every flow."""
    return {
        "session_id": f"00D{''.join(rng.choice(string.ascii_letters + string.digits) for _ in range(12))}!{token(rng)}",
        "password": token(rng),
        "security_token": token(rng, 24),
        "consumer_secret": token(rng),
        "client_secret": token(rng, 36),
        "refresh_token": token(rng),
        "access_token": f"CN{token(rng)}",
        "private_app_token": f"pat-na1-{token(rng, 32)}",
        "private_key": PEM.format(body="\n".join(token(rng, 63) for _ in range(4))),
        "assertion": ".".join("eyJ" + b64url(rng, n) for n in (20, 40)) + "." + b64url(rng, 64),
        "http_token": token(rng),
    }


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


def plantings(creds: dict[str, str]) -> list[str]:
    """The texts credentials show up in: key/value pairs in every spelling, headers, form bodies,
    URLs with tokens in their path or query, a JWT and a PEM key on their own."""
    texts: list[str] = []
    for key, value in creds.items():
        if key in ("private_key", "assertion"):
            continue
        for spelled in (key, camel(key), key.upper(), key.replace("_", "-")):
            texts += [f"{spelled}={value}", f"{spelled}: {value}", json.dumps({spelled: value})]
    texts += [
        f"Authorization: Bearer {creds['access_token']}",
        f"Authorization: OAuth {creds['session_id']}",
        json.dumps({"headers": {"Authorization": f"Bearer {creds['private_app_token']}"}}),
        f"POST /services/oauth2/token grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={creds['assertion']}",
        f"grant_type=refresh_token&client_id=app&client_secret={creds['client_secret']}&refresh_token={creds['refresh_token']}",
        f"grant_type=client_credentials&client_id=CK&client_secret={creds['consumer_secret']}",
        f"GET https://api.hubapi.com/oauth/v1/access-tokens/{creds['access_token']}",
        f"GET https://api.hubapi.com/oauth/v1/refresh-tokens/{creds['refresh_token']}",
        f"HTTPSConnectionPool(host='api.hubapi.com', port=443): Max retries exceeded with url: "
        f"/oauth/v1/access-tokens/{creds['access_token']}",
        f"the portal answered for {creds['private_app_token']}",
        f"session {creds['session_id']} expired",
        f"signed {creds['assertion']}",
        f"key loaded: {creds['private_key']}",
    ]
    return texts


def secrets_in(text: str, creds: dict[str, str]) -> list[str]:
    """Which credentials appear in ``text`` in clear (a PEM key by any of its lines)."""
    found = [key for key, value in creds.items() if key != "private_key" and value in text]
    if any(line in text for line in creds["private_key"].splitlines()[1:-1]):
        found.append("private_key")
    return found


def log_line(message: str, *, extra: dict[str, object] | None = None, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("crm_sync.test", logging.ERROR, __file__, 1, message, None, None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            record.exc_info = sys.exc_info()
    record.__dict__.update(extra or {})
    return JsonFormatter().format(record)


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_no_planted_credential_survives_a_log_line(seed: int) -> None:
    creds = company_credentials(random.Random(seed))
    for text in plantings(creds):
        lines = [
            log_line(f"request failed: {text}"),
            log_line("request failed", extra={"detail": text, "response": {"body": text}}),
            log_line("request failed", exc=RuntimeError(f"the CRM said: {text}")),
        ]
        for line in lines:
            assert secrets_in(line, creds) == [], (text, line)
    context = {key: value for key, value in creds.items()} | {camel(key): value for key, value in creds.items()}
    line = log_line("credentials loaded", extra=context)
    assert secrets_in(line, creds) == [], line


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_no_planted_credential_survives_our_exceptions(seed: int, tmp_path: Path) -> None:
    """A credentials file naming a refused URL that embeds secrets, a broken file, a key file
    outside the company: the errors name the key and the host, never a value."""
    creds = company_credentials(random.Random(seed))
    cases = {
        "hubspot": [
            {"access_token": creds["private_app_token"],
             "base_url": f"https://user:{creds['password']}@10.0.0.1/{creds['access_token']}?hapikey={creds['http_token']}"},
            {"client_id": "c", "client_secret": creds["client_secret"], "refresh_token": creds["refresh_token"],
             "token_url": f"http://10.0.0.1/oauth/v1/token?refresh_token={creds['refresh_token']}"},
            {"access_token": creds["private_app_token"], "base_url": f"https://10.0.0.1\\@api.hubapi.com/{creds['access_token']}"},
        ],
        "salesforce": [
            {"instance_url": f"https://10.0.0.1/secur/frontdoor.jsp?sid={creds['session_id']}", "session_id": creds["session_id"]},
            {"username": "u", "password": creds["password"], "security_token": creds["security_token"],
             "domain": f"{creds['password']}.evil.example/x#"},
            {"consumer_key": "CK", "consumer_secret": creds["consumer_secret"],
             "my_domain_url": f"https://{creds['consumer_secret']}.example"},
            {"consumer_key": "CK", "username": "u", "private_key_file": str(tmp_path / "elsewhere.pem")},
        ],
    }
    (tmp_path / "elsewhere.pem").write_text(creds["private_key"])
    shown: list[str] = []
    for crm, files in cases.items():
        for i, data in enumerate(files):
            company = f"{crm}-{i}"
            (tmp_path / "secrets" / company).mkdir(parents=True)
            (tmp_path / "secrets" / company / f"{crm}.json").write_text(json.dumps(data))
            with pytest.raises(CrmError) as info:
                getattr(CredentialStore(tmp_path / "secrets"), crm)(company)
            shown += [str(info.value), repr(info.value), json.dumps(info.value.as_dict())]
        (tmp_path / "secrets" / f"{crm}-broken").mkdir()
        (tmp_path / "secrets" / f"{crm}-broken" / f"{crm}.json").write_text(json.dumps(files[0])[:-3])
        with pytest.raises(CrmError) as info:
            getattr(CredentialStore(tmp_path / "secrets"), crm)(f"{crm}-broken")
        shown.append(str(info.value))
    objects = [
        SalesforceCredentials(session_id=creds["session_id"], password=creds["password"], consumer_secret=creds["consumer_secret"]),
        HubSpotCredentials(access_token=creds["private_app_token"], client_secret=creds["client_secret"],
                           refresh_token=creds["refresh_token"]),
    ]
    shown += [repr(o) for o in objects] + [str(o) for o in objects]
    for text in shown:
        assert secrets_in(text, creds) == [], text


class _Echo(http.server.BaseHTTPRequestHandler):
    """A misbehaving proxy in front of the worker: it refuses with a body quoting the request's
    headers and whatever credentials it was configured with."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        echo = json.loads(self.body) | {"request_headers": dict(self.headers)}
        payload = json.dumps(echo).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[tuple[str, type[_Echo]]]:
    handler = type("Echo", (_Echo,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_SYNC_", "KAFKA_"))}
    return subprocess.run([sys.executable, "-m", "processors.ops.cli", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("seed", range(2))
def test_no_planted_credential_reaches_the_real_clis_output(
    seed: int, tmp_path: Path, echo: tuple[str, type[_Echo]]
) -> None:
    creds = company_credentials(random.Random(1000 + seed))
    url, handler = echo
    handler.body = json.dumps({
        "error": "unauthorized", "hint": " ".join(plantings(creds)),
        "sessionId": creds["session_id"], "refreshToken": creds["refresh_token"], "clientSecret": creds["client_secret"],
    }).encode()
    secrets = tmp_path / "secrets"
    for company, crm, data in (
        ("acme", "hubspot", {"client_id": "c", "client_secret": creds["client_secret"], "refresh_token": creds["refresh_token"],
                             "token_url": f"http://10.0.0.1/oauth/v1/token/{creds['access_token']}?code={creds['http_token']}"}),
        ("acme", "salesforce", {"username": "u", "password": creds["password"], "security_token": creds["security_token"],
                                "domain": f"{creds['security_token']}@10.0.0.1"}),
        ("broken", "hubspot", None),
    ):
        (secrets / company).mkdir(parents=True, exist_ok=True)
        text = json.dumps(data) if data else '{"access_token": "%s", "refresh_token": "%s"' % (
            creds["private_app_token"], creds["refresh_token"])
        (secrets / company / f"{crm}.json").write_text(text)
    env = {"CRM_SYNC_SECRETS_DIR": str(secrets), "CRM_SYNC_TOKEN_DIR": str(tmp_path / "tokens"),
           "CRM_SYNC_HTTP_TOKEN": creds["http_token"]}
    runs = [
        run_cli(env, "crm", "check", "--company", "acme"),
        run_cli(env, "crm", "check", "--company", "broken"),
        run_cli(env, "crm", "prepare", "--company", "acme", "--crm", "hubspot"),
        run_cli(env, "history", "--company", "acme", "--url", url),
    ]
    for run in runs:
        assert run.returncode != 0, run.args
        assert run.stderr.startswith("crm-sync: error:") and len(run.stderr.splitlines()) == 1, run.stderr
        assert secrets_in(run.stdout + run.stderr, creds) == [], (run.args, run.stdout, run.stderr)
    assert "worker answered 401" in runs[-1].stderr  # the refusal is still readable
    assert "ENDPOINT_REFUSED" in runs[0].stdout
