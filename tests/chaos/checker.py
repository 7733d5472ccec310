"""The checker, in the manner of a Jepsen checker: it reads only what the system did to
the world — the messages the provider doubles accepted, the delivery ledger, the records
on the topics, the consumer groups' offsets — never a service's internals, and judges
every decision of a run:

- exactly one accepted provider message per message sent (per decision, and per cause
  and revision: two decisions for one incident revision are a duplicate too), or a
  recorded reason why none;
- nothing lost: every incident trigger reached outreach as a request, every request has
  a decision, every decision is settled (sent, delivered, suppressed with a reason,
  failed for a permanent reason, or held for a moment still to come), and what the
  ledger says was sent reached a provider;
- no message after an opt-out or withdrawn consent that preferences acknowledged before
  it (`OPT_OUT_GRACE`: the change stream's way to every worker);
- no SMS or WhatsApp in the recipient's quiet hours, in their zone;
- no outdated message: none about an incident's revision accepted after the request for
  a newer revision of it was on `outreach.requests` (`OPT_OUT_GRACE` again);
- no status going backwards on `outreach.messages`;
- nothing dead-lettered (the input is valid: only an outage could have put it there);
- every consumer group caught up at the end.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg

from services.outreach.domain.decisions import quiet_until
from tests.chaos.workload import Customer, Storm

OPT_OUT_GRACE_S = 1.0
SETTLED = {"sent", "delivered", "suppressed", "failed"}
# Failures that are the recipient's or the content's, not a fault's: a reason recorded.
PERMANENT = ("21211", "21614", "21610", "21408", "63016", "21617", "render_failed", "400")
# Public states in the order a message passes them (failed with `fallback_to` is one
# channel's failure, not the message's).
RANK = {"scheduled": 0, "sent": 1, "delivered": 2, "failed": 2, "suppressed": 2}
GROUPS = ("preferences", "orders_watcher", "risk_detector", "outreach")


@dataclass
class OptOut:
    customer_id: str
    channel: str | None  # None: marketing consent withdrawn (every channel's marketing)
    acknowledged_at: float


@dataclass
class Verdict:
    scenario: str
    decisions: int = 0
    accepted: int = 0
    duplicates: int = 0
    lost: int = 0
    after_opt_out: int = 0
    quiet_hours: int = 0
    outdated: int = 0
    backwards: int = 0
    dead_letters: int = 0
    lag: int = 0
    harness: int = 0  # the run itself went wrong (its verdict says nothing)
    seconds: float = 0.0
    injected: str = ""  # what the fault did, as seen at the doubles and the processes
    outcomes: dict[str, int] = field(default_factory=dict)  # "status/reason" → decisions
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.duplicates
            or self.lost
            or self.after_opt_out
            or self.quiet_hours
            or self.outdated
            or self.backwards
            or self.dead_letters
            or self.lag
            or self.harness
        )

    def note(self, column: str, text: str) -> None:
        setattr(self, column, getattr(self, column) + 1)
        if len(self.notes) < 40:
            self.notes.append(f"{column}: {text}")


@dataclass
class Observed:
    """Everything the checker reads, read once."""

    ledger: list[dict[str, Any]]
    messages: list[dict[str, Any]]  # accepted by the doubles: decision_id, to, at, channel
    requests: list[dict[str, Any]]
    events: list[dict[str, Any]]
    dead_letters: list[str]
    lag: int


def accepted_messages(world: Any) -> list[dict[str, Any]]:
    """What the provider doubles accepted, with the decision each belongs to (Twilio:
    the status callback's query; SendGrid: custom_args)."""
    out = []
    for m in list(world.twilio.messages):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(m.get("StatusCallback", "")).query)
        to = m["To"]
        out.append(
            {
                "decision_id": (query.get("decision_id") or [""])[0],
                "channel": "whatsapp" if to.startswith("whatsapp:") else "sms",
                "to": to.removeprefix("whatsapp:"),
                "at": m["accepted_at"],
                "body": m.get("Body", ""),
            }
        )
    for m in list(world.sendgrid.messages):
        mail = m["json"]
        out.append(
            {
                "decision_id": mail.get("custom_args", {}).get("decision_id", ""),
                "channel": "email",
                "to": mail["personalizations"][0]["to"][0]["email"],
                "at": m["accepted_at"],
                "body": mail.get("subject", ""),
            }
        )
    return out


