"""A tiny SOQL subset for the sandbox: exactly the lookups crm-sync sends, nothing more.

Grammar (keywords and field names case-insensitive)::

    SELECT field {, field} FROM sobject
      [WHERE cond {AND cond}] [ORDER BY field [ASC|DESC]] [LIMIT n]
    cond := field = literal | field IN ( literal {, literal} )
          | datetime_field (= | < | <= | > | >=) datetime_literal

Task is queryable by its standard fields and by the org's custom fields (``extra_fields``), so
the sink's external-id check (``... FROM Task WHERE CrmSyncActionId__c IN (...)``) works, and by
``WhoId`` and ``CreatedDate`` for crash reconciliation
(``... WHERE WhoId IN (...) AND CreatedDate >= 2026-12-01T09:00:00Z``).

Datetime literals are unquoted ISO 8601 with ``Z`` or ``+hh:mm``, as in SOQL; a quoted value for a
datetime field, or a datetime for any other field, is refused as a real org refuses it.

String literals follow Salesforce's escaping rules (``\\n \\r \\t \\b \\f \\" \\' \\\\``);
anything else is rejected with the error code a real org would answer.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

SCHEMA: dict[str, tuple[str, ...]] = {
    "User": ("Id", "Email", "IsActive", "Name", "Username", "LastModifiedDate"),
    "Contact": ("Id", "OwnerId", "Email", "LastModifiedDate", "FirstName", "LastName", "Name"),
    "Lead": (
        "Id", "OwnerId", "Email", "LastModifiedDate", "FirstName", "LastName", "Name", "IsConverted",
    ),
    "Task": ("Id", "Subject", "WhoId", "OwnerId", "ActivityDate", "Description", "CreatedDate"),
}
FILTERABLE = frozenset({"Id", "Email", "IsActive", "OwnerId", "IsConverted", "WhoId", "CreatedDate"})
DATETIME_FIELDS = frozenset({"CreatedDate", "LastModifiedDate"})
_COMPARE: dict[str, Callable[[datetime, datetime], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')"
    r"|(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))"
    r"|(?P<num>\d+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct><=|>=|[(),=<>]))",
    re.DOTALL,
)
Value = str | bool | int | datetime


class SoqlError(Exception):
    """A query Salesforce would refuse; ``code`` is the Salesforce errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Condition:
    """``field = value`` (one value), ``field IN (values)``, or a datetime comparison ``op``."""

    field: str
    values: tuple[Value, ...]
    op: str = "="


@dataclass(frozen=True)
class Query:
    """A parsed SELECT."""

    sobject: str
    fields: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    order_by: str | None = None
    descending: bool = False
    limit: int | None = None


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    value: Value
    column: int


