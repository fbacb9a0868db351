"""The one declaration of who may do what on the broker (SPEC §7, §11 least privilege), behind
`crm-sync acls print|apply`.

Every grant is derived from `Config` (topic names, the app id that prefixes the worker's groups),
so a deployment with its own topic names gets ACLs for those names. `docs/security.md` shows the
output of `crm-sync acls print` for the defaults, and a unit test checks that it still matches.

Roles and what they need, no more:
- worker: reads the inputs, the settings, the settings audit and its internal topics, writes its internal topics, the
  dead letters and the history, creates the topics it needs at start, and uses the groups
  `<app id>-*`. It uses no transactions (its producer is idempotent, which needs only WRITE). It
  does not create the input topics: they are the upstream's, and their owner creates them.
- admin: reads and writes the settings topic through transactions `crm-sync-admin-*`; for
  `crm-sync dlq` it reads the dead letters and writes their statuses, the retry topic (retries),
  the input topics (re-ingesting a record that never became an action) and the history; it reads
  the history for `crm-sync history`.
- publisher: writes its input topics only.
- nobody: deletes records or topics, adds partitions or changes topic configs. That stays with the
  platform's super user.
- SRE (optional): describes topics, their configs and the worker's groups (lag); reads nothing,
  so it sees no personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType, ResourceType

from processors.config import Config
from processors.kafka import clients
from processors.kafka.read import READER_GROUP_PREFIX
from processors.kafka.topics import topic_specs

ADMIN_TRANSACTIONAL_PREFIX = "crm-sync-admin-"
ROLES = ("worker", "admin", "publisher", "sre")
_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "transactional-id": ResourceType.TRANSACTIONAL_ID}


@dataclass(frozen=True)
class Grant:
    """One role's operations on one resource (a literal name, or every name with a prefix)."""

    role: str
    resource: str
    name: str
    prefixed: bool
    operations: tuple[str, ...]
    why: str


def grants(config: Config) -> list[Grant]:
    """Every grant of every role, in the order `print` shows them."""
    t = config.topics
    internal = [t.delay, t.retry, t.retry_medium, t.retry_long, t.due_salesforce, t.due_hubspot, t.ledger_salesforce, t.ledger_hubspot]
    out: list[Grant] = []

    def topic(role: str, names: Iterable[str], ops: tuple[str, ...], why: str) -> None:
        out.extend(Grant(role, "topic", name, False, ops, why) for name in names)

    topic("worker", t.inputs, ("READ",), "ingest (the upstream creates them)")
    topic("worker", [t.settings], ("READ", "CREATE"), "the settings table")
    topic("worker", [t.audit], ("READ",), "the settings table applies only audited changes")
    topic("worker", internal, ("READ", "WRITE", "CREATE"), "delay, retry, due topics and ledgers")
    topic("worker", [t.delay, t.retry, t.retry_medium, t.retry_long], ("DESCRIBE_CONFIGS",), "retention checked at start")
    topic("worker", [t.dead_letter], ("WRITE", "CREATE"), "dead letters")
    topic("worker", [t.dead_letter_index], ("WRITE", "CREATE"), "the dead letters' index (by id)")
    topic("worker", [t.history], ("READ", "WRITE", "CREATE"), "sync history (and /history)")
    out.append(Grant("worker", "group", f"{config.app_id}-", True, ("READ",), "the stages' consumer groups"))
    out.append(Grant("worker", "group", READER_GROUP_PREFIX, True, ("DESCRIBE",), "topic readers (no commits)"))
    if config.previous_app_id:
        out.append(Grant("worker", "group", f"{config.previous_app_id}-", True, ("DESCRIBE",), "new groups start at the old app id's commits"))

    topic("admin", [t.settings], ("READ", "WRITE", "CREATE"), "crm-sync settings")
    topic("admin", [t.audit], ("READ", "WRITE", "CREATE"), "the settings audit (crm-sync settings log)")
    out.append(Grant("admin", "transactional-id", ADMIN_TRANSACTIONAL_PREFIX, True, ("WRITE", "DESCRIBE"), "settings transactions"))
    out.append(Grant("admin", "group", READER_GROUP_PREFIX, True, ("DESCRIBE",), "topic readers (no commits)"))
    topic("admin", [t.dead_letter], ("READ", "WRITE"), "dlq list/show, and retry/resolve statuses")
    topic("admin", [t.dead_letter_index], ("READ", "WRITE"), "dlq show/retry/resolve by id; their states")
    topic("admin", [t.retry], ("WRITE",), "dlq retry of an action")
    topic("admin", t.inputs, ("READ", "WRITE"), "dlq retry of a record that never became an action; backfill reads and re-sends")
    topic("admin", [t.history], ("READ", "WRITE"), "crm-sync history; retries and resolutions counted")

    topic("publisher", t.inputs, ("WRITE",), "upstream events")

    topic("sre", topic_specs(config), ("DESCRIBE", "DESCRIBE_CONFIGS"), "topic health, no records")
    out.append(Grant("sre", "group", f"{config.app_id}-", True, ("DESCRIBE",), "consumer lag"))
    return out


def principal(name: str) -> str:
    """`worker` and `User:worker` both name the SASL user `worker`."""
    return name if ":" in name else f"User:{name}"


def bindings(config: Config, principals: dict[str, Sequence[str]]) -> list[AclBinding]:
    """The ALLOW bindings for every role that has principals (role → principal names)."""
    out = []
    for grant in grants(config):
        for who in principals.get(grant.role, ()):
            for op in grant.operations:
                out.append(
                    AclBinding(
                        _RESOURCES[grant.resource],
                        grant.name,
                        ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL,
                        principal(who),
                        "*",
                        AclOperation[op],
                        AclPermissionType.ALLOW,
                    )
                )
    return out


def table(config: Config, principals: dict[str, Sequence[str]]) -> str:
    """A Markdown table of the grants (what `crm-sync acls print` shows and docs/security.md holds)."""
    rows = ["| principal | resource | name | operations | why |", "|---|---|---|---|---|"]
    for grant in grants(config):
        for who in principals.get(grant.role, ()):
            name = f"`{grant.name}*` (prefix)" if grant.prefixed else f"`{grant.name}`"
            rows.append(f"| `{principal(who)}` ({grant.role}) | {grant.resource} | {name} | {', '.join(grant.operations)} | {grant.why} |")
    return "\n".join(rows)


def apply(config: Config, principals: dict[str, Sequence[str]], timeout: float = 30.0) -> int:
    """Creates the bindings (creating an existing one is no error); returns how many were sent.

    Needs a principal allowed to alter the cluster's ACLs (the broker's super user locally).
    Grants are only added: removing a role's old grants is a deliberate `kafka-acls --remove`.
    """
    wanted = bindings(config, principals)
    admin = AdminClient(clients.librdkafka(config))
    for future in admin.create_acls(wanted, request_timeout=timeout).values():
        future.result()
    return len(wanted)