def read_ledger(url: str, run: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT decision_id, request_id, customer_id, order_id, cause_type, cause_id, "
            "revision, status, reason, channel, send_at, outbox, category, intent "
            "FROM deliveries WHERE customer_id LIKE %s",
            (run + "%",),
        )
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    try:
        from kafka import TopicPartition

        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            if all(consumer.position(tp) >= end[tp] for tp in tps):
                break
        return records
    finally:
        consumer.close()


def group_lag(bootstrap: str, prefix: str) -> dict[str, int]:
    """Per consumer group of the run: records on its committed partitions not yet
    committed as consumed."""
    from kafka import KafkaAdminClient
    from kafka.admin import OffsetSpec

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        lag: dict[str, int] = {}
        committed = admin.list_group_offsets([prefix + service for service in GROUPS])
        for group, offsets in committed.items():
            if not offsets:
                continue
            ends = admin.list_partition_offsets(dict.fromkeys(offsets, OffsetSpec.LATEST))
            lag[group] = sum(max(0, ends[tp].offset - meta.offset) for tp, meta in offsets.items())
        return lag
    finally:
        admin.close()


def dead_letters(bootstrap: str, prefix: str) -> list[str]:
    """Every dead letter of the run, as "service: original topic [code] reason"."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","))
    try:
        topics = [t for t in consumer.topics() if t.startswith(prefix + "deadletter.")]
    finally:
        consumer.close()
    found = []
    for record in (r for t in topics for r in read_topic(bootstrap, t)):
        head = {k: (v or b"").decode(errors="replace") for k, v in record.headers or []}
        found.append(
            f"{head.get('dlq.service', record.topic)}: {head.get('dlq.original.topic')}"
            f" [{head.get('dlq.reason.code')}] {head.get('dlq.reason', '')[:300]}"
        )
    return found


def observe(world: Any, storm: Storm) -> Observed:
    bootstrap, prefix = world.bootstrap, world.prefix
    requests = [
        orjson.loads(r.value) | {"published_at": r.timestamp / 1000}
        for r in read_topic(bootstrap, prefix + "outreach.requests")
    ]
    events = [orjson.loads(r.value) for r in read_topic(bootstrap, prefix + "outreach.messages")]
    run = storm.run
    return Observed(
        ledger=read_ledger(world.databases.outreach_url, run),
        messages=[m for m in accepted_messages(world) if m["decision_id"]],
        requests=[r for r in requests if r["data"]["customer_id"].startswith(run)],
        events=[e for e in events if e["data"]["customer_id"].startswith(run)],
        dead_letters=dead_letters(bootstrap, prefix),
        lag=sum(group_lag(bootstrap, prefix).values()),
    )


def unsettled(observed: Observed, storm: Storm, now: datetime) -> list[str]:
    """What is still under way (empty: the run has come to rest): triggers without a
    request, requests without a decision, decisions in flight or due, and the messages
    of customers whose quiet hours end during the run, until they are released."""
    waiting = []
    asked = {r["data"].get("order_id") for r in observed.requests}
    waiting += [f"no request yet for {o}" for o in storm.triggers if o not in asked]
    kinds = {(r["data"]["customer_id"], r["data"]["message_kind"]) for r in observed.requests}
    waiting += [
        f"no check-in yet for {c.customer_id}"
        for c in storm.of("checkin")
        if (c.customer_id, "serial_returns") not in kinds
    ]
    waking = {c.customer_id for c in storm.customers if c.wakes_at is not None}
    decided = {row["request_id"] for row in observed.ledger}
    waiting += [
        f"no decision yet for {r['data']['request_id']}"
        for r in observed.requests
        if r["data"]["request_id"] not in decided
    ]
    for row in observed.ledger:
        if row["status"] in ("decided", "sending", "in_doubt"):
            waiting.append(f"{row['decision_id']} {row['status']}")
        elif row["status"] == "scheduled" and (
            row["send_at"] is None or row["send_at"] <= now or row["customer_id"] in waking
        ):
            waiting.append(f"{row['decision_id']} scheduled for {row['send_at']}")
    if observed.lag:
        waiting.append(f"consumer lag {observed.lag}")
    return waiting


def judge(scenario: str, observed: Observed, storm: Storm, opt_outs: list[OptOut]) -> Verdict:
    verdict = Verdict(scenario, decisions=len(observed.ledger), accepted=len(observed.messages))
    verdict.outcomes = dict(
        sorted(Counter(f"{r['status']}/{r['reason'] or '-'}" for r in observed.ledger).items())
    )
    _exactly_once(verdict, observed)
    _nothing_lost(verdict, observed, storm)
    _consent_respected(verdict, observed, storm, opt_outs)
    _quiet_hours_kept(verdict, observed, storm)
    _never_outdated(verdict, observed)
    _forward_only(verdict, observed)
    for letter in observed.dead_letters:
        verdict.note("dead_letters", letter)
    verdict.lag = observed.lag
    return verdict


def _exactly_once(verdict: Verdict, observed: Observed) -> None:
    per_decision = Counter(m["decision_id"] for m in observed.messages)
    rows = {row["decision_id"]: row for row in observed.ledger}
    for decision_id, count in per_decision.items():
        if count > 1:
            verdict.note("duplicates", f"{decision_id}: {count} messages accepted")
            verdict.duplicates += count - 2  # `note` counted one
        row = rows.get(decision_id)
        if row is None or row["status"] not in ("sent", "delivered", "failed"):
            status = row["status"] if row else "no decision"
            verdict.note("lost", f"{decision_id}: accepted by a provider, ledger says {status}")
    per_revision: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for row in observed.ledger:
        if per_decision.get(row["decision_id"]):
            per_revision[(row["cause_type"], row["cause_id"], row["revision"])].add(
                row["decision_id"]
            )
    for key, decisions in per_revision.items():
        if len(decisions) > 1:
            verdict.note("duplicates", f"{key}: {len(decisions)} decisions sent")


def _nothing_lost(verdict: Verdict, observed: Observed, storm: Storm) -> None:
    asked = {r["data"].get("order_id") for r in observed.requests}
    for order_id in storm.triggers:
        if order_id not in asked:
            verdict.note("lost", f"order {order_id}: its incident never reached outreach")
    kinds = {(r["data"]["customer_id"], r["data"]["message_kind"]) for r in observed.requests}
    for customer in storm.of("checkin"):
        if (customer.customer_id, "serial_returns") not in kinds:
            verdict.note("lost", f"{customer.customer_id}: no check-in after three returns")
    decided = {row["request_id"] for row in observed.ledger}
    for request in observed.requests:
        if request["data"]["request_id"] not in decided:
            verdict.note("lost", f"request {request['data']['request_id']}: no decision")
    sent = {m["decision_id"] for m in observed.messages}
    now = datetime.now(UTC)
    for row in observed.ledger:
        status, reason = row["status"], row["reason"] or ""
        if status in ("decided", "sending", "in_doubt"):
            verdict.note("lost", f"{row['decision_id']}: left in {status}")
        elif status == "scheduled" and (row["send_at"] is None or row["send_at"] <= now):
            verdict.note("lost", f"{row['decision_id']}: scheduled for {row['send_at']}, not sent")
        elif status == "failed" and not reason.startswith(PERMANENT):
            verdict.note("lost", f"{row['decision_id']}: failed ({reason})")
        elif status in ("sent", "delivered") and not row["outbox"]:
            if row["decision_id"] not in sent:
                verdict.note("lost", f"{row['decision_id']}: {status} but no provider has it")


def _consent_respected(
    verdict: Verdict, observed: Observed, storm: Storm, opt_outs: list[OptOut]
) -> None:
    customers = storm.by_id()
    rows = {row["decision_id"]: row for row in observed.ledger}
    for message in observed.messages:
        row = rows.get(message["decision_id"])
        if row is None:
            continue
        for opt_out in opt_outs:
            if opt_out.customer_id != row["customer_id"]:
                continue
            if opt_out.channel is None and row["category"] != "marketing":
                continue  # withdrawn marketing consent: service messages still go
            if opt_out.channel not in (None, message["channel"]):
                continue
            late = message["at"] - opt_out.acknowledged_at
            if late > OPT_OUT_GRACE_S:
                who = customers[row["customer_id"]]
                verdict.note(
                    "after_opt_out",
                    f"{message['decision_id']} to {who.customer_id} by {message['channel']} "
                    f"{late:.1f} s after its opt-out ({opt_out.channel or 'marketing'})",
                )


def _quiet_hours_kept(verdict: Verdict, observed: Observed, storm: Storm) -> None:
    customers = storm.by_id()
    rows = {row["decision_id"]: row for row in observed.ledger}
    for message in observed.messages:
        row = rows.get(message["decision_id"])
        if row is None or message["channel"] == "email":
            continue
        who: Customer = customers[row["customer_id"]]
        start, end = (dtime.fromisoformat(t) for t in who.quiet)
        at = datetime.fromtimestamp(message["at"], UTC)
        if quiet_until(at, who.zone, start, end) is not None:
            local = at.astimezone(ZoneInfo(who.zone))
            verdict.note(
                "quiet_hours",
                f"{message['decision_id']} at {local:%H:%M:%S} in {who.zone} "
                f"(quiet {who.quiet[0]}-{who.quiet[1]})",
            )


def _never_outdated(verdict: Verdict, observed: Observed) -> None:
    newer: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for request in observed.requests:
        data = request["data"]
        revision = (data.get("context", {}).get("incident") or {}).get("revision", 1)
        newer[(data["cause"]["type"], data["cause"]["id"])].append(
            (int(revision), request["published_at"])
        )
    rows = {row["decision_id"]: row for row in observed.ledger}
    for message in observed.messages:
        row = rows.get(message["decision_id"])
        if row is None:
            continue
        for revision, published_at in newer[(row["cause_type"], row["cause_id"])]:
            if revision > row["revision"] and message["at"] - published_at > OPT_OUT_GRACE_S:
                verdict.note(
                    "outdated",
                    f"{message['decision_id']}: revision {row['revision']} sent "
                    f"{message['at'] - published_at:.1f} s after revision {revision} was known",
                )
                break


def _forward_only(verdict: Verdict, observed: Observed) -> None:
    seen: set[str] = set()
    per_decision: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in observed.events:  # topic order per partition = per customer
        if event["id"] in seen:
            continue  # a relay's retry: the same event again, recognised by its id
        seen.add(event["id"])
        per_decision[event["data"]["decision_id"]].append(event)
    for decision_id, events in per_decision.items():
        rank = -1
        final = False
        for event in events:
            status = event["type"].rsplit(".", 1)[1]
            if status == "failed" and event["data"].get("fallback_to"):
                continue
            if final or RANK[status] < rank:
                verdict.note(
                    "backwards",
                    f"{decision_id}: {[e['type'].rsplit('.', 1)[1] for e in events]}",
                )
                break
            rank = RANK[status]
            final = status in ("delivered", "failed", "suppressed")


def injected(world: Any) -> str:
    """Proof the fault struck: provider requests answered by a fault, callbacks that
    failed, were duplicated or came late, and process events (kills, restarts, outages)."""
    faults: Counter[str] = Counter()
    posts = failed = 0
    for double in (world.twilio, world.sendgrid):
        for attempt in list(double.attempts):
            if attempt["outcome"] not in ("accepted", "rejected", "read", "pending"):
                faults[attempt["outcome"]] += 1
        for post in list(double.dispatcher.log):
            posts += 1
            failed += bool(post.get("error") or (post.get("status") or 0) >= 500)
    parts = [f"{n} {kind}" for kind, n in sorted(faults.items())]
    parts.append(f"{posts} callbacks ({failed} failed)")
    if world.events:
        parts.append(f"{len(world.events)} process events")
    return ", ".join(parts)
