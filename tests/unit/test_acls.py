"""The ACL declaration grants each role the least it needs, and docs/security.md shows it as it is."""

from __future__ import annotations

from pathlib import Path

from processors.config import Config
from processors.ops import acls

ROOT = Path(__file__).resolve().parents[2]
PRINCIPALS = {role: [role] for role in acls.ROLES}


def ops(role: str, name: str, config: Config | None = None) -> set[str]:
    return {op for g in acls.grants(config or Config()) if g.role == role and g.name == name for op in g.operations}


def test_docs_security_holds_what_acls_print_prints() -> None:
    assert acls.table(Config(), PRINCIPALS) in (ROOT / "docs" / "security.md").read_text()


def test_only_the_admin_writes_settings_and_the_audit() -> None:
    t = Config().topics
    writers = {g.role for g in acls.grants(Config()) if g.name in (t.settings, t.audit) and "WRITE" in g.operations}
    assert writers == {"admin"}
    assert ("admin", "transactional-id", "crm-sync-admin-", True) in {(g.role, g.resource, g.name, g.prefixed) for g in acls.grants(Config())}


def test_the_admin_may_write_what_dlq_retry_and_resolve_write() -> None:
    t = Config().topics
    for topic in (t.retry, t.dead_letter, t.history, *t.inputs):
        assert "WRITE" in ops("admin", topic), topic
    assert "READ" in ops("admin", t.dead_letter)


def test_publishers_write_their_inputs_only_and_the_sre_reads_nothing() -> None:
    publisher = [g for g in acls.grants(Config()) if g.role == "publisher"]
    assert {(g.name, g.operations) for g in publisher} == {(name, ("WRITE",)) for name in Config().topics.inputs}
    assert all("READ" not in g.operations and "WRITE" not in g.operations for g in acls.grants(Config()) if g.role == "sre")


def test_grants_follow_the_configured_names_and_app_id() -> None:
    config = Config.from_env({"CRM_SYNC_APP_ID": "eu-sync", "CRM_SYNC_TOPIC_SETTINGS": "eu.settings"})
    assert ops("worker", "eu-sync-", config) == {"READ"}
    assert "WRITE" in ops("admin", "eu.settings", config) and "READ" in ops("worker", "eu.settings", config)
    assert len(acls.bindings(config, {"publisher": ["User:a", "b"]})) == 3 * 2
    assert {b.principal for b in acls.bindings(config, {"publisher": ["User:a", "b"]})} == {"User:a", "User:b"}


def test_the_worker_reads_the_upstream_inputs_but_does_not_own_them() -> None:
    """Creating a topic is owning it; the inputs belong to the upstream, which creates them."""
    for name in Config().topics.inputs:
        assert ops("worker", name) == {"READ"}, name
    creators = {g.role for g in acls.grants(Config()) if g.name in Config().topics.inputs and "CREATE" in g.operations}
    assert creators == set()


def test_no_role_may_delete_alter_or_repartition_any_topic() -> None:
    """delete_records, delete_topics, create_partitions and config changes stay with the platform's super user."""
    destructive = {"DELETE", "ALTER", "ALTER_CONFIGS", "ALL", "CLUSTER_ACTION"}
    assert [g for g in acls.grants(Config()) if destructive & set(g.operations)] == []
    assert [g for g in acls.grants(Config()) if g.resource == "transactional-id" and g.role != "admin"] == []
