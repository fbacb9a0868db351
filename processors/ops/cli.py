"""`crm-sync` command line (SPEC §10). Exit 0 on success; non-zero with a one-line reason on error."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, NoReturn, Sequence

from processors import version
from processors.config import Config
from processors.domain.audit import SettingsConflict
from processors.domain.model import Crm, EventType, ValidationError
from processors.kafka import clients
from processors.worker.logs import redact


EXIT_CONFLICT = 4  # another admin changed the same setting meanwhile: nothing was saved
EVENTS = [e.value for e in EventType]
CRMS = [c.value for c in Crm]


class CliError(Exception):
    """Shown to the user as one line, exit code 2."""


def _one_line(text: str) -> str:
    """Scripts read the reason from a single stderr line, so embedded newlines are folded; the line
    is masked like a log line (an exception may quote a URL, a header or a credentials file)."""
    return redact(" ".join(str(text).split()))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the same one `crm-sync: error:` line as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"crm-sync: error: {self.prog}: {_one_line(message)}\n")


def _events(text: str) -> list[EventType]:
    try:
        return [EventType(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown event type in {text!r}; expected any of {', '.join(EVENTS)}")


def _event(text: str) -> EventType:
    events = _events(text)
    if len(events) != 1:
        raise argparse.ArgumentTypeError("exactly one event type expected")
    return events[0]


_SPAN_UNITS = {"m": 60, "h": 3600, "d": 86400}


def _since(text: str) -> int:
    """An ISO-8601 time, or a span back from now: 30m, 1h, 7d."""
    if text[:-1].isdigit() and text[-1:] in _SPAN_UNITS:
        return int((datetime.now(timezone.utc).timestamp() - int(text[:-1]) * _SPAN_UNITS[text[-1]]) * 1000)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time or a span like 1h or 7d: {text!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def _on_off(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--on", dest="on", action="store_true", help="turn on")
    group.add_argument("--off", dest="on", action="store_false", help="turn off")


def _mapping_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--company", required=True)
    p.add_argument("--meeting-type", required=True)
    p.add_argument("--crm", required=True, choices=CRMS)
    p.add_argument("--event", required=True, type=_event, help="|".join(EVENTS))
    p.add_argument("--field", required=True, help="the CRM field (Salesforce API name / HubSpot internal name)")


_UNITS = {"s": 1, "m": 60, "h": 3600}


def _delays(text: str) -> list[int]:
    """`20m,60m` → [1200, 3600]; a bare number is seconds."""
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        unit = _UNITS.get(part[-1:], None) if part else None
        number = part[:-1] if unit else part
        if not number.isdigit():
            raise argparse.ArgumentTypeError(f"not a delay list like 20m,60m: {text!r}")
        out.append(int(number) * (unit or 1))
    return out


def _command(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose `--help` starts with the same sentence the parent's list shows."""
    return sub.add_parser(name, help=text, description=text)


