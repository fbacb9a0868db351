"""Salesforce-shaped 18-character ids and HubSpot-shaped numeric ids."""

from __future__ import annotations

import re

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SALESFORCE_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[A-Z0-5]{3})?$")
PREFIXES = {"User": "005", "Contact": "003", "Lead": "00Q", "Task": "00T", "CustomField": "00N"}


def checksum(id15: str) -> str:
    """Salesforce's case-safe suffix: one character per 5-character chunk's uppercase bitmap."""
    suffix = ""
    for chunk in range(3):
        bits = 0
        for i, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << i
        suffix += _SUFFIX[bits]
    return suffix


def salesforce_id(sobject: str, number: int) -> str:
    """The ``number``-th id of ``sobject``, e.g. ``005Sb00000000001AAA``-like."""
    digits = ""
    while True:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
        if number == 0:
            break
    id15 = PREFIXES[sobject] + "Sb" + digits.rjust(10, "0")
    return id15 + checksum(id15)


def is_salesforce_id(value: object) -> bool:
    """True for a well-formed 15- or 18-character id."""
    return isinstance(value, str) and bool(SALESFORCE_ID.match(value))


def to15(value: str) -> str:
    """The case-sensitive 15-character form used for lookups."""
    return value[:15]
