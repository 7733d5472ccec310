"""Write docs/configuration.md from the services' Settings classes (the single source).

python deploy/dev/gen_config_docs.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from common.kafka_security import KafkaSecurity
from common.settings import ServiceSettings
from common.tracing import OTEL_ENVIRONMENT
from services.orders_watcher.config import Settings as WatcherSettings
from services.outreach.config import Settings as OutreachSettings
from services.preferences.config import Settings as PreferencesSettings
from services.risk_detector.config import Settings as RiskSettings

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "docs" / "configuration.md"
NOTES = {
    "KAFKA_BOOTSTRAP_SERVERS": "Kafka cluster, host:port[,host:port]",
    "KAFKA_SECURITY_PROTOCOL": (
        "`PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or `SASL_SSL`: how every Kafka client of"
        " the process connects (its consumers and producers, faust, topic creation,"
        " outreachctl, the simulator)"
    ),
    "KAFKA_SSL_CAFILE": "PEM of the CA the brokers' certificates are checked against (unset: the system's trust store)",
    "KAFKA_SSL_CERTFILE": "PEM of this client's certificate, for mutual TLS (with `KAFKA_SSL_KEYFILE`)",
    "KAFKA_SSL_KEYFILE": "PEM of that certificate's private key",
    "KAFKA_SSL_KEY_PASSWORD": "the key's password, if it is encrypted",
    "KAFKA_SSL_CHECK_HOSTNAME": "whether the broker's name must match its certificate",
    "KAFKA_SASL_MECHANISM": "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (needed with `SASL_*`)",
    "KAFKA_SASL_USERNAME": "the SASL user (needed with `SASL_*`)",
    "KAFKA_SASL_PASSWORD": "its password (masked in every repr and log line)",
    "OUTREACH_CLOCK": (
        "`wall` (production) or `event`: the low watermark of the arrival times (Kafka"
        " timestamps) of the records consumed, never ahead of a partition that may hold an"
        ' earlier record unread (docs/architecture.md, "Time")'
    ),
    "OUTREACH_PROVIDER_RATE_PER_S": (
        "messages per second one provider takes from the whole group of outreach workers;"
        " each live worker sends its even share (docs/delivery.md)"
    ),
    "OUTREACH_TOPIC_PREFIX": "prefix for every topic and consumer group (isolated pipelines)",
    "OUTREACH_TOPIC_PARTITIONS": "partitions of topics the services create",
    "OUTREACH_DATA_DIR": "where embedded state lives (SQLite files, RocksDB tables, secrets)",
    "LOG_LEVEL": "log level",
    "LOG_FORMAT": "`json` or `console`",
    "OUTREACH_HTTP_HOST": "address of the ops/HTTP server (0.0.0.0 in Kubernetes)",
    "OUTREACH_CONSUMER_MAX_FETCH_BYTES": (
        "bytes the stream services' consumers fetch per partition at once (faust's default"
        " 1 MiB halved changelog recovery speed)"
    ),
    "OUTREACH_PRODUCER_MAX_BATCH_BYTES": (
        "bytes the stream services' producers put in one batch per partition (faust's"
        " default 16 KiB sent the watcher's table writes in many small requests)"
    ),
    "OUTREACH_WATERMARK_IDLE_S": (
        "event clock: wall seconds a partition that cannot be confirmed read to its end"
        " (records on the broker that do not come, a broker that does not answer) holds the"
        " clock back before it is passed over"
    ),
    "OUTREACH_WATERMARK_MAX_BUFFERED": (
        "event clock: records that may wait per partition for the others to catch up before"
        " that partition is paused"
    ),
    "OUTREACH_TOPIC_RETENTION_MS": (
        "retention of every topic the services and `outreachctl topics create` create"
        " (unset: 7 days, dead letters 30); -1 keeps everything. Kafka judges retention by"
        " the records' timestamps: a replay of recorded events (stamped months back) needs"
        " -1 or more than the story's age, or its rolled segments are deleted before they"
        " are read. Tests, `make run` and `make bench` use -1"
    ),
    "OUTREACH_BULK_RECOVERY": (
        "copy changelog partitions straight into RocksDB when a table is recovered, before"
        " faust's own pass (`false`: faust alone)"
    ),
    "OUTREACH_TABLE_STANDBY_REPLICAS": (
        "stream services (orders_watcher, risk_detector): how many other workers keep a"
        " warm copy of each table partition, read from its changelog as it is written; a"
        " worker taking over a partition then has its table and reads only the last records"
        " (needs that many more replicas than one; each standby costs the table's disk and"
        " the changelog's reads)"
    ),
    "OUTREACH_BULK_RECOVERY_MIN_RECORDS": (
        "a partition with at least this many changelog records to read is copied in bulk"
    ),
    "OUTREACH_ROCKSDB_WRITE_BUFFER_BYTES": (
        "RocksDB memtable size per table partition (up to three; faust's default 64 MiB)"
    ),
    "OUTREACH_ROCKSDB_BLOCK_CACHE_BYTES": (
        "RocksDB block cache per table partition (faust's default 2 GiB)"
    ),
    "OUTREACH_TRACING_ENABLED": "OpenTelemetry traces over OTLP/HTTP (the `OTEL_*` variables below); off → no spans, no cost",
    "OUTREACH_EVENT_LOOP": "event loop of the stream services (orders_watcher, risk_detector): `uvloop` or `asyncio`",
    "OUTREACH_ADVERTISED_URL": "how the other replicas of a stream service reach this one's HTTP port (the chart sets the pod's address): `explain` about a customer another replica holds is passed to it; unset: this host's name and the service's HTTP port",
    "PREFERENCES_GRPC_TARGET": "where outreach finds preferences",
    "ORDERS_WATCHER_STORE": "faust table store: `rocksdb://` (rocksdict) or `memory://`",
    "RISK_DETECTOR_STORE": "faust table store: `rocksdb://` (rocksdict) or `memory://`",
    "ORDERS_WATCHER_AT_RISK_MARGIN_HOURS": "delivery_at_risk when the estimate is this far past the promise",
    "ORDERS_WATCHER_STALL_HOURS": "shipment_stalled after this long without a tracking update",
    "ORDERS_WATCHER_STALL_HOURS_EXPRESS": "the same for express and next_day",
    "ORDERS_WATCHER_REFUND_DAYS": "refund_late when received and not refunded within this",
    "ORDERS_WATCHER_CHECKIN_HOURS": "post_incident_checkin this long after delivery",
    "ORDERS_WATCHER_ORPHAN_HOLD_MINUTES": "how long a shipment/return waits for its order before it is dead-lettered",
    "ORDERS_WATCHER_ALLOWED_LATENESS_S": (
        "how late an event may arrive and still count: absence rules fire this long after"
        " their deadline"
    ),
    "ORDERS_WATCHER_RETENTION_DAYS": "state of a finished order is dropped this long after it finished",
    "ORDERS_WATCHER_TICK_INTERVAL_S": (
        "how often (wall seconds) due deadlines are looked for when no record comes (between"
        " records they are looked for at once)"
    ),
    "ORDERS_WATCHER_TICK_MAX_DUE": (
        "due orders acted on per batch of input records, besides one per record; the rest"
        " of a wave in the batches after it (an order's own due deadline always goes"
        " before its record)"
    ),
    "ORDERS_WATCHER_BATCH_MAX": (
        "at most this many records handled as one batch (a batch is what one fetch"
        " brought): their outputs are acknowledged together, then each changed order is"
        " written once"
    ),
    "ORDERS_WATCHER_BATCHES_IN_FLIGHT": (
        "batches finished in the background (outputs acknowledged, states written, records"
        " acknowledged, in order) while the next is handled; the next waits when this many"
        " are"
    ),
    "ORDERS_WATCHER_STATE_CACHE_MAX": (
        "decoded states of recently handled orders kept in memory (the next record of the"
        " same order skips the table read and the parse); 0: off"
    ),
    "ORDERS_WATCHER_PRODUCER_LINGER_S": (
        "how long the producer gathers records into one request (outputs of a batch are"
        " acknowledged together)"
    ),
    "ORDERS_WATCHER_FETCH_MIN_BYTES": (
        "a fetch waits for this many bytes of input (or `ORDERS_WATCHER_FETCH_MAX_WAIT_MS`):"
        " larger batches at moderate rates, about a fifth less CPU at half the sustainable"
        " rate; 1 answers at the first record"
    ),
    "ORDERS_WATCHER_FETCH_MAX_WAIT_MS": (
        "the longest a fetch waits for `ORDERS_WATCHER_FETCH_MIN_BYTES` (adds up to this to"
        " detection latency when input is sparse)"
    ),
    "RISK_DETECTOR_CHECKIN_SCORE": "check-in at this churn-risk score",
    "RISK_DETECTOR_ORDER_MEMORY_DAYS": (
        "how long risk_detector remembers an order's customer after the order's latest fact"
        " (to re-key facts that do not name the customer, e.g. order.cancelled)"
    ),
    "RISK_DETECTOR_HANDOFF_SCORE": "hand-off to a human at this score (high-value customers)",
    "RISK_DETECTOR_HIGH_VALUE_SPEND": "365-day spend that makes a customer high-value (besides the top 10 %)",
    "RISK_DETECTOR_CHECKIN_QUIET_DAYS": "no new check-in for the same reasons within this",
    "RISK_DETECTOR_TICK_INTERVAL_S": "how often (wall seconds) due rhythm checks (silence since the last order) are looked for",
    "OUTREACH_DATABASE_URL": "ledger and templates: `postgresql://...`; unset → SQLite in the data dir",
    "PREFERENCES_DATABASE_URL": "`postgresql://...`; unset → SQLite in the data dir",
    "OUTREACH_PUBLIC_BASE_URL": "base of the links we send (unsubscribe, webhooks)",
    "OUTREACH_CAP_MESSAGES": "frequency cap: proactive messages per customer per window",
    "OUTREACH_CAP_WINDOW_DAYS": "frequency cap window",
    "OUTREACH_HOLDOUT_SHARE": "share of customers whose messages are deliberately not sent (the experiment `holdout`, covering every message; never critical or action-needed ones: docs/outcomes.md)",
    "OUTREACH_EXPERIMENTS": "experiments, `<name> <subject> <control share>` separated by `;` (subjects `all`, `rule:<kind>`, `intent:<intent>`, `template:<kind>.<channel>.<locale>@<version>`, `remedy:<kind>` or `remedy:*`): docs/outcomes.md",
    "OUTREACH_OUTCOMES_REFRESH_S": "how often the studio exports the outcome report's gauges for the business dashboard (docs/outcomes.md)",
    "OUTREACH_MAX_ATTEMPTS": "provider calls that may fail (not counting throttling: 429, our rate limit, an open breaker) before a message is failed",
    "OUTREACH_TEMPLATE_REFRESH_S": "how often workers look for newly published templates",
    "OUTREACH_CONTROLS_REFRESH_S": "how often workers read the kill switch (pause/resume)",
    "OUTREACH_CONCURRENCY": "requests a worker handles at once, in lanes by customer (one customer's stay in order); on the wall clock four times as many are fetched ahead, so a lane never waits for another",
    "OUTREACH_IN_DOUBT_AFTER_S": "lease of a claimed send (and of a decision not yet claimed): a row still there after it was left by a process that died or stalled, and is taken over; at least twice OUTREACH_PROVIDER_TIMEOUT_S",
    "OUTREACH_IN_DOUBT_CHECK_S": "how often a worker sweeps the ledger for rows whose lease ran out and sends in doubt due for a look",
    "OUTREACH_IN_DOUBT_SETTLE_S": "after an ambiguous provider answer (a timeout, a 5xx, a reset after the request left), wait this long before asking the provider whether it has the message; at least OUTREACH_PROVIDER_TIMEOUT_S",
    "OUTREACH_IN_DOUBT_GIVE_UP_S": "a send in doubt whose provider cannot be asked for this long is failed (reason in_doubt) for a person to look at",
    "OUTREACH_PROVIDER_TIMEOUT_S": "how long a provider call (Twilio, SendGrid) may take before it is given up as in doubt",
    "OUTREACH_EVENT_RETRY_S": "how long a provider may take to retry a report (SendGrid's signed events) our webhooks could not take because every worker was down; an email in doubt after such a gap is sent again only once a worker has been up this long",
    "OUTREACH_RENDER_PROCESSES": "processes that render templates (workers, studio): a template runs there, off the event loop, under the two limits below",
    "OUTREACH_RENDER_TIMEOUT_S": "a render (or a preview, a publish check) taking longer is stopped and fails with a reason; the process is replaced",
    "OUTREACH_RENDER_MEMORY_MB": "address space of a render process: a template needing more fails with a reason",
    "OUTREACH_REPLY_DOMAIN": (
        "the domain SendGrid's Inbound Parse receives mail for: emails carry a signed"
        " reply-to address on it, so a reply reaches its conversation (unset: no reply-to"
        " of ours; docs/conversations.md)"
    ),
    "OUTREACH_REPLY_SECRET": (
        "signs the reply-to addresses; needed with `OUTREACH_REPLY_DOMAIN`, the same for"
        " every worker"
    ),
    "OUTREACH_INBOUND_PARSE_USER": (
        "HTTP Basic user the Inbound Parse URL carries (`https://user:password@host/"
        "webhooks/sendgrid/inbound`); unset: the endpoint answers 404"
    ),
    "OUTREACH_INBOUND_PARSE_PASSWORD": "its password",
    "OUTREACH_HANDOFF_INTENTS": (
        "reply intents that go to a person on support.handoffs, comma-separated (opt_out,"
        " wrong_contact, wants_person, complaint, question, thanks, other)"
    ),
    "OUTREACH_HANDOFF_TONES": "reply tones that go to a person, comma-separated (angry, neutral, happy; empty: none)",
    "OUTREACH_HANDOFF_CRITICAL": "whether every reply to a message about a critical incident (a lost or damaged parcel) goes to a person, whatever it says",
    "OUTREACH_HANDOFF_HISTORY": "how many turns of the conversation (latest) a hand-off carries",
    "OUTREACH_REPLY_SWEEP_S": (
        "how often, and after how long, a reply whose effects were not all handed over"
        " (Kafka away, a crash) is carried out again"
    ),
    "RISK_DETECTOR_CHECKIN_WAITS_FOR_AGENT": (
        "with a hand-off, the automated check-in waits for the agent's outcome on"
        " support.resolutions: dropped when solved, sent on no contact"
    ),
    "RISK_DETECTOR_AGENT_WAIT_DAYS": (
        "days a check-in waits for the agent's outcome; then it goes with the customer's next fact"
    ),
    "OUTREACH_SURVEY_KINDS": (
        "message kinds that ask how we did (a one-question CSAT survey: reply 1-5 or the"
        " one-click page), comma-separated; their templates show `survey` when set"
    ),
    "OUTREACH_SURVEY_QUIET_DAYS": (
        "a customer is asked at most once in this many days (a survey kind's message sent"
        " within them carries no survey)"
    ),
    "OUTREACH_HANDOFF_SURVEY_BELOW": "a survey score below this goes to a person (0: none)",
    "OUTREACH_CONSOLIDATE_S": (
        "seconds a message about an incident waits for the customer's other incidents, so "
        "that one message names each (0: it goes at once; messages released together by "
        "quiet hours or a resume merge anyway; docs/consolidation.md)"
    ),
    "OUTREACH_STORM_RATE": (
        "`<incidents>/<seconds>`: this many incidents of one cause (a carrier's hub, a carrier,"
        " the shop's dispatch) detected within this many seconds make a storm (docs/storms.md)"
    ),
    "OUTREACH_STORM_APPROVAL_SIZE": (
        "from this many incidents on, a storm's messages wait for an operator's approval in the"
        " studio (0: they never wait; the chart sets 200)"
    ),
    "OUTREACH_STORM_QUIET_S": "a storm with no new incident for this many seconds is over",
    "OUTREACH_CORRECTIONS": (
        "incident closings that contradict a message already sent and get one correction: "
        "kind:resolution, comma-separated, `*` any kind; empty: none (docs/corrections.md)"
    ),
    "OUTREACH_HELPDESK_PORT": "the helpdesk adapter's HTTP port: /webhooks/zendesk, /metrics, /livez, /readyz",
    "ZENDESK_SUBDOMAIN": "the Zendesk account (`<subdomain>.zendesk.com`) the helpdesk adapter opens tickets in",
    "ZENDESK_EMAIL": "the agent or bot account the adapter's API token belongs to",
    "ZENDESK_API_TOKEN": "its Zendesk API token (Basic `email/token:TOKEN`)",
    "ZENDESK_API_BASE_URL": "Zendesk's API base instead of `https://<subdomain>.zendesk.com` (a proxy, a test double)",
    "ZENDESK_WEBHOOK_SECRET": "the signing secret of the Zendesk webhook that reports the agents' outcomes (unset: every webhook is refused)",
    "OUTREACH_WEBHOOK_MAX_AGE_S": "a signed provider webhook (SendGrid's events) whose timestamp is further than this from now is refused as a replay",
    "OUTREACH_LEDGER_RETENTION_DAYS": "settled messages older than this lose their personal data in the ledger (address, names, bodies); their decisions stay for the audit",
    "OUTREACH_RELAY_LEASE_S": "one worker at a time relays ledger changes to outreach.messages (in order); its lease, renewed while it relays",
    "OUTREACH_LEDGER_METRICS_S": "how often a worker counts the ledger by state (outreach_ledger_deliveries)",
    "OUTREACH_RESUME_RAMP_MINUTES": "default ramp after a resume: the held backlog climbs from 10 % to the full rate",
    "OUTREACH_OPERATOR_TOKEN": "bearer token of /ops/sending (pause/resume); unset → loopback callers only",
    "OUTREACH_STUDIO_OPS_PORT": "the studio's ops port: /metrics, /livez, /readyz (its own port serves the studio and health, no metrics)",
    "OUTREACH_STUDIO_PORT": "port of the template studio (its own process)",
    "OUTREACH_STUDIO_SECURE_COOKIES": "mark studio cookies Secure (set it behind HTTPS)",
    "OUTREACH_STUDIO_SESSION_HOURS": "a studio sign-in lasts this long",
    "OUTREACH_STUDIO_LOGIN_ATTEMPTS": "failed sign-ins per user and per address before a pause",
    "OUTREACH_STUDIO_LOGIN_WINDOW_S": "the window (and the pause) of that limit",
    "OUTREACH_STUDIO_TRUSTED_USER_HEADER": "SSO mode: header carrying the signed-in user (e.g. X-Forwarded-User)",
    "OUTREACH_STUDIO_TRUSTED_ROLE_HEADER": "SSO mode: header carrying the role (viewer, editor, publisher, admin, support)",
    "OUTREACH_STUDIO_TRUSTED_DEFAULT_ROLE": "SSO mode: role of a user whose proxy sends no role",
    "OUTREACH_STUDIO_TRUSTED_PROXIES": "SSO mode: addresses (CIDR) whose headers are believed",
    "OUTREACH_STUDIO_TEST_SENDS_PER_HOUR": "test sends per studio user per hour",
    "OUTREACH_PREFERENCES_CACHE_TTL_S": "contact-plan cache lifetime (also dropped on change)",
    "OUTREACH_PREFERENCES_CACHE_MAX_ENTRIES": (
        "contact plans cached at most (least recently used dropped first; 0: no cache)"
    ),
    "PREFERENCES_GRPC_REUSE_PORT": "replicas on one host share the gRPC port (SO_REUSEPORT; off: a taken port fails the start)",
    "PREFERENCES_WRITE_TOKEN": "bearer token the write RPCs require (it reads too); required unless PREFERENCES_ALLOW_ANONYMOUS",
    "PREFERENCES_READ_TOKEN": "bearer token the read RPCs and WatchChanges require; required unless mTLS is on (PREFERENCES_TLS_CLIENT_CA) or PREFERENCES_ALLOW_ANONYMOUS",
    "PREFERENCES_ALLOW_ANONYMOUS": "the development profile: every RPC without credentials (never in production)",
    "OUTREACH_PREFERENCES_TOKEN": "preferences' read token, sent on every call and on the change stream",
    "PREFERENCES_PSEUDONYM_SALT": "secret for erased customers' tombstones",
    "PREFERENCES_DEFAULT_CHANNEL_ORDER": "channel order for customers who never chose",
    "PREFERENCES_TLS_CERT": "PEM certificate (chain) of the gRPC server; with `_KEY` the server speaks TLS only",
    "PREFERENCES_TLS_KEY": "PEM private key of that certificate",
    "PREFERENCES_TLS_CLIENT_CA": "mTLS: PEM CA bundle; clients must present a certificate it signed",
    "OUTREACH_PREFERENCES_TLS": "TLS to preferences with the system's roots (implied by the `_TLS_CA`/`_TLS_CERT` settings)",
    "OUTREACH_PREFERENCES_TLS_CA": "PEM CA bundle that signs preferences' certificate (turns TLS on)",
    "OUTREACH_PREFERENCES_TLS_CERT": "outreach's client certificate, when preferences requires mTLS",
    "OUTREACH_PREFERENCES_TLS_KEY": "private key of that client certificate",
    "OUTREACH_PREFERENCES_TLS_SERVER_NAME": "name checked against preferences' certificate instead of the target's host",
}

KAFKA_SECURITY = """\
A production cluster (Strimzi with its TLS listener, a managed Kafka) wants TLS and a
user. These settings are read once at start-up and checked with the others: a protocol
that needs SASL without a user, a certificate without its key, a file that does not
exist or TLS files with a plaintext protocol stop the service with the variable's name.
At start-up each service then connects once as all its clients will
(`common/kafka_security.py`, `check`): a password the cluster refuses, a broker
certificate the CA does not vouch for, or a listener that wants a client certificate
this one lacks stops it at once with the setting to fix (`KafkaAccessDenied`) instead of
retrying for ever; the password is never in the message. On Kubernetes the chart sets
these from `kafka.securityProtocol`, `kafka.caSecret` and `kafka.authentication`, and
can declare one Strimzi KafkaUser per service with ACLs for its own topics and group
(deploy/helm/proactive-outreach/README.md). Locally, `python
deploy/kafka/local_kafka.py up --secure` opens TLS, mutual-TLS and SASL_SSL listeners
with a CA of its own; the e2e suite runs over its SASL_SSL listener with SCRAM-SHA-512."""


def env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    if alias is not None and hasattr(alias, "choices"):
        return str(alias.choices[0])
    return (cls.model_config.get("env_prefix", "") + name).upper()


def default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "unset"
    return f"`{value}`"


def table(cls: type[BaseSettings], skip: set[str]) -> list[str]:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        var = env_name(cls, name, field)
        if var in skip:
            continue
        rows.append(f"| `{var}` | {default(field)} | {NOTES.get(var, name.replace('_', ' '))} |")
    return rows


def render() -> str:
    shared = {env_name(ServiceSettings, n, f) for n, f in ServiceSettings.model_fields.items()}
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable, validated at start-up; a bad value",
        "stops the service with the variable's name. This page is generated from the",
        "Settings classes by `python deploy/dev/gen_config_docs.py` (a test checks it).",
        "",
        "## Every service",
        "",
        *table(ServiceSettings, set()),
        "",
        "### Kafka security",
        "",
        *KAFKA_SECURITY.splitlines(),
        "",
        *table(KafkaSecurity, set()),
    ]
    for title, cls in (
        ("orders_watcher", WatcherSettings),
        ("risk_detector", RiskSettings),
        ("outreach", OutreachSettings),
        ("preferences", PreferencesSettings),
    ):
        lines += ["", f"## {title}", "", *table(cls, shared)]
    lines += [
        "",
        "## Tracing (OpenTelemetry's standard variables)",
        "",
        "Read by every service when `OUTREACH_TRACING_ENABLED=true` (docs/operations.md, Tracing).",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
        *(f"| `{name}` | {value} | {meaning} |" for name, value, meaning in OTEL_ENVIRONMENT),
    ]
    lines += [
        "",
        "Provider credentials unset → that channel runs in outbox mode (SPEC §5).",
        "Secrets unset (`*_SECRET`, `*_SALT`) → generated once into the data dir; set",
        "them in production so that every replica shares them.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print("docs/configuration.md is stale: run python deploy/dev/gen_config_docs.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