# `dlq list` reads this far back unless told otherwise: the range asked for, never all 30 days.
DLQ_LIST_SINCE = "7d"
# A bulk retry or resolve, or a backfill, of more than this asks first (--yes skips the question).
CONFIRM_ABOVE = 100
# Events a backfill re-sends per second: far below what ingest takes, so live traffic stays on time.
BACKFILL_RATE = 200.0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crm-sync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"crm-sync {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    _command(sub, "worker", "run the processor (ingest, delay, sinks)")
    p = _command(sub, "health", "ask this machine's worker whether it is ready (exit 0) or not (exit 1): the image's HEALTHCHECK")
    p.add_argument("--live", action="store_true", help="liveness (/health/live) instead of readiness")

    settings = _command(sub, "settings", "show and change CRM settings")
    ss = settings.add_subparsers(dest="settings_command", required=True)
    p = _command(ss, "show", "print a company's settings and its meeting types'")
    p.add_argument("--company", required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (("connect", "connect a CRM for the company"), ("disconnect", "disconnect a CRM (settings kept)")):
        p = _command(ss, name, text)
        p.add_argument("--company", required=True)
        p.add_argument("--crm", required=True, choices=CRMS)
    p = _command(ss, "company-todo", "company-level Salesforce ToDo toggle for an event type")
    p.add_argument("--company", required=True)
    p.add_argument("--event", required=True, type=_event, help="|".join(EVENTS))
    _on_off(p)
    p = _command(ss, "set", "meeting-type toggle for one CRM and event type")
    p.add_argument("--company", required=True)
    p.add_argument("--meeting-type", required=True)
    p.add_argument("--crm", required=True, choices=CRMS)
    p.add_argument("--event", required=True, type=_event, help="|".join(EVENTS))
    _on_off(p)
    p = _command(ss, "content", "meeting-type texts: Salesforce subject/comment, HubSpot title/body ({placeholders} allowed)")
    p.add_argument("--company", required=True)
    p.add_argument("--meeting-type", required=True)
    p.add_argument("--name", dest="meeting_type_name")
    p.add_argument("--salesforce-subject")
    p.add_argument("--salesforce-comment")
    p.add_argument("--hubspot-title", dest="hubspot_meeting_title")
    p.add_argument("--hubspot-body", dest="hubspot_meeting_body")
    p = _command(ss, "timezone", "the company's time zone (IANA name)")
    p.add_argument("--company", required=True)
    p.add_argument("--tz", required=True)
    p = _command(ss, "apply", "apply one meeting type's settings to others (atomic), or apply a settings file (settings as code)")
    p.add_argument("file", nargs="?", help="a settings file from `settings export` (then no other option but --dry-run/--json)")
    p.add_argument("--company")
    p.add_argument("--from", dest="source", help="source meeting type")
    p.add_argument("--to", dest="targets", help="comma-separated target meeting types")
    p.add_argument("--crm", choices=CRMS)
    p.add_argument("--event", type=_events, help="comma-separated event types")
    p.add_argument("--dry-run", action="store_true", help="with FILE: print what would change, write nothing")
    p.add_argument("--json", action="store_true", help="with FILE: machine-readable output")
    p = _command(ss, "export", "the whole settings as a YAML file (settings as code)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--company", action="append", help="this company (repeat for more)")
    which.add_argument("--all", action="store_true", help="every company")
    p = _command(ss, "diff", "what applying a settings file would change")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (("pause", "pause delivery (actions are held)"), ("resume", "resume delivery")):
        p = _command(ss, name, text)
        p.add_argument("--company", required=True)
    p = _command(ss, "map", "fill a CRM field from an event field (checked against the event's schema)")
    _mapping_target(p)
    p.add_argument("--from", dest="source", required=True, help="event path, e.g. booker.phone or start_at:date")
    p.add_argument("--allow-core", action="store_true", help="may overwrite a field crm-sync renders (Subject, hs_* …)")
    p = _command(ss, "unmap", "remove a field mapping")
    _mapping_target(p)
    p = _command(ss, "recheck", "look again for a missing Lead/Contact before skipping as contact_not_found")
    p.add_argument("--company", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--after", type=_delays, help="delays after the first due time, e.g. 20m,60m (s, m, h)")
    group.add_argument("--off", action="store_true", help="no re-check (the default)")
    p = _command(ss, "log", "the company's settings changes: when, who, old → new")
    p.add_argument("--company", required=True)
    p.add_argument("--since", type=_since, help="ISO-8601 time")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, p in ss.choices.items():
        if name not in ("show", "log", "export", "diff"):  # the commands that change settings
            p.add_argument("--actor", help="who makes the change when the broker has no principal for it (default: the OS user)")
            if name != "apply":  # apply has its own, for both of its forms
                p.add_argument("--json", action="store_true", help="machine-readable output: the documents as written")

    dlq = _command(sub, "dlq", "failure history: list, show, retry and resolve failures")
    ds = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, text in (
        ("list", "list failures (resolved ones only with --all)"),
        ("retry", "retry one failure, a filter of them, or all of a company's"),
        ("resolve", "mark one failure, a filter of them, or all of a company's as resolved"),
    ):
        p = _command(ds, name, text)
        if name != "list":
            p.add_argument("id", nargs="?", help="a dead_letter_id (omit to select by filter)")
        p.add_argument("--company", help="that company's failures (reads its partition only)")
        p.add_argument("--crm", choices=CRMS)
        p.add_argument("--error-class")
        since_help = "ISO-8601 time, or a span back from now (30m, 1h, 7d)"
        p.add_argument("--since", type=_since, help=f"{since_help}; default {DLQ_LIST_SINCE}" if name == "list" else since_help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "list":
            p.add_argument("--all", action="store_true", help="include resolved failures")
        else:
            p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
            p.add_argument("--yes", action="store_true", help=f"no confirmation for more than {CONFIRM_ABOVE} failures")
        if name == "resolve":
            p.add_argument("--note", help="why it is resolved (kept with the failure)")
    p = _command(ds, "show", "show one failure, with its retries and resolution")
    p.add_argument("id")
    p = _command(ds, "reindex", "rebuild the dead-letter index from the whole dead-letter topic (after an upgrade)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(sub, "preview", "print exactly what delivery would do with one event under the current settings (creates nothing)")
    p.add_argument("--company", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--event", metavar="FILE", help="an event as JSON (the publisher's record) or Avro bytes; - reads stdin")
    source.add_argument("--from-topic", metavar="TOPIC:PARTITION:OFFSET", help="a record already on an input topic")
    p.add_argument("--resolve", action="store_true", help="also look up the contact and owner in the CRM (read-only)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(sub, "backfill", "re-ingest a company's past events under the current settings; what was delivered is never created again")
    p.add_argument("--company", required=True)
    p.add_argument("--since", required=True, type=_since, help="ISO-8601 time, or a span back from now (7d); at most the input topics' retention")
    p.add_argument("--until", type=_since, help="ISO-8601 time or span (default: now)")
    p.add_argument("--event-types", type=_events, help="comma-separated event types (default: all)")
    p.add_argument("--dry-run", action="store_true", help="report what it would do, send nothing")
    p.add_argument("--rate", type=float, default=BACKFILL_RATE, help=f"events re-sent per second (default {BACKFILL_RATE:g}), so live traffic keeps its lateness")
    p.add_argument("--wait", type=float, default=300.0, metavar="SECONDS", help="follow the deliveries this long (0: do not wait)")
    p.add_argument("--yes", action="store_true", help=f"no confirmation for more than {CONFIRM_ABOVE} events")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    schemas = _command(sub, "schemas", "the upstream Avro schemas against a Schema Registry")
    ss = schemas.add_subparsers(dest="schemas_command", required=True)
    p = _command(ss, "check", "is each input schema of this version compatible with its subject in the registry? (for CI; registers nothing)")
    p.add_argument("--registry", help="the registry's URL (default: SCHEMA_REGISTRY_URL)")
    p.add_argument("--subject-name-strategy", default="TopicNameStrategy",
                   choices=("TopicNameStrategy", "RecordNameStrategy", "TopicRecordNameStrategy"))

    topics = _command(sub, "topics", "the topics crm-sync owns, for platforms where applications may not create topics")
    ts = topics.add_subparsers(dest="topics_command", required=True)
    p = _command(ts, "print", "print them as Strimzi KafkaTopic resources or kafka-topics.sh commands (partitions, replicas, configs)")
    p.add_argument("--format", choices=("strimzi", "kafka-topics"), default="strimzi")
    p.add_argument("--cluster", default="my-cluster", help="the Strimzi Kafka cluster's name (label strimzi.io/cluster)")

    acls = _command(sub, "acls", "the broker ACLs each role needs (least privilege): print or apply them")
    acls.add_argument("acls_command", choices=("print", "apply"), help="print a table, or create them on the broker")
    for role in ("worker", "admin", "publisher", "sre"):
        acls.add_argument(
            f"--{role}-principal", action="append", default=[], metavar="P",
            help=f"the {role}'s principal (User:name or name); repeat for several",
            required=role in ("worker", "admin", "publisher"),
        )

    p = _command(sub, "history", "sync history: created / skipped by reason / failed per day, CRM and event type")
    p.add_argument("--company", required=True)
    p.add_argument("--days", type=int, default=7, help="1..7 local days of the company, today included (default 7)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--url", help="ask this worker (e.g. http://worker:9464) instead of reading the history topic from Kafka"
    )

    crm = _command(sub, "crm", "connect a company's CRM: preflight checks and the idempotency field")
    cs = crm.add_subparsers(dest="crm_command", required=True)
    p = _command(cs, "check", "log in, check permissions, lookups, the external-id field and the API quota")
    p.add_argument("--company", required=True)
    p.add_argument("--crm", choices=CRMS, help="one CRM (default: every CRM the company has credentials for)")
    p = _command(cs, "prepare", "create the external-id field/property and record it in the company's credentials file")
    p.add_argument("--company", required=True)
    p.add_argument("--crm", choices=CRMS, help="one CRM (default: every CRM the company has credentials for)")
    p.add_argument("--field", default=None, help="Salesforce Task field (default CrmSyncActionId__c)")
    p.add_argument("--property", default=None, help="HubSpot meeting/note property (default crm_sync_action_id)")
    p = _command(sub, "console", "serve the admin web page (CRM_SYNC_CONSOLE_*; docs/console.md)")
    p.add_argument("--hash-password", action="store_true", help="print the users-file hash of the password read from stdin, and exit")
    return parser


def _run_crm(args: argparse.Namespace, config: Config) -> None:
    """`crm check` prints one line per check and fails when any does; `crm prepare` one per CRM."""
    from processors.ops import crm
    from processors.worker.runtime import make_credentials

    store = make_credentials(config)
    crms = [args.crm] if args.crm else [
        c for c in CRMS if (store.secrets_dir / args.company / f"{c}.json").exists()
    ] or CRMS
    if args.crm_command == "check":
        checks = crm.run_check(store, args.company, crms, config.ca_bundle, config.quota_defer_ratio)
        for check in checks:
            print(check.line())
        failed = [c for c in checks if not c.ok]
        if failed:
            raise CliError(f"{len(failed)} of {len(checks)} checks failed for company {args.company}")
        return
    for name in crms:
        if name == "salesforce":
            print(crm.prepare_salesforce(store, args.company, config.ca_bundle, args.field or crm.DEFAULT_SALESFORCE_FIELD))
        else:
            print(crm.prepare_hubspot(store, args.company, config.ca_bundle, args.property or crm.DEFAULT_HUBSPOT_PROPERTY))


def _settings_file(args: argparse.Namespace, admin: Any, cmd: str, actor: str) -> None:
    """Settings as code: export, diff, apply FILE (docs/settings-as-code.md)."""
    from processors.ops import settings_file as sf

    if cmd == "export":
        print(sf.export_store(admin.load(), None if args.all else args.company), end="")
        return
    if cmd == "apply" and (args.company or args.source or args.targets or args.crm or args.event):
        raise CliError("settings apply FILE takes no --company/--from/--to/--crm/--event")
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    desired = sf.parse(text)
    if cmd == "diff" or args.dry_run:
        _, found = sf.plan(desired, sf.current_of(admin.load()))
    else:
        found = sf.apply(admin, desired, actor)
    if args.json:
        print(json.dumps({"dry_run": cmd == "diff" or args.dry_run, "changes": [
            {"key": c.key, "new": c.new, "fields": c.fields} for c in found]}, ensure_ascii=False, default=str))
        return
    for change in found:
        print(change.line())
    verb = "would change" if cmd == "diff" or args.dry_run else "changed"
    print(f"{len(found)} document(s) {verb}" + ("" if found or cmd == "diff" or args.dry_run else " (the file matches the settings)"))


def _print_settings(company: Any, meeting_types: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"company": asdict(company), "meeting_types": [asdict(m) for m in meeting_types]}, default=str, ensure_ascii=False))
        return
    print(f"company {company.company_id}  timezone={company.timezone}  paused={company.paused}")
    print(f"  salesforce connected={company.salesforce_connected}  hubspot connected={company.hubspot_connected}")
    todo = [e.value for e in EventType if company.salesforce_company_todo.get(e)]
    print(f"  company-level Salesforce ToDo: {', '.join(todo) if todo else 'off'}")
    for mt in meeting_types:
        print(f"meeting type {mt.meeting_type_id}" + (f" ({mt.meeting_type_name})" if mt.meeting_type_name else ""))
        for crm in Crm:
            on = [e.value for e in EventType if mt.toggles(crm).get(e)]
            print(f"  {crm.value}: {', '.join(on) if on else 'off'}")


def _actor(args: argparse.Namespace, config: Config) -> str:
    """Who makes a change: the SASL principal (what the broker's ACLs checked), else --actor, else the OS user."""
    if config.sasl_username:
        return f"User:{config.sasl_username}"
    return getattr(args, "actor", None) or getpass.getuser()


def _run_settings(args: argparse.Namespace, config: Config) -> None:
    from processors.ops.admin import SettingsAdmin

    admin = SettingsAdmin(config, actor=_actor(args, config))
    cmd = args.settings_command
    if cmd == "log":
        for record in admin.audit_log(args.company, args.since):
            if args.json:
                print(json.dumps({"at": record.at, "actor": record.actor, "key": record.key, "version": record.version, "changes": record.changes}, ensure_ascii=False))
            else:
                when = datetime.fromtimestamp(record.at / 1000, tz=timezone.utc).isoformat(timespec="seconds")
                print(f"{when}  {record.actor}  {record.key}  {record.summary}")
    elif cmd == "show":
        company, mts = admin.show(args.company)
        _print_settings(company, mts, args.json)
    elif cmd in ("export", "diff") or (cmd == "apply" and args.file):
        _settings_file(args, admin, cmd, _actor(args, config))
    else:
        docs, said = _change_settings(args, admin, cmd)
        if getattr(args, "json", False):
            print(json.dumps({"command": cmd, "documents": [asdict(d) for d in docs]}, ensure_ascii=False, default=str))
        else:
            print(said)


def _change_settings(args: argparse.Namespace, admin: Any, cmd: str) -> tuple[list[Any], str]:
    """One settings change: the documents it wrote, and the line that says so."""
    if cmd in ("connect", "disconnect"):
        doc = admin.set_connected(args.company, Crm(args.crm), cmd == "connect")
        return [doc], f"{args.company}: {args.crm} {cmd}ed"
    if cmd == "company-todo":
        doc = admin.set_company_todo(args.company, args.event, args.on)
        return [doc], f"{args.company}: company-level Salesforce ToDo for {args.event.value} {'on' if args.on else 'off'}"
    if cmd == "set":
        doc = admin.set_toggle(args.company, args.meeting_type, Crm(args.crm), args.event, args.on)
        return [doc], f"{args.company}/{args.meeting_type}: {args.crm} {args.event.value} {'on' if args.on else 'off'}"
    if cmd == "content":
        fields = {k: getattr(args, k) for k in ("meeting_type_name", "salesforce_subject", "salesforce_comment", "hubspot_meeting_title", "hubspot_meeting_body")}
        if all(v is None for v in fields.values()):
            raise CliError("nothing to change: give at least one of --name/--salesforce-subject/--salesforce-comment/--hubspot-title/--hubspot-body")
        doc = admin.set_content(args.company, args.meeting_type, **fields)
        return [doc], f"{args.company}/{args.meeting_type}: texts updated"
    if cmd == "timezone":
        doc = admin.set_timezone(args.company, args.tz)
        return [doc], f"{args.company}: timezone {args.tz}"
    if cmd == "apply":
        if not (args.company and args.source and args.targets and args.crm and args.event):
            raise CliError("settings apply needs a FILE, or --company, --from, --to, --crm and --event")
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        docs = admin.apply(args.company, args.source, targets, Crm(args.crm), args.event)
        return list(docs), (f"{args.company}: applied {args.crm} {','.join(e.value for e in args.event)} from {args.source} "
                            f"to {', '.join(d.meeting_type_id for d in docs)}")
    if cmd in ("pause", "resume"):
        doc = admin.set_paused(args.company, cmd == "pause")
        return [doc], f"{args.company}: {cmd}d"
    if cmd == "map":
        doc = admin.map_field(args.company, args.meeting_type, Crm(args.crm), args.event, args.field, args.source, args.allow_core)
        return [doc], f"{args.company}/{args.meeting_type}: {args.crm} {args.event.value} {args.field} ← {args.source}"
    if cmd == "unmap":
        doc = admin.unmap_field(args.company, args.meeting_type, Crm(args.crm), args.event, args.field)
        return [doc], f"{args.company}/{args.meeting_type}: {args.crm} {args.event.value} {args.field} unmapped"
    if cmd == "recheck":
        doc = admin.set_contact_recheck(args.company, [] if args.off else args.after)
        after = ",".join(f"{d}s" for d in doc.contact_recheck_seconds)
        return [doc], f"{args.company}: contact re-check {'after ' + after if after else 'off'}"
    raise CliError(f"unknown settings command {cmd}")


def _run_dlq(args: argparse.Namespace, config: Config) -> None:
    from processors.codec import Codec
    from processors.ops.dlq import FailureAdmin, filter_failures, find_failure, read_dead_letters, reindex

    codec = Codec()
    if args.dlq_command == "reindex":
        n = reindex(config, codec)
        print(json.dumps({"indexed": n}) if args.json else f"{n} dead letter(s) indexed")
        return
    if args.dlq_command == "show":
        found = find_failure(config, codec, args.id)
        if found is None:
            raise CliError(_not_found(args.id))
        record = dict(found.record)
        record["original_value"] = record["original_value"].hex() if record.get("original_value") else None
        record["original_key"] = record["original_key"].decode(errors="replace") if record.get("original_key") else None
        record["statuses"] = found.statuses
        print(json.dumps(record, ensure_ascii=False, indent=2, default=str))
        return
    if args.dlq_command == "list":
        since = args.since if args.since is not None else _since(DLQ_LIST_SINCE)
        failures = read_dead_letters(config, codec, company_id=args.company, since_ms=since)
        selected = filter_failures(failures, crm=args.crm, error_class=args.error_class, include_resolved=args.all)
        for f in selected:
            r = f.record
            when = datetime.fromtimestamp(r["created_at"] / 1000, tz=timezone.utc).isoformat(timespec="seconds")
            state = "resolved" if f.resolved else (f"retried×{f.retries}" if f.retries else "open")
            if args.json:
                fields = ("dead_letter_id", "created_at", "stage", "error_class", "error_code", "message", "company_id", "crm", "attempts")
                print(json.dumps({**{k: r[k] for k in fields}, "state": state}, ensure_ascii=False))
            else:
                print(f"{f.dead_letter_id}  {when}  {r['stage']:<8} {r.get('crm') or '-':<10} {r.get('company_id') or '-':<12} {r['error_class']}  {r.get('error_code') or ''}  {r['message']}  [{state}]")
        return
    if args.id:
        one = find_failure(config, codec, args.id)
        if one is None:
            raise CliError(_not_found(args.id))
        selected = [one]
    elif not (args.company or args.crm or args.error_class or args.since):
        raise CliError("give a failure id or a filter (--company, --crm, --error-class, --since)")
    else:
        failures = read_dead_letters(config, codec, company_id=args.company, since_ms=args.since)
        selected = filter_failures(failures, crm=args.crm, error_class=args.error_class)
    verb = "retry" if args.dlq_command == "retry" else "resolve"
    if args.dry_run:
        _report_dlq(args, verb, [f.dead_letter_id for f in selected], [], dry_run=True)
        return
    if len(selected) > CONFIRM_ABOVE and not args.yes:
        _confirm(f"{verb} {len(selected)} failures?")
    admin = FailureAdmin(config, codec, actor=_actor(args, config), timezone_of=_timezones(config, codec))
    if verb == "resolve":
        done = [f.dead_letter_id for f in selected if not f.resolved]
        admin.resolve(selected, args.note)
        _report_dlq(args, verb, done, [])
        return
    skipped: list[dict[str, str]] = []
    sent_before = {f.dead_letter_id for f in selected}

    def on_skip(f: Any, why: str) -> None:
        skipped.append({"dead_letter_id": f.dead_letter_id, "reason": why})
        if not args.json:
            print(f"{f.dead_letter_id}: not retried: {_one_line(why)}", file=sys.stderr)

    admin.retry(selected, on_skip)
    _report_dlq(args, verb, sorted(sent_before - {s["dead_letter_id"] for s in skipped}), skipped)


def _not_found(dead_letter_id: str) -> str:
    return f"no failure with id {dead_letter_id} in the dead-letter index (one from before the index: run `crm-sync dlq reindex` once)"


def _confirm(question: str) -> None:
    """Bulk changes ask first; without a terminal to ask, they need --yes."""
    if not sys.stdin.isatty():
        raise CliError(f"{question} Pass --yes to confirm (no terminal to ask), or --dry-run to see them")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("not confirmed; nothing changed")


def _report_dlq(args: argparse.Namespace, verb: str, ids: list[str], skipped: list[dict[str, str]], dry_run: bool = False) -> None:
    done = "would be " + ("sent for retry" if verb == "retry" else "marked resolved") if dry_run else (
        "sent for retry" if verb == "retry" else "marked resolved"
    )
    if args.json:
        key = {"retry": "retried", "resolve": "resolved"}[verb]
        print(json.dumps({"dry_run": dry_run, key: ids, "count": len(ids), "skipped": skipped}, ensure_ascii=False))
        return
    if dry_run:
        for dead_letter_id in ids:
            print(dead_letter_id)
    print(f"{len(ids)} failure(s) {done}")


def _timezones(config: Config, codec: Any) -> Any:
    """Companies' time zones for the history records of retries and resolutions."""
    from processors.domain.history import company_timezone
    from processors.ops.admin import SettingsAdmin

    return company_timezone(SettingsAdmin(config, codec).load())


def history_from_worker(url: str, company_id: str, days: int, token: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    query = urllib.parse.urlencode({"company": company_id, "days": days})
    request = urllib.request.Request(f"{url.rstrip('/')}/history?{query}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"worker answered {exc.code}: {exc.read().decode(errors='replace')}") from None


def _run_history(args: argparse.Namespace, config: Config) -> None:
    from processors.domain.history import KEEP_DAYS, format_report
    from processors.state.history import history_from_topic

    if not 1 <= args.days <= KEEP_DAYS:
        raise CliError(f"--days must be between 1 and {KEEP_DAYS}")
    if args.url:
        body = history_from_worker(args.url, args.company, args.days, config.http_token)
    else:
        body = history_from_topic(config, args.company, args.days, int(datetime.now(timezone.utc).timestamp() * 1000))
    print(json.dumps(body, ensure_ascii=False) if args.json else format_report(args.company, body))


def _run_schemas(args: argparse.Namespace, config: Config) -> None:
    from processors.codec import registry_client
    from processors.ops.schemas import check

    url = args.registry or config.schema_registry_url
    if not url:
        raise CliError("give --registry URL or set SCHEMA_REGISTRY_URL")
    registry = registry_client(url, basic_auth_user_info=config.schema_registry_basic_auth_user_info,
                               ssl_ca_location=config.schema_registry_ssl_ca_location)
    try:
        checks = check(registry, config.topics, args.subject_name_strategy)
    except PermissionError as exc:
        raise CliError(str(exc)) from None
    for c in checks:
        print(c.line())
    failed = [c for c in checks if not c.ok]
    if failed:
        raise CliError(f"{len(failed)} of {len(checks)} subjects would refuse this version's schemas")


def _run_backfill(args: argparse.Namespace, config: Config) -> None:
    import uuid

    from processors.ops import backfill
    from processors.ops.admin import SettingsAdmin
    from processors.worker.runtime import make_codec

    if args.rate <= 0:
        raise CliError("--rate must be above 0")
    codec = make_codec(config)
    settings = SettingsAdmin(config, codec).load()
    now = int(time.time() * 1000)
    common = dict(run_id=uuid.uuid4().hex, rate=args.rate, wait_seconds=args.wait, now_ms=now)
    if not args.dry_run and not args.yes:
        probe = backfill.backfill(config, codec, settings, args.company, args.since, args.until, args.event_types, dry_run=True, **common)  # type: ignore[arg-type]
        if probe.to_deliver > CONFIRM_ABOVE:
            _confirm(f"backfill {probe.events} events of {args.company} ({probe.to_deliver} actions to deliver)?")
    report = backfill.backfill(config, codec, settings, args.company, args.since, args.until, args.event_types,
                               dry_run=args.dry_run, **common)  # type: ignore[arg-type]
    print(json.dumps(report.as_dict(), ensure_ascii=False) if args.json else backfill.format_report(args.company, report))


def _run_preview(args: argparse.Namespace, config: Config) -> None:
    from processors.domain.model import Crm
    from processors.kafka.read import read_one
    from processors.ops.admin import SettingsAdmin
    from processors.ops.preview import CrmResolver, PreviewError, decode_event, format_text, preview
    from processors.worker.runtime import make_codec

    codec = make_codec(config)
    if args.from_topic:
        topic, _, rest = args.from_topic.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if not (topic and partition.isdigit() and rest.isdigit()):
            raise CliError(f"--from-topic must be TOPIC:PARTITION:OFFSET, not {args.from_topic!r}")
        msg = read_one(clients.librdkafka(config), topic, int(partition), int(rest))
        if msg is None or msg.value() is None:
            raise CliError(f"no record at {args.from_topic}")
        raw = msg.value()
    else:
        try:
            raw = sys.stdin.buffer.read() if args.event == "-" else open(args.event, "rb").read()
        except OSError as exc:
            raise CliError(f"cannot read {args.event}: {exc.strerror}") from None
    store = SettingsAdmin(config, codec).load()
    id_fields: dict[Crm, str | None] = {Crm.SALESFORCE: config.salesforce_action_id_field, Crm.HUBSPOT: config.hubspot_action_id_property}
    resolver = None
    if args.resolve:
        from processors.ops import crm
        from processors.worker.runtime import make_credentials

        creds = make_credentials(config)
        found: dict[Crm, Any] = {}
        for c in Crm:
            try:
                found[c] = crm.clients_for(creds, args.company, c.value, config.ca_bundle)
                own = creds.salesforce(args.company).action_id_field if c is Crm.SALESFORCE else creds.hubspot(args.company).action_id_property
                id_fields[c] = own or id_fields[c]
            except Exception:  # no credentials for that CRM: its actions cannot be resolved, which the output says
                continue
        resolver = CrmResolver(found)
    try:
        shown = preview(decode_event(raw, codec), args.company, store, int(time.time() * 1000), int(config.delay_seconds * 1000),
                        resolver, id_fields)
    except PreviewError as exc:
        raise CliError(str(exc)) from None
    print(shown.to_json() if args.json else format_text(shown))


def _run_acls(args: argparse.Namespace, config: Config) -> None:
    from processors.ops import acls

    principals = {role: getattr(args, f"{role}_principal") for role in acls.ROLES}
    if args.acls_command == "print":
        print(acls.table(config, principals))
    else:
        print(f"{acls.apply(config, principals)} ACL bindings applied")


def _run_health(args: argparse.Namespace, config: Config) -> int:
    from processors.ops.health import probe

    healthy, reason = probe(config, live=args.live)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def _run_console(args: argparse.Namespace, config: Config) -> None:
    if args.hash_password:
        from processors.ops.console.auth import hash_password, password_problem

        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise CliError("give the password on stdin")
        if problem := password_problem(password):
            raise CliError(problem)
        print(hash_password(password))
        return
    from processors.ops.console.app import serve

    serve(config)


SETTINGS_LOGGER = "processors.state.settings"  # the settings table's logger (not imported: `health` stays light)
REFUSED_SETTINGS_NOTE = (
    "crm-sync: note: {count} settings records were refused and ignored; "
    "list them with `crm-sync dlq list --error-class SettingsError`"
)


class _RefusedSettings(logging.Filter):
    """Counts the settings table's per-record refusal warnings instead of letting each print a line:
    a command reads the whole settings topic (a change reads it more than once), so a burst of bad
    records would bury its output. Counted by position, so a re-read counts nothing twice."""

    def __init__(self) -> None:
        super().__init__()
        self.positions: set[tuple[Any, Any]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        from processors.state.settings import REFUSED_LOG

        if record.msg != REFUSED_LOG:
            return True
        self.positions.add((getattr(record, "partition", None), getattr(record, "offset", None)))
        return False


def _count_refused_settings(command: str) -> _RefusedSettings | None:
    """For one-shot commands only: the worker and the console are services whose log keeps each line."""
    if command in ("worker", "console", "health"):
        return None
    tally = _RefusedSettings()
    logging.getLogger(SETTINGS_LOGGER).addFilter(tally)
    return tally


def _uses_broker(args: argparse.Namespace) -> bool:
    """`acls print`, `history --url`, `crm`, `health` and `console --hash-password` never talk to
    Kafka, so they need no broker credentials."""
    return not (
        getattr(args, "acls_command", None) == "print"
        or getattr(args, "url", None)
        or args.command in ("crm", "health", "topics", "schemas")
        or getattr(args, "hash_password", False)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tally = _count_refused_settings(args.command)
    try:
        code = _main(args)
    finally:
        if tally is not None:
            logging.getLogger(SETTINGS_LOGGER).removeFilter(tally)
    # Only on success: a failing command's whole stderr stays its one-line reason.
    if code == 0 and tally is not None and tally.positions:
        print(REFUSED_SETTINGS_NOTE.format(count=len(tally.positions)), file=sys.stderr)
    return code


def _main(args: argparse.Namespace) -> int:
    # The one-line reason is the CLI's whole error output; librdkafka's own lines would add to it.
    clients.LIBRDKAFKA_LOG.propagate = False
    clients.LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
    config: Config | None = None
    try:
        config = Config.from_env()
        if _uses_broker(args):
            clients.check_options(config, worker=args.command == "worker")
            clients.check_credentials(config)
        if args.command == "worker":
            from processors.worker.main import run_worker

            run_worker(config)
        elif args.command == "health":
            return _run_health(args, config)
        elif args.command == "settings":
            _run_settings(args, config)
        elif args.command == "dlq":
            _run_dlq(args, config)
        elif args.command == "history":
            _run_history(args, config)
        elif args.command == "backfill":
            _run_backfill(args, config)
        elif args.command == "preview":
            _run_preview(args, config)
        elif args.command == "acls":
            _run_acls(args, config)
        elif args.command == "schemas":
            _run_schemas(args, config)
        elif args.command == "topics":
            from processors.kafka.topics import manifest

            print(manifest(config, args.format, args.cluster), end="")
        elif args.command == "crm":
            _run_crm(args, config)
        elif args.command == "console":
            _run_console(args, config)
    except clients.BrokerRefused as exc:
        print(f"crm-sync: error: {_one_line(str(exc))}", file=sys.stderr)
        return 3
    except SettingsConflict as exc:
        print(f"crm-sync: conflict: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFLICT
    except (CliError, ValueError, ValidationError) as exc:
        print(f"crm-sync: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        refused = clients.refusal(config, exc) if config is not None else None
        if refused is not None:
            print(f"crm-sync: error: {_one_line(str(refused))}", file=sys.stderr)
            return 3
        print(f"crm-sync: error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
