"""Every Prometheus metric Duplex exports, declared in this one place.

Names follow Prometheus conventions (``duplex_`` prefix, ``_total`` for counters, base units).
A metric is reached through :class:`Metrics` attributes, so a misspelt name is a type error;
:data:`MetricName` lists the names for dashboards and tests.

Labels stay bounded: ``tenant`` is a configured tenant id (or ``unknown`` for input that never
proved to be one of ours), ``topic`` a physical topic name, everything else a small fixed set.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MetricName = Literal[
    "duplex_events_total",
    "duplex_consumer_lag_messages",
    "duplex_consumer_group_lag_messages",
    "duplex_end_to_end_latency_seconds",
    "duplex_api_calls_total",
    "duplex_api_budget_remaining",
    "duplex_echoes_dropped_total",
    "duplex_conflicts_decided_total",
    "duplex_dlq_messages_total",
    "duplex_redeliveries_total",
    "duplex_circuit_breaker_trips_total",
    "duplex_cdc_events_ingested_total",
    "duplex_cdc_lag_seconds",
    "duplex_cdc_reconnects_total",
    "duplex_cdc_gaps_repaired_total",
    "duplex_cdc_events_rejected_total",
    "duplex_governor_calls_granted_total",
    "duplex_governor_requests_denied_total",
    "duplex_governor_predicted_exhaustion_seconds",
    "duplex_governor_budget_warning",
    "duplex_writer_records_total",
    "duplex_writer_parked_total",
    "duplex_connection_needs_reconnect",
    "duplex_connection_error",
    "duplex_quarantined_pairs",
    "duplex_quarantined_events_total",
    "duplex_producer_fields_corrected_total",
    "duplex_schema_drift_warnings_total",
]
METRIC_NAMES: tuple[MetricName, ...] = get_args(MetricName)

UNKNOWN_TENANT = "unknown"

# faststream's Kafka Prometheus middleware owns the per-message transport metrics
# (duplex_kafka_received_messages_total, ..._processing_duration_seconds, ..._published_messages_total,
# ...); they are named by this prefix and not repeated here.
FASTSTREAM_METRICS_PREFIX = "duplex_kafka"

# From a few milliseconds (in-process hop) to several minutes (catch-up after an outage).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The collectors of one process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Events a consumer finished with, by how it finished (processed, dead_lettered, halted).
        self.events = Counter(
            _name("duplex_events_total"),
            "Events consumed, per tenant, topic and outcome.",
            ["service", "tenant", "topic", "outcome"],
            registry=registry,
        )
        # How far a consumer is behind the end of its partition, after its last event.
        self.consumer_lag = Gauge(
            _name("duplex_consumer_lag_messages"),
            "Messages between a consumer's position and the partition's high watermark.",
            ["service", "topic", "partition"],
            registry=registry,
        )
        # The same distance measured at the broker (committed offsets against end offsets) by the admin
        # API's lag loop, summed over the topic's partitions. Unlike consumer_lag it keeps rising while
        # a consumer is stopped or stuck, so alerts and autoscaling read this one.
        self.consumer_group_lag = Gauge(
            _name("duplex_consumer_group_lag_messages"),
            "Messages between a consumer group's committed offsets and the end of the topic, per group and topic.",
            ["group", "topic"],
            registry=registry,
        )
        # Origin commit on one side to the moment a stage finished with it. Stages:
        # - written: the writer's write to Salesforce succeeded (the app → Salesforce figure);
        # - app_update_published: the conflict-resolver published the update to app-updates
        #   (Salesforce → app; the app applies it outside Duplex, so Duplex's part ends there).
        self.end_to_end_latency = Histogram(
            _name("duplex_end_to_end_latency_seconds"),
            "Seconds from a change's origin commit to the end of a stage, per tenant.",
            ["tenant", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # Salesforce API calls made through SalesforceClient, by API family (rest, composite,
        # bulk) and priority (live, backfill). OAuth token/userinfo calls are not API calls and
        # are not counted; Pub/Sub gRPC subscriptions do not go through SalesforceClient and are
        # not counted either.
        self.api_calls = Counter(
            _name("duplex_api_calls_total"),
            "Salesforce API calls made, per tenant.",
            ["tenant", "api", "priority"],
            registry=registry,
        )
        # The governor's view of the calls a tenant may still make in the rolling 24 hours (its
        # daily cap and the org's reported headroom, whichever is lower), set after each decision.
        self.api_budget_remaining = Gauge(
            _name("duplex_api_budget_remaining"),
            "Salesforce API calls the tenant may still make in the current window.",
            ["tenant"],
            registry=registry,
        )
        # Changes recognised as Duplex's own writes coming back, and why (origin_client, values).
        self.echoes_dropped = Counter(
            _name("duplex_echoes_dropped_total"),
            "Changes dropped as echoes of Duplex's own writes.",
            ["tenant", "side", "reason"],
            registry=registry,
        )
        # Field conflicts the resolver decided, by policy and the side that won.
        self.conflicts_decided = Counter(
            _name("duplex_conflicts_decided_total"),
            "Field conflicts decided by the conflict-resolver.",
            ["tenant", "policy", "winner"],
            registry=registry,
        )
        # Records sent to a dead-letter topic, by source topic and error class.
        self.dlq_messages = Counter(
            _name("duplex_dlq_messages_total"),
            "Records sent to a dead-letter topic.",
            ["service", "topic", "error_class"],
            registry=registry,
        )
        # Events handed back for redelivery after a retryable (or unknown) failure.
        self.redeliveries = Counter(
            _name("duplex_redeliveries_total"),
            "Events redelivered after a failed attempt.",
            ["service", "topic"],
            registry=registry,
        )
        # Consumers halted by the dead-letter circuit breaker or exhausted retries.
        self.circuit_breaker_trips = Counter(
            _name("duplex_circuit_breaker_trips_total"),
            "Consumers halted instead of dead-lettering or retrying further.",
            ["service", "topic", "cause"],
            registry=registry,
        )
        # cdc-ingest: Salesforce changes published to crm-changes, by how they were read
        # (stream, poll, gap, backfill).
        self.cdc_events_ingested = Counter(
            _name("duplex_cdc_events_ingested_total"),
            "Salesforce changes published by cdc-ingest, per tenant and source.",
            ["tenant", "source"],
            registry=registry,
        )
        # cdc-ingest: now minus the origin commit time of the newest change published.
        self.cdc_lag = Gauge(
            _name("duplex_cdc_lag_seconds"),
            "Seconds between a change's Salesforce commit and its publication, per tenant (latest).",
            ["tenant"],
            registry=registry,
        )
        # cdc-ingest: Pub/Sub streams re-opened after an error.
        self.cdc_reconnects = Counter(
            _name("duplex_cdc_reconnects_total"),
            "Pub/Sub subscriptions re-opened after an error, per tenant and reason.",
            ["tenant", "reason"],
            registry=registry,
        )
        # cdc-ingest (and the admin API's refreshes): mapping rules a Salesforce schema change touched.
        self.schema_drift_warnings = Counter(
            _name("duplex_schema_drift_warnings_total"),
            "Mapping rules a Salesforce schema change touched, per tenant, change kind and whether the rule paused.",
            ["tenant", "kind", "paused"],
            registry=registry,
        )
        # cdc-ingest: gaps caught up by reading (gap, overflow, replay_expired).
        self.cdc_gaps_repaired = Counter(
            _name("duplex_cdc_gaps_repaired_total"),
            "Gaps in the change stream repaired by re-reading, per tenant and kind.",
            ["tenant", "kind"],
            registry=registry,
        )
        # cdc-ingest: events or records refused one by one (undecodable, too_large), each
        # dead-lettered and in the tenant's sync log.
        self.cdc_events_rejected = Counter(
            _name("duplex_cdc_events_rejected_total"),
            "Change events or records cdc-ingest refused and dead-lettered, per tenant and reason.",
            ["tenant", "reason"],
            registry=registry,
        )

        # rate-limit-governor: calls granted and requests denied, per tenant and priority.
        self.governor_calls_granted = Counter(
            _name("duplex_governor_calls_granted_total"),
            "API calls granted by the governor.",
            ["tenant", "priority"],
            registry=registry,
        )
        self.governor_requests_denied = Counter(
            _name("duplex_governor_requests_denied_total"),
            "Requests for calls the governor denied, by reason.",
            ["tenant", "priority", "reason"],
            registry=registry,
        )
        # rate-limit-governor: when the budget runs out at the last hour's rate (0: not predicted).
        self.governor_predicted_exhaustion = Gauge(
            _name("duplex_governor_predicted_exhaustion_seconds"),
            "Unix time at which the tenant's budget runs out at the last hour's rate (0: not predicted).",
            ["tenant"],
            registry=registry,
        )
        self.governor_budget_warning = Gauge(
            _name("duplex_governor_budget_warning"),
            "1 while a tenant has less than 10 % of its budget left.",
            ["tenant"],
            registry=registry,
        )
        # writer: records whose write settled, by outcome (succeeded, rejected, superseded: a replay not sent).
        self.writer_records = Counter(
            _name("duplex_writer_records_total"),
            "Record writes settled by the writer, per tenant and outcome.",
            ["tenant", "outcome"],
            registry=registry,
        )
        # writer: commands parked in PostgreSQL because their tenant held its share of unsettled writes
        # ("overflow") or held its partition too long ("held"); a tenant that cannot write shows here.
        self.writer_parked = Counter(
            _name("duplex_writer_parked_total"),
            "Commands the writer parked in PostgreSQL instead of letting them hold a shared partition.",
            ["tenant", "reason"],
            registry=registry,
        )
        # Set by any service that calls the tenant's org: 1 once it found that Salesforce refused the
        # tenant's refresh token (someone must connect it again), 0 once it got a session again.
        self.connection_needs_reconnect = Gauge(
            _name("duplex_connection_needs_reconnect"),
            "1 while the tenant's Salesforce connection must be re-authorized through the admin API.",
            ["tenant"],
            registry=registry,
        )
        # Set by any service that calls the tenant's org: 1 once Salesforce refused to sign the tenant
        # in or to refresh its session (a rotated key, a locked user...) or the deployment's policy
        # forbade it, 0 once it got a session again. Each attempt is repeated after the usual back-off.
        self.connection_error = Gauge(
            _name("duplex_connection_error"),
            "1 while the tenant's Salesforce sign-in or refresh fails; its connection status says why.",
            ["tenant"],
            registry=registry,
        )
        # mapping: 1 while a tenant's object pair (or unmapped <side>:<object>) is quarantined because
        # most of its recent changes were rejected; its changes are dead-lettered meanwhile.
        self.quarantined_pairs = Gauge(
            _name("duplex_quarantined_pairs"),
            "1 while a tenant's object pair is quarantined (its changes dead-lettered).",
            ["service", "tenant", "pair"],
            registry=registry,
        )
        self.quarantined_events = Counter(
            _name("duplex_quarantined_events_total"),
            "Changes dead-lettered because their tenant's object pair was quarantined.",
            ["service", "tenant", "pair"],
            registry=registry,
        )
        # mapping: producer fields it would not trust as sent (origin_commit_time clamped to now,
        # origin_client removed); each is also in the tenant's sync log.
        self.producer_fields_corrected = Counter(
            _name("duplex_producer_fields_corrected_total"),
            "Changes whose producer-set field was corrected, per tenant and field.",
            ["service", "tenant", "field"],
            registry=registry,
        )


def _name(name: MetricName) -> str:
    # prometheus_client appends _total to counters itself and rejects names that already have it.
    return name.removesuffix("_total")
