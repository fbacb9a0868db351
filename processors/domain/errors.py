"""The one error classification: the `error_class` a dead letter, a metric label and `dlq list
--error-class` show, for every failure whatever layer raised it.

Classes are named by role, not by the Python type that happened to be raised: a bug surfaces as
`InternalError`, never as `KeyError`. The names of the CRM classes are those of
`connectors.errors` (`TransientError`, `PermanentError`, `AuthError`, credentials problems), found
by name so that this layer imports no connector.
"""

from __future__ import annotations

DECODE = "DecodeError"
VALIDATION = "ValidationError"
SETTINGS = "SettingsError"
INTERNAL = "InternalError"
UNDELIVERABLE = "Undeliverable"
INVALID_RECORD = "InvalidInternalRecord"
TOO_LARGE = "RecordTooLarge"  # refused by Kafka for its size (`processors.kafka.sender`)

# Most specific first: a class whose MRO holds one of these names is classified by the first found.
KNOWN = (
    "EndpointRefused",
    "CredentialsMissing",
    "CredentialsInvalid",
    "AuthError",
    "TransientError",
    "PermanentError",
    DECODE,
    VALIDATION,
    SETTINGS,
    TOO_LARGE,
)


class Undecodable(ValueError):
    """Bytes that are not a record we can read: permanent, dead-lettered with `code` and the reason."""

    code = "undecodable"


def error_class(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in KNOWN:
            return cls.__name__
    return INTERNAL
