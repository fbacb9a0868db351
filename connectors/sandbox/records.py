"""The sandbox's record types and the CRMs' datetime formats (JSON-able through ``asdict``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any


CLOCK_SKEW_ENV = "CRM_SANDBOX_CLOCK_SKEW_SECONDS"
# The CRMs' clock minus the real one (negative: the CRM is behind): every creation time, search
# lag and datetime the sandbox answers is on this clock, as a CRM's own clock would be.
clock_skew_seconds: float = float(os.environ.get(CLOCK_SKEW_ENV) or 0.0)


def now_utc() -> datetime:
    """The current time on the CRMs' (possibly skewed) clock, timezone-aware."""
    return datetime.now(timezone.utc) + timedelta(seconds=clock_skew_seconds)


def parse_time(value: str | datetime | None) -> datetime:
    """An aware datetime from ISO text (``Z`` and ``+0000`` accepted) or a datetime."""
    if value is None:
        return now_utc()
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = value.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def sf_time(value: datetime) -> str:
    """Salesforce's datetime format: ``2024-01-02T03:04:05.000+0000``."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{value.microsecond // 1000:03d}+0000"
    )


def hs_time(value: datetime) -> str:
    """HubSpot's datetime format: ``2024-01-02T03:04:05.000Z``."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{value.microsecond // 1000:03d}Z"
    )


@dataclass
class SfUser:
    id: str
    email: str
    active: bool = True
    name: str = ""


@dataclass
class SfPerson:
    """A Contact or a Lead."""

    id: str
    sobject: str
    email: str
    owner_id: str
    last_modified: str
    first_name: str = ""
    last_name: str = ""
    is_converted: bool = False


@dataclass
class SfTask:
    id: str
    fields: dict[str, Any]
    created_at: str


@dataclass
class HsContact:
    id: str
    email: str
    properties: dict[str, str]
    created_at: str


@dataclass
class HsOwner:
    id: str
    email: str
    first_name: str
    last_name: str
    user_id: int


@dataclass
class HsObject:
    """A created meeting or note."""

    id: str
    object_type: str
    properties: dict[str, str]
    created_at: str


@dataclass
class HsAssociation:
    from_type: str
    from_id: str
    to_type: str
    to_id: str
    type_id: int


@dataclass
class SfConnectedApp:
    """A Connected App / External Client App: its certificate (JWT), secret and run-as user
    (client credentials), pre-authorized usernames and issued refresh tokens (token → username)."""

    consumer_key: str
    certificate: str = ""
    consumer_secret: str = ""
    users: list[str] = field(default_factory=list)
    run_as: str = ""
    refresh_tokens: dict[str, str] = field(default_factory=dict)


@dataclass
class HsOAuthApp:
    """A public HubSpot app installed in the portal; ``rotate`` issues a new refresh token per use."""

    client_id: str
    client_secret: str
    refresh_tokens: set[str] = field(default_factory=set)
    rotate: bool = False
