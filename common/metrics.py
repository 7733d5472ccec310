"""Prometheus metrics with one naming scheme for every service: `outreach_<thing>_<unit>`.

Labels carry kinds, reasons, topics and outcomes — never ids or personal data.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "outreach_events_consumed_total",
    "Input events consumed, by topic and outcome (processed, duplicate, dead_lettered).",
    ["service", "topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "outreach_dead_letters_total",
    "Messages sent to a dead-letter topic, by source topic and reason code.",
    ["service", "topic", "reason"],
)
EVENTS_PRODUCED = Counter(
    "outreach_events_produced_total",
    "Events produced, by topic and CloudEvent type.",
    ["service", "topic", "type"],
)
PROCESSING_SECONDS = Histogram(
    "outreach_event_processing_seconds",
    "Time to handle one input event, by topic.",
    ["service", "topic"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
INPUT_GAPS = Counter(
    "outreach_input_offset_gaps_total",
    "Offsets an input partition's records jumped over (the consumer skipped records), by "
    "outcome: rewound (sent back to read them) or absent (not on the broker: "
    "transaction markers, compaction).",
    ["service", "topic", "outcome"],
)
INPUT_DEFERRED = Counter(
    "outreach_input_records_deferred_total",
    "Input records left unhandled and unacknowledged, to be read again: before_seek "
    "(fetched after a rebalance before the seek to the committed offset), after_gap "
    "(behind a gap being re-read).",
    ["service", "topic", "reason"],
)
PLAN_CACHE = Counter(
    "outreach_contact_plan_cache_total",
    "outreach's contact-plan lookups, by result (hit: served from its cache, miss: asked).",
    ["result"],
)
STATE_CACHE = Counter(
    "outreach_state_cache_total",
    "Reads of a key's state by result (hit: decoded state kept in memory, miss: read and "
    "parsed from the table).",
    ["service", "result"],
)
CLOCK_SECONDS = Gauge(
    "outreach_clock_timestamp_seconds",
    "The service's current time (wall clock, or event-time watermark) as a Unix timestamp.",
    ["service"],
)
LAST_INPUT_SECONDS = Gauge(
    "outreach_last_input_timestamp_seconds",
    "Wall time at which the service last consumed an input event.",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "outreach_consumer_lag_messages",
    "Messages not yet consumed, per topic (sum over assigned partitions).",
    ["service", "topic"],
)
DEADLINES_OVERDUE = Gauge(
    "outreach_deadlines_overdue",
    "Keys whose deadline the service's clock has passed and that are not handled yet.",
    ["service"],
)
DEADLINE_LAG_SECONDS = Gauge(
    "outreach_deadline_lag_seconds",
    "How far the service's clock is past the earliest unhandled deadline (0: none overdue).",
    ["service"],
)
INCIDENTS = Counter(
    "outreach_incidents_total",
    "Incidents emitted, by kind and transition (opened, updated, resolved).",
    ["kind", "transition"],
)
ORDERS_FORGOTTEN = Counter(
    "outreach_risk_orders_forgotten_total",
    "Orders whose customer risk_detector stopped remembering (RISK_DETECTOR_ORDER_MEMORY_DAYS).",
)
REQUESTS = Counter(
    "outreach_requests_total",
    "Outreach requests emitted by risk_detector, by intent and message kind.",
    ["intent", "message_kind"],
)
MESSAGES = Counter(
    "outreach_messages_total",
    "Messages by channel and status (scheduled, sent, delivered, failed, suppressed).",
    ["channel", "status"],
)
REPLIES = Counter(
    "outreach_replies_total",
    "Customers' replies by channel, intent and tone (intent `unknown_sender`: from an "
    "address no message went to).",
    ["channel", "intent", "tone"],
)
SURVEY_SCORES = Histogram(
    "outreach_survey_score",
    "Answers to the one-question survey (CSAT, 1 poor … 5 excellent), by the incident kind "
    "and intent of the message that asked, the answer's channel (web: the one-click page) "
    "and the template version that asked.",
    ["incident_kind", "intent", "channel", "template_version"],
    buckets=(1, 2, 3, 4, 5),
)
HANDOFFS = Counter(
    "outreach_handoffs_total",
    "Hand-offs to a person, by what triggered them (reply, risk_score) and why.",
    ["trigger", "reason"],
)
SUPPRESSIONS = Counter(
    "outreach_suppressions_total",
    "Decisions not sent, by suppression reason.",
    ["reason"],
)
PROVIDER_SECONDS = Histogram(
    "outreach_provider_request_seconds",
    "Latency of provider API calls, by provider and outcome.",
    ["provider", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RENDER_FAILURES = Counter(
    "outreach_template_render_failures_total",
    "Template renders that failed, by message kind and channel.",
    ["message_kind", "channel"],
)
PROVIDER_CIRCUIT_OPEN = Gauge(
    "outreach_provider_circuit_open",
    "1 while the circuit breaker of a provider is open (sending paused for it).",
    ["provider"],
)
TEMPLATE_REVISION = Gauge(
    "outreach_template_revision",
    "Revision of the template store this worker serves (moves when a studio user publishes).",
)
STUDIO_ACTIONS = Counter(
    "outreach_studio_actions_total",
    "Changes made in the template studio.",
    ["action"],
)
STUDIO_LOGIN_FAILURES = Counter(
    "outreach_studio_login_failures_total",
    "Failed studio sign-ins (wrong password, unknown user, throttled).",
    ["reason"],
)
SENDING_PAUSED = Gauge(
    "outreach_sending_paused",
    "1 while sending is paused by the kill switch, by scope (all or an intent).",
    ["scope"],
)
WORKERS_LIVE = Gauge(
    "outreach_workers_live",
    "outreach workers seen within the last seconds: each sends its even share of the "
    "providers' rates and of the resume ramp.",
)
LEDGER_DELIVERIES = Gauge(
    "outreach_ledger_deliveries",
    "Decisions in the delivery ledger by state (held: scheduled by a pause, no time yet).",
    ["status"],
)
STORMS = Gauge(
    "outreach_storms",
    "Storms not over (incidents of one cause still coming, or messages held), by state: "
    "flowing, awaiting (approval), approved, held, cancelled.",
    ["state"],
)
STORM_HELD = Gauge(
    "outreach_storm_held_messages",
    "Messages held with their storm until an operator decides it.",
)
STORM_AWAITING = Gauge(
    "outreach_storm_awaiting_approval_seconds",
    "How long the storm that has waited longest for an operator's approval has waited "
    "(0: none waits).",
)
EXPERIMENT_CUSTOMERS = Gauge(
    "outreach_experiment_customers",
    "Customers in each arm (control, treatment) of an experiment, by their first decision "
    "it covered in the last 180 days (docs/outcomes.md; the studio exports the outcome "
    "gauges every OUTREACH_OUTCOMES_REFRESH_S).",
    ["experiment", "arm"],
)
EXPERIMENT_OUTCOME = Gauge(
    "outreach_experiment_outcome",
    "An outcome in an arm of an experiment: a rate (0-1) or a mean (spend, CSAT, NPS), of "
    "the customers whose window has passed.",
    ["experiment", "arm", "outcome"],
)
EXPERIMENT_DIFFERENCE = Gauge(
    "outreach_experiment_difference",
    "Treatment minus control for an outcome of an experiment: the estimate and the low and "
    "high bounds of its 95 % confidence interval.",
    ["experiment", "outcome", "bound"],
)
OUTCOME_FACTS = Counter(
    "outreach_outcome_facts_total",
    "Outcome facts read (docs/outcomes.md) by kind and what became of them: kept, "
    "duplicate (its event seen before), unknown_customer (a refund or cancellation of an "
    "order neither recorded nor written about: not kept).",
    ["kind", "outcome"],
)
REMEDIES = Counter(
    "outreach_remedies_total",
    "Remedies tried for messages (docs/remedies.md), by kind and outcome: granted, "
    "over_budget (the period's cap would be exceeded: the next one is tried), unpriced "
    "(an order in a currency without a rate).",
    ["kind", "outcome"],
)
REMEDY_REDEMPTIONS = Counter(
    "outreach_remedy_redemptions_total",
    "Remedy codes used with an order, by kind: first (the redemption) or again (a code "
    "used more than once).",
    ["kind", "use"],
)
REMEDY_BUDGET_SPENT = Gauge(
    "outreach_remedy_budget_spent",
    "What the remedies granted in the current budget period cost, in the policy's currency.",
    ["currency"],
)
REMEDY_BUDGET_CAP = Gauge(
    "outreach_remedy_budget_cap",
    "The remedy budget's cap per period, in the policy's currency (absent: no cap).",
    ["currency"],
)
IN_DOUBT = Counter(
    "outreach_in_doubt_sends_total",
    "Sends in doubt (a timeout or 5xx after the request left, a crash or stall during the "
    "call), settled by asking the provider: found, absent, unknown (failed for a person), "
    "retry (the provider could not be asked; asked again later).",
    ["channel", "outcome"],
)
SWEPT = Counter(
    "outreach_swept_total",
    "Ledger rows found in an intermediate state after their lease (their holder died or "
    "stalled) and taken over, by the state they were found in.",
    ["status"],
)
STALE_REPORTS = Counter(
    "outreach_stale_provider_reports_total",
    "Provider reports that changed nothing because the message was already past them "
    "(a late, repeated or reordered webhook; a message only moves forward).",
    ["report", "status"],
)
INPUT_HELD = Gauge(
    "outreach_input_held",
    "1 while a consumer holds its input because a dependency is down (paused, retrying "
    "with backoff; nothing is dead-lettered for an outage).",
    ["service"],
)
INPUT_HOLDS = Counter(
    "outreach_input_holds_total",
    "Times a consumer held its input for a dependency outage, by what was unavailable.",
    ["service", "dependency"],
)


# preferences' gRPC server (services/preferences/entrypoints/grpc_guard.py).
GRPC_REQUESTS = Counter(
    "outreach_grpc_requests_total", "gRPC requests by method and status code.", ["method", "code"]
)
GRPC_SECONDS = Histogram(
    "outreach_grpc_request_seconds",
    "gRPC latency by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
)


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label set: on a per-record path the
    lookup costs more than the update."""
    return metric.labels(*labels)
