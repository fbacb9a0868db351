"""Structured JSON logs. Event and action ids are welcome; e-mails and secrets never are.

Callers pass context with `extra={...}`; as a last line of defence any e-mail address or
credential (a value under any spelling of a key of CREDENTIAL_KEYS, an Authorization header, a
bearer token, a HubSpot `pat-…` token, a Salesforce session id, a JWT, a PEM private key, a token
in a URL path or form body) that still slips into a message is masked before the line is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Callable

# "@" or its URL encoding (CRM query URLs carry e-mails as bo%40buyer.example).
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+")
# Every credential key of SPEC §10 and of the CRM credential files (Salesforce session, password
# and OAuth/JWT flows, HubSpot tokens), the Kafka SASL password and the HTTP token.
CREDENTIAL_KEYS = (
    "access_token", "refresh_token", "id_token", "session_id", "security_token", "password", "passwd",
    "consumer_secret", "client_secret", "private_key", "api_key", "sasl_password", "sasl.password", "http_token",
    "token_key", "client_assertion", "hapikey",
)
# Keys that are also plain words ("the JWT assertion had expired"): masked only after "=" or ":".
FORM_KEYS = ("assertion", "token", "secret", "signature")


def _spellings(key: str) -> str:
    """``access_token`` as written anywhere: access_token, access-token, ACCESS.TOKEN, accessToken."""
    return r"[_.\-]?".join(re.escape(word) for word in re.split(r"[_.]", key))


# Separators include "\" because the line is matched after JSON encoding: a message holding
# {"access_token": "..."} reads {\"access_token\": \"...\"} by then.
_VALUE = r"[^\s\\\"',}]+"
_KEYS = "|".join(_spellings(key) for key in CREDENTIAL_KEYS)
_FORM = "|".join(_spellings(key) for key in FORM_KEYS)
# After a key, our own sentences go on in prose ("KAFKA_SASL_PASSWORD: expected a password (…)",
# "BAD_REFRESH_TOKEN: the login was refused"): such a word, or a bracket, is not a value.
_PROSE = r"(?!(?:expected|the|a|an|is|was|of|for|to|not|must|cannot|missing|invalid|refused|revoked|unknown|none|null)\b|[(<\[])"
# Credentials by their shape, found wherever they are (each pattern starts with a literal: fast).
_SHAPES = [
    # A PEM private key (a JWT signing key) whole, with its newlines raw or JSON-escaped.
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL), "<private key>"),
    # A JWT (a bearer assertion, an id token): three base64url parts, the first two JSON.
    (re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]*"), "<jwt>"),
    # A Salesforce session id (org id "00D…", "!", the session), and a HubSpot private-app token.
    (re.compile(r"00D(?<![A-Za-z0-9]00D)[\w-]*![\w.-]+"), "***"),
    (re.compile(r"pat-(?<![A-Za-z0-9]pat-)[A-Za-z0-9]+-[\w-]+"), "pat-***"),
]
# Credentials by their context (a key, a header, a URL): only looked for in a line that mentions one.
_TRIGGERS = ("token", "secret", "passw", "session", "key", "assertion", "signature", "authorization", "bearer",
             "code=", "sid=", "sig=")
_CONTEXT = [
    # Authorization: Bearer|OAuth|Basic <credential>, and a bare "Bearer <token>".
    (re.compile(r"(?i)(authorization[\\\"']*\s*[:=]\s*[\\\"']*(?:(?:bearer|oauth|basic|token)\s+)?)" + _VALUE), r"\1***"),
    (re.compile(r"(?i)(\bbearer\s+)" + _VALUE), r"\1***"),
    # key=value, key: value, "key": "value" (camelCase, dashed or upper case too).
    (re.compile(rf"(?i)((?:{_KEYS})[\\\"'=:\s]+){_PROSE}" + _VALUE), r"\1***"),
    (re.compile(rf"(?i)(\b(?:{_FORM})[\\\"']*\s*[=:]\s*[\\\"']*){_PROSE}" + _VALUE), r"\1***"),
    # An OAuth code, a token or a key in a URL's query.
    (re.compile(r"(?i)([?&;](?:code|token|key|hapikey|sig|signature|sid)=)[^&\s#\\\"']+"), r"\1***"),
    # A token as a URL path segment: /oauth/v1/access-tokens/<token>, /refresh-tokens/<token>.
    (re.compile(r"(?i)(/[\w-]*(?:tokens?|secrets?|keys?|sessions?)/)[^/\s?#\\\"']+"), r"\1***"),
]
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with every e-mail and credential masked: for log lines and the CLI's error lines."""
    text = _EMAIL.sub("<email>", text)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    lowered = text.lower()
    if any(trigger in lowered for trigger in _TRIGGERS):
        for pattern, replacement in _CONTEXT:
            text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, ensure_ascii=False, default=str))


class RepeatFilter(logging.Filter):
    """Library loggers (aiokafka, Faust) log every failed attempt during a broker outage — 190,000
    lines for 27 s were seen. The same message from the same logger is let through once per
    `window` seconds; the next one that passes says how many were held back."""

    NOISY = ("aiokafka", "kafka", "faust", "mode")

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.NOISY):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self._window:
            self._seen[key] = (last, held + 1)
            return False
        if held:
            record.repeated = held
        self._seen[key] = (now, 0)
        return True


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def setup(level: str) -> logging.Handler:
    handler = json_handler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


def logging_config(level: str) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "processors.worker.logs.JsonFormatter"}},
        "filters": {"repeats": {"()": "processors.worker.logs.RepeatFilter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr", "filters": ["repeats"]}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"level": "WARNING"} for name in ("faust", "mode", "aiokafka", "kafka")},
    }