def unescape(literal: str, column: int = 0) -> str:
    """The value of a quoted SOQL string literal (quotes included in ``literal``)."""
    out: list[str] = []
    body = literal[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in _ESCAPES:
                raise SoqlError(
                    "MALFORMED_QUERY",
                    f"Invalid string literal at Row:1:Column:{column}. Illegal escape sequence",
                )
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _tokens(soql: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    text = soql.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise _unexpected(soql, pos + 1, text[pos:].strip()[:20] or "EOF")
        kind = match.lastgroup or ""
        raw = match.group(kind)
        column = match.start(kind) + 1
        value: Value = raw
        if kind == "str":
            value = unescape(raw, column)
        elif kind == "num":
            value = int(raw)
        elif kind == "datetime":
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        elif kind == "word" and raw.lower() in {"true", "false"}:
            kind, value = "bool", raw.lower() == "true"
        tokens.append(_Token(kind, raw, value, column))
        pos = match.end()
    return tokens


def _unexpected(soql: str, column: int, token: str) -> SoqlError:
    return SoqlError(
        "MALFORMED_QUERY",
        f"\n{soql}\n{' ' * max(0, column - 1)}^\nERROR at Row:1:Column:{column}\n"
        f"unexpected token: '{token}'",
    )


class _Parser:
    def __init__(self, soql: str, extra_fields: Mapping[str, frozenset[str]]) -> None:
        self.extra = extra_fields
        self.soql = soql
        self.tokens = _tokens(soql)
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> _Token:
        token = self.peek()
        if token is None:
            raise _unexpected(self.soql, len(self.soql) + 1, "<EOF>")
        self.pos += 1
        return token

    def fail(self, token: _Token) -> SoqlError:
        return _unexpected(self.soql, token.column, token.text)

    def keyword(self, *words: str) -> None:
        for word in words:
            token = self.next()
            if token.kind != "word" or token.text.upper() != word:
                raise self.fail(token)

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.text.upper() == word

    def punct(self, char: str) -> None:
        token = self.next()
        if token.kind != "punct" or token.text != char:
            raise self.fail(token)

    def word(self) -> str:
        token = self.next()
        if token.kind != "word":
            raise self.fail(token)
        return token.text

    def literal(self, field: str) -> Value:
        token = self.next()
        if token.kind not in {"str", "num", "bool", "datetime"}:
            raise self.fail(token)
        if (token.kind == "datetime") != (field in DATETIME_FIELDS):
            kind = "dateTime and should not" if field in DATETIME_FIELDS else "string and should"
            raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{field}' must "
                                             f"be of type {kind} be enclosed in quotes")
        return token.value

    def parse(self) -> Query:
        self.keyword("SELECT")
        names = [self.word()]
        while (token := self.peek()) is not None and token.text == ",":
            self.next()
            names.append(self.word())
        self.keyword("FROM")
        sobject = _sobject(self.word())
        fields = tuple(self.field(sobject, name) for name in names)
        conditions: list[Condition] = []
        if self.at_keyword("WHERE"):
            self.next()
            conditions.append(self.condition(sobject))
            while self.at_keyword("AND"):
                self.next()
                conditions.append(self.condition(sobject))
        order_by, descending = None, False
        if self.at_keyword("ORDER"):
            self.keyword("ORDER", "BY")
            order_by = self.field(sobject, self.word())
            if self.at_keyword("DESC") or self.at_keyword("ASC"):
                descending = self.next().text.upper() == "DESC"
        limit = None
        if self.at_keyword("LIMIT"):
            self.next()
            token = self.next()
            if token.kind != "num":
                raise self.fail(token)
            limit = int(token.text)
        if (token := self.peek()) is not None:
            raise self.fail(token)
        return Query(sobject, fields, tuple(conditions), order_by, descending, limit)

    def field(self, sobject: str, name: str) -> str:
        for custom in self.extra.get(sobject, frozenset()):
            if custom.lower() == name.lower():
                return custom
        return _field(sobject, name)

    def condition(self, sobject: str) -> Condition:
        name = self.field(sobject, self.word())
        if name not in FILTERABLE and name not in self.extra.get(sobject, frozenset()):
            raise SoqlError("INVALID_FIELD", f"field '{name}' can not be filtered in this sandbox")
        if self.at_keyword("IN"):
            self.next()
            self.punct("(")
            values = [self.literal(name)]
            while (token := self.peek()) is not None and token.text == ",":
                self.next()
                values.append(self.literal(name))
            self.punct(")")
            return Condition(name, tuple(values), "IN")
        token = self.next()
        if token.kind != "punct" or token.text not in {"=", *_COMPARE}:
            raise self.fail(token)
        if token.text != "=" and name not in DATETIME_FIELDS:
            raise SoqlError("INVALID_FIELD", f"this sandbox compares only datetime fields with "
                                             f"'{token.text}', not '{name}'")
        return Condition(name, (self.literal(name),), token.text)


def _sobject(name: str) -> str:
    for known in SCHEMA:
        if known.lower() == name.lower():
            return known
    raise SoqlError("INVALID_TYPE", f"sObject type '{name}' is not supported.")


def _field(sobject: str, name: str) -> str:
    for known in SCHEMA[sobject]:
        if known.lower() == name.lower():
            return known
    raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")


def parse(soql: str, extra_fields: Mapping[str, frozenset[str]] | None = None) -> Query:
    """Parse ``soql`` or raise ``SoqlError`` with the code Salesforce would use."""
    return _Parser(soql, extra_fields or {}).parse()


def _equal(actual: object, wanted: Value) -> bool:
    if isinstance(actual, str) and isinstance(wanted, str):
        return actual.casefold() == wanted.casefold()
    return actual == wanted


def _holds(actual: object, cond: Condition) -> bool:
    if cond.field in DATETIME_FIELDS:
        if not isinstance(actual, str):
            return False
        moment = datetime.fromisoformat(actual.replace("Z", "+00:00"))
        compare = _COMPARE.get(cond.op, operator.eq)
        return any(compare(moment, wanted) for wanted in cond.values if isinstance(wanted, datetime))
    return any(_equal(actual, value) for value in cond.values)


def matches(record: Mapping[str, object], query: Query) -> bool:
    """True if ``record`` satisfies every condition (strings compare case-insensitively,
    datetimes as instants)."""
    return all(_holds(record.get(cond.field), cond) for cond in query.conditions)
