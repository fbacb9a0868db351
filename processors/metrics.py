"""Prometheus metrics, built on an injectable registry (no module globals), bounded labels only.

Labels are topics, CRMs, event types, outcomes, reasons, operations, error classes and codes:
never a person, an e-mail, or a company id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from processors import version
from processors.domain.audit import Refusal
from processors.domain.deliver import RECONCILE_OUTCOMES
from processors.domain.model import Crm, EventType, ObjectType

LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OBJECTS = {Crm.SALESFORCE: (ObjectType.TASK,), Crm.HUBSPOT: (ObjectType.MEETING, ObjectType.NOTE)}
OUTCOMES = ("created", "skipped", "failed", "duplicate", "deferred")
DEAD_LETTERS = (("decode", "DecodeError"), ("validate", "ValidationError"), ("deliver", "PermanentError"), ("deliver", "AuthError"))
SKIP_REASONS = {"any": ("no_settings",), **{crm.value: ("integration_disabled", "contact_not_found") for crm in Crm}}


@dataclass
class Metrics:
    registry: CollectorRegistry
    ingested: Counter
    invalid: Counter
    planned: Counter
    skipped: Counter
    held: Gauge
    released: Counter
    reparked: Counter
    lateness: Histogram
    delivered: Counter
    dead_lettered: Counter
    crm_requests: Counter
    crm_latency: Histogram
    retries: Counter
    paused_tenants: Gauge
    settings_rejected: Counter
    settings_refused: Counter
    deferred: Counter
    paused_targets: Gauge
    consumer_lag: Gauge
    ready: Gauge
    settings_ready: Gauge
    history_recorded: Counter
    build_info: Gauge
    api_usage_ratio: Gauge
    tenants_near_quota: Gauge
    reconcile: Counter = field(init=False)

    def __post_init__(self) -> None:
        """Reconciliation outcomes (`processors.domain.deliver.RECONCILE_OUTCOMES`), all exported at 0."""
        self.reconcile = Counter(
            "crm_sync_reconcile_total", "Reconciliation outcomes of doubtful actions (and rejected candidates)", ["crm", "outcome"],
            registry=self.registry,
        )
        for crm in Crm:
            for outcome in RECONCILE_OUTCOMES:
                self.reconcile.labels(crm.value, outcome)

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> "Metrics":
        # `_created` series double every counter's series count and no dashboard or alert reads them.
        disable_created_metrics()
        r = registry or CollectorRegistry()
        if registry is None:
            # The process_* (CPU, RSS, open fds) and python_* (GC, version) families SREs expect beside
            # the worker's own; registered only on the worker's own registry, never twice.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
        metrics = cls(
            registry=r,
            ingested=Counter("crm_sync_records_ingested_total", "Input records read", ["topic"], registry=r),
            invalid=Counter("crm_sync_records_invalid_total", "Input records rejected", ["topic", "reason"], registry=r),
            planned=Counter("crm_sync_actions_planned_total", "Actions planned", ["crm", "event_type"], registry=r),
            skipped=Counter("crm_sync_actions_skipped_total", "Events or actions skipped", ["crm", "event_type", "reason"], registry=r),
            held=Gauge("crm_sync_actions_held", "Actions held in this worker's delay buffers", registry=r),
            released=Counter("crm_sync_actions_released_total", "Actions released when due", ["crm"], registry=r),
            reparked=Counter(
                "crm_sync_actions_reparked_total", "Actions of a paused company copied to the end of the retry topic", ["crm"], registry=r
            ),
            lateness=Histogram(
                "crm_sync_due_lateness_seconds", "Release time minus due time", ["crm"], buckets=LATENESS_BUCKETS, registry=r
            ),
            delivered=Counter(
                "crm_sync_deliveries_total", "Delivery outcomes", ["crm", "object_type", "outcome"], registry=r
            ),
            dead_lettered=Counter(
                "crm_sync_dead_lettered_total", "Records sent to the dead-letter topic", ["stage", "error_class"], registry=r
            ),
            crm_requests=Counter("crm_sync_crm_requests_total", "CRM API calls", ["crm", "operation", "status"], registry=r),
            crm_latency=Histogram(
                "crm_sync_crm_request_seconds", "CRM API call latency", ["crm", "operation"], buckets=LATENCY_BUCKETS, registry=r
            ),
            retries=Counter("crm_sync_crm_retries_total", "CRM calls retried", ["crm", "error_code"], registry=r),
            paused_tenants=Gauge("crm_sync_paused_tenants", "Companies whose delivery is paused", registry=r),
            settings_rejected=Counter("crm_sync_settings_rejected_total", "Malformed settings records", registry=r),
            settings_refused=Counter(
                "crm_sync_settings_refused_total",
                "Settings records not applied: malformed, unaudited, or not the next version (counted once, by the settings guard)",
                ["reason"],
                registry=r,
            ),
            deferred=Counter(
                "crm_sync_actions_deferred_total", "Actions parked on the retry topic after transient failures", ["crm", "reason"], registry=r
            ),
            paused_targets=Gauge(
                "crm_sync_auth_circuits_open", "Company/CRM pairs whose delivery is paused by the authentication circuit", registry=r
            ),
            consumer_lag=Gauge(
                "crm_sync_consumer_lag",
                "Records not yet committed on this worker's assigned partitions (high watermark - committed)",
                ["topic"],
                registry=r,
            ),
            ready=Gauge("crm_sync_worker_ready", "1 when the worker is ready (settings caught up, partitions recovered)", registry=r),
            settings_ready=Gauge(
                "crm_sync_settings_ready", "1 once the settings topic was read to its end (read_committed); nothing is planned before", registry=r
            ),
            history_recorded=Counter("crm_sync_history_records_total", "Sync-history records written", ["outcome"], registry=r),
            build_info=Gauge("crm_sync_build_info", "Always 1; the running version as a label", ["version"], registry=r),
            api_usage_ratio=Gauge(
                "crm_sync_crm_api_usage_ratio", "The worst tenant's used/limit of its daily CRM API quota (from response headers)",
                ["crm"], registry=r,
            ),
            tenants_near_quota=Gauge(
                "crm_sync_crm_tenants_near_quota", "Tenants that used 80% or more of their daily CRM API quota", ["crm"], registry=r
            ),
        )
        metrics.build_info.labels(version()).set(1)
        metrics._zero_known_series()
        return metrics

    def _zero_known_series(self) -> None:
        """Export the known label sets at 0 from the start: a counter born at 1 loses that first
        increment to rate()/increase(), which hides rare events (the first failure of a CRM)."""
        for crm in Crm:
            self.api_usage_ratio.labels(crm.value)
            self.tenants_near_quota.labels(crm.value)
            self.released.labels(crm.value)
            self.reparked.labels(crm.value)
            self.lateness.labels(crm.value)
            for event_type in EventType:
                self.planned.labels(crm.value, event_type.value)
            for object_type in OBJECTS[crm]:
                for outcome in OUTCOMES:
                    self.delivered.labels(crm.value, object_type.value, outcome)
        for stage, error_class in DEAD_LETTERS:
            self.dead_lettered.labels(stage, error_class)
        for crm, reasons in SKIP_REASONS.items():
            for event_type in EventType:
                for reason in reasons:
                    self.skipped.labels(crm, event_type.value, reason)
        for refusal in Refusal:
            self.settings_refused.labels(refusal.value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
