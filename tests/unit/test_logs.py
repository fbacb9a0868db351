"""The JSON logger's last line of defence: e-mails and credentials never reach a log line in clear."""

from __future__ import annotations

import json
import logging

import pytest

from processors.worker.logs import CREDENTIAL_KEYS, JsonFormatter, redact


def line(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> str:
    record = logging.LogRecord("crm_sync.test", logging.INFO, __file__, 1, msg, args, None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            import sys

            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    return JsonFormatter().format(record)


@pytest.mark.parametrize(
    "email",
    [
        "bo.booker@buyer.example",
        "Bo.Booker@Buyer.EXAMPLE",
        "o'brien+crm@mail.sub.buyer.example",
        "x_y-z@b-u.co.jp",
        "山田@例え.jp",
    ],
)
def test_an_email_anywhere_in_the_line_is_masked(email: str) -> None:
    text = line("lookup for %s failed", email, exc=ValueError(f"no contact {email}"), who=email, nested={"to": [email]})
    assert email not in text and email.lower() not in text.lower()
    assert json.loads(text)["who"] == "<email>"


def test_a_percent_encoded_email_in_a_url_is_masked() -> None:
    """CRM query URLs carry e-mails URL-encoded (SOQL IN (...), HubSpot searches)."""
    url = "https://sf.example/services/data/v59.0/query/?q=SELECT+Id+FROM+Contact+WHERE+Email+IN+(%27bo.booker%40buyer.example%27)"
    text = line("GET %s", url)
    assert "bo.booker%40buyer.example" not in text and "bo.booker" not in text


@pytest.mark.parametrize(
    "secret_text",
    [
        "Authorization: Bearer pat-na1-11111111-2222",
        "session_id=00Dxx0000001gPL!AQ4AQFsecret",
        '{"access_token": "pat-na1-11111111-2222"}',
        "password: hunter2-secret",
    ],
)
def test_credentials_are_masked(secret_text: str) -> None:
    text = line("request failed: %s", secret_text)
    for secret in ("pat-na1-11111111-2222", "00Dxx0000001gPL!AQ4AQFsecret", "hunter2-secret"):
        assert secret not in text


def test_credentials_in_structured_context_are_masked() -> None:
    text = line("credentials loaded", access_token="pat-na1-9999", session_id="00Dsecret!xyz")
    assert "pat-na1-9999" not in text and "00Dsecret!xyz" not in text
    assert json.loads(text)["access_token"] == "***"


def test_ids_and_context_stay_readable_and_the_line_stays_json() -> None:
    text = line("delivery", event_id="evt-123", action_id="act-9", crm="salesforce", outcome="created")
    parsed = json.loads(text)
    assert parsed["msg"] == "delivery"
    assert (parsed["event_id"], parsed["action_id"], parsed["crm"], parsed["outcome"]) == ("evt-123", "act-9", "salesforce", "created")
    assert {"ts", "level", "logger"} <= set(parsed)


def test_redact_keeps_text_without_secrets_unchanged() -> None:
    assert redact("released 3 actions for crm=hubspot at 12:00") == "released 3 actions for crm=hubspot at 12:00"


def test_a_library_repeating_itself_is_let_through_once_per_window() -> None:
    from processors.worker.logs import RepeatFilter

    now = [0.0]
    repeats = RepeatFilter(window=10.0, clock=lambda: now[0])

    def passes(name: str, msg: str) -> logging.LogRecord | None:
        record = logging.makeLogRecord({"name": name, "msg": msg})
        return record if repeats.filter(record) else None

    assert passes("aiokafka.conn", "Unable connect to %s")
    assert all(passes("aiokafka.conn", "Unable connect to %s") is None for _ in range(500))
    assert passes("crm_sync.deliver", "delivery") and passes("crm_sync.deliver", "delivery")  # ours: all of them
    now[0] = 10.0
    again = passes("aiokafka.conn", "Unable connect to %s")
    assert again is not None and again.repeated == 500


SECRET = "S3cr3t-Value_123"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nS3cr3t-Value_123\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize("key", CREDENTIAL_KEYS)
@pytest.mark.parametrize("form", ["{key}={secret}", "{key}: {secret}", '{{"{key}": "{secret}"}}', "{upper}={secret}", "{dashed}: {secret}"])
def test_every_credential_key_is_masked_in_every_spelling(key: str, form: str) -> None:
    text = form.format(key=key, upper=key.upper(), dashed=key.replace("_", "-"), secret=SECRET)
    assert SECRET not in line("auth failed: %s", text)
    assert SECRET not in line("auth failed", detail=text)


def test_spec_credential_keys_are_all_listed() -> None:
    for key in ("security_token", "consumer_secret", "client_secret", "refresh_token", "private_key", "session_id", "access_token", "password"):
        assert key in CREDENTIAL_KEYS


def test_a_pem_private_key_is_masked_whole() -> None:
    for text in (line("loaded %s", PEM), line("jwt config", config={"private_key_pem": PEM})):
        assert SECRET not in text and "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in text
        assert "<private key>" in text


def test_ordinary_words_next_to_key_names_stay() -> None:
    assert json.loads(line("password_reset flow started for tenant %s", "acme"))["msg"] == "password_reset flow started for tenant acme"


# ---- what the CRMs' and our own code's texts look like, camelCase and all ---------------------------

@pytest.mark.parametrize("text", [
    '{"sessionId": "S3cr3t-Value_123"}',
    "refreshToken=S3cr3t-Value_123",
    "clientSecret: S3cr3t-Value_123",
    '{"accessToken":"S3cr3t-Value_123"}',
    "privateKey=S3cr3t-Value_123",
    "consumerSecret=S3cr3t-Value_123",
    "securityToken: S3cr3t-Value_123",
    "apiKey=S3cr3t-Value_123",
    "Authorization: OAuth S3cr3t-Value_123",
    "authorization: Bearer S3cr3t-Value_123",
    "{'Authorization': 'OAuth S3cr3t-Value_123'}",
    "Authorization: Basic S3cr3t-Value_123",
    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=S3cr3t-Value_123",
    "grant_type=refresh_token&client_id=c&client_secret=S3cr3t-Value_123&refresh_token=S3cr3t-Value_123",
    "GET https://api.hubapi.com/oauth/v1/access-tokens/S3cr3t-Value_123 HTTP/1.1",
    "GET https://api.hubapi.com/oauth/v1/refresh-tokens/S3cr3t-Value_123",
    "https://x.example/cb?code=S3cr3t-Value_123&state=1",
    "https://x.example/cb?token=S3cr3t-Value_123",
    "used pat-na1-S3cr3t-Value_123 for the portal",
    "used pat-eu1-11111111-2222-3333-4444-S3cr3t-Value_123",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJDSyJ9.S3cr3t-Value_123",
    "session 00D5e000000ABCD!AQ4AQS3cr3t-Value_123 expired",
])
def test_camel_case_keys_auth_headers_form_bodies_tokens_and_url_paths_are_masked(text: str) -> None:
    assert SECRET not in line("request failed: %s", text)
    assert SECRET not in line("request failed", detail=text)
    assert SECRET not in redact(text)


def test_a_camel_case_key_in_structured_context_is_masked() -> None:
    text = line("token refreshed", refreshToken=SECRET, clientSecret=SECRET, sessionId=SECRET)
    assert SECRET not in text and json.loads(text)["refreshToken"] == "***"


@pytest.mark.parametrize("text", [
    "KAFKA_SASL_PASSWORD: expected a password (KAFKA_SECURITY_PROTOCOL is SASL_SSL), got nothing",
    "CRM_SYNC_HTTP_TOKEN: expected a token (CRM_SYNC_HTTP_BIND is 0.0.0.0, not loopback), got nothing",
    "hubspot BAD_REFRESH_TOKEN: the login was refused: the HubSpot refresh token was revoked or is unknown",
    "the login was refused: the JWT assertion had expired (check the worker's clock)",
    "the login was refused: the Connected App does not allow this OAuth flow",
])
def test_our_own_sentences_about_credentials_stay_readable(text: str) -> None:
    assert redact(text) == text


def test_every_credential_key_in_every_spelling_wakes_the_contextual_rules() -> None:
    """Contextual rules run only on a line holding a trigger: no key may slip past the trigger."""
    from processors.worker.logs import _TRIGGERS, FORM_KEYS

    for key in (*CREDENTIAL_KEYS, *FORM_KEYS):
        head, *rest = key.replace(".", "_").split("_")
        for spelled in (key, key.upper(), key.replace("_", "-"), head + "".join(w.title() for w in rest)):
            assert any(t in spelled.lower() for t in _TRIGGERS), spelled
