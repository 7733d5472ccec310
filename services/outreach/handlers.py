"""outreach's handlers: an input event and what was read for it in, what to write out.

Pure, as in the other services: each takes the state the runtime read (the contact
plan, what the ledger says of the cause, the pause) and the moment, and returns what to
write: a new decision row and its event, or a `Move` of an existing row
(domain/lifecycle.py). The runtime (runtime.py) reads, writes, renders and calls the
providers; nothing here touches the ledger, a provider, a clock or Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from common import schemas, tracing
from common.envelope import CloudEvent, new_event
from services.outreach.domain import actions, corrections, lifecycle, remedies
from services.outreach.domain import decisions as pipeline
from services.outreach.domain.decisions import ContactPlan, Decision, DeliveryPolicy
from services.outreach.domain.lifecycle import (
    CauseState,
    Entry,
    Moment,
    Move,
    NewRow,
    Recorded,
    Row,
)
from services.outreach.domain.states import Status

SOURCE = "/outreach/outreach"
REQUEST_CREATED = "outreach.request.created"


def facts_of(request: schemas.OutreachRequest, remedy: str | None = None) -> pipeline.RequestFacts:
    """`remedy`: the kind of remedy the remedy policy would offer first (experiments)."""
    return pipeline.RequestFacts(
        request_id=request.request_id,
        customer_id=request.customer_id,
        intent=request.intent.value,
        message_kind=request.message_kind,
        severity=request.severity.value,
        cause_id=request.cause.id,
        offer_tier=request.offer_tier,
        corrects_on=(
            corrections.channel_of(request.context)
            if request.cause.type == corrections.CAUSE_TYPE
            else None
        ),
        cause_type=request.cause.type,
        remedy=remedy,
    )


def remedy_facts(request: schemas.OutreachRequest, offer_tier: str | None) -> remedies.Facts:
    """What the remedy policy matches and prices a message by (`offer_tier`: the
    request's, unless an experiment took the remedy away)."""
    order = (request.context or {}).get("order") or {}
    try:
        total = None if order.get("total") is None else Decimal(str(order["total"]))
    except InvalidOperation:
        total = None
    if total is not None and (not total.is_finite() or total < 0):
        total = None  # priced as a message about no order
    return remedies.Facts(
        message_kind=request.message_kind,
        intent=request.intent.value,
        severity=request.severity.value,
        customer_value=request.customer_value,
        offer_tier=offer_tier,
        order_total=total,
        order_currency=order.get("currency") if isinstance(order.get("currency"), str) else None,
    )


def experience_to_ask(request: schemas.OutreachRequest) -> list[str] | None:
    """For a check-in after an incident (`post_incident_checkin`) whose promise was kept:
    the incidents whose messages count as the customer's experience of it (the runtime
    asks the ledger whether one reached them). None: nothing to ask, it counts."""
    if request.message_kind != "post_incident_checkin":
        return None
    incident = (request.context or {}).get("incident") or {}
    facts = incident.get("facts") or {}
    if facts.get("promise_broken", True):  # older watchers did not say: as before
        return None
    return [str(i) for i in facts.get("incident_ids") or []]


@dataclass(frozen=True)
class Seen:
    """What the runtime read for a decision: the customer's contact plan as of now, what
    the ledger says of the cause, whether a check-in's incident reached the customer,
    and whether sending the request's intent is paused; for experiments on a template
    version, the version that would serve the message on each channel."""

    plan: ContactPlan | None
    cause: CauseState
    experienced: bool = True
    paused: bool = False
    templates: Mapping[str, str] = field(default_factory=dict)
    remedy: str | None = None  # the kind of remedy the policy would offer first


@dataclass(frozen=True)
class Decided:
    """A request decided: its new ledger row (columns), the event recording it, and
    whether older revisions' unsent messages are now superseded."""

    decision: Decision
    row: NewRow
    entry: Entry
    supersedes: bool


def on_request(
    request: schemas.OutreachRequest, seen: Seen, at: Moment, policy: DeliveryPolicy
) -> Decided:
    """outreach.request.created → one decision: suppress, schedule or send (SPEC §6)."""
    revision = pipeline.revision_of(request.context)
    decision = pipeline.decide(
        facts_of(request, seen.remedy),
        plan=seen.plan,
        already_decided=False,
        resolved=seen.cause.resolved,
        superseded=seen.cause.superseded,
        experienced=seen.experienced,
        paused=seen.paused,
        sent_in_window=seen.cause.sent_in_window,
        now=at.now,
        policy=policy,
        templates=seen.templates,
    )
    row = lifecycle.new_row(
        request.model_dump(mode="json"),
        decision,
        seen.plan,
        revision,
        at,
        scheduled_expiry=policy.scheduled_expiry,
    )
    recorded = lifecycle.entry(row, row.status, at, reason=decision.reason)
    # A newer revision of a message replaces the older ones not yet handed over (the
    # first revision, `revision_of`, has none older).
    supersedes = decision.outcome != "suppress" and revision > 1
    return Decided(decision, row, recorded, supersedes)


def on_held(row: Row, seen: Seen, at: Moment, policy: DeliveryPolicy) -> Move:
    """A decision held by a pause before a channel was chosen, decided now from the
    contact plan on (the cap counts from now; it did not count while it was held)."""
    request = schemas.OutreachRequest.model_validate(row.request)
    decision = pipeline.decide(
        facts_of(request, seen.remedy),
        plan=seen.plan,
        already_decided=False,
        resolved=seen.cause.resolved,
        superseded=seen.cause.superseded,
        paused=False,
        sent_in_window=seen.cause.sent_in_window,
        now=at.now,
        policy=policy,
        templates=seen.templates,
    )
    if decision.outcome == "suppress":
        reason = decision.reason or pipeline.Suppression.PAUSED
        # Arms only when the experiments were asked (a suppression before them keeps
        # what the row had).
        arms = [a.as_record() for a in decision.arms] or None
        return lifecycle.suppress(row, reason, decision.rule, at, experiments=arms)
    if decision.outcome == "send":  # released now, with the rest of the held backlog
        rule = decision.rule + "; released at the resume (leaves with the customer's others)"
        decision = replace(decision, outcome="schedule", send_at=at.now, rule=rule)
    return lifecycle.redecided(
        row,
        decision,
        seen.plan,
        at,
        expected=Status.SCHEDULED,
        scheduled_expiry=policy.scheduled_expiry,
    )


def last_look(row: Row, seen: Seen, at: Moment, policy: DeliveryPolicy) -> Move | Decision:
    """The last look before a decided message is claimed (`decisions.recheck`): a Move
    when it is not to leave now (suppressed, or scheduled again), else the decision to
    send, on the channel and address it goes by now."""
    request = schemas.OutreachRequest.model_validate(row.request)
    look = pipeline.recheck(
        facts_of(request),
        channel=row.channel,
        plan=seen.plan,
        resolved=seen.cause.resolved,
        superseded=seen.cause.superseded,
        paused=seen.paused,
        now=at.now,
        policy=policy,
    )
    if look.outcome == "suppress":
        assert look.reason is not None
        return lifecycle.suppress(row, look.reason, look.rule, at)
    if look.outcome == "schedule":
        return lifecycle.redecided(
            row,
            look,
            seen.plan,
            at,
            expected=Status.DECIDED,
            scheduled_expiry=policy.scheduled_expiry,
        )
    return look


def expired(row: Row, at: Moment) -> Move:
    """Not sent within its time: given up (a retry that never went through), or, if it
    only waited, suppressed as expired (SPEC reason quiet_hours_expired)."""
    if row.failures or row.attempts:
        reason = "gave_up: not sent before it expired"
        return lifecycle.fail(row, reason, at, expected=(Status.SCHEDULED,))
    reason = pipeline.Suppression.QUIET_HOURS_EXPIRED
    return lifecycle.suppress(row, reason, "scheduled send expired", at)


def message_event(row: Recorded) -> CloudEvent:
    """The `outreach.messages` CloudEvent for one ledger event (SPEC §4); with tracing on
    it carries the trace of the request that caused the change."""
    data = dict(row.payload)
    if isinstance(data.get("remedy"), dict):  # its code goes to the shop's systems only
        data["remedy"] = {k: v for k, v in data["remedy"].items() if k != "code"}
    trace_fields = data.pop(lifecycle.TRACE_KEY, None)
    extensions: dict[str, str] = {}
    if isinstance(trace_fields, dict) and tracing.enabled():
        extensions = {k: v for k, v in trace_fields.items() if k in tracing.TRACE_FIELDS}
    return new_event(
        type=f"outreach.message.{row.status}",
        source=SOURCE,
        subject=row.decision_id,
        id=row.event_id,
        time=row.at,
        data=data,
        **extensions,
    )


def action_events(row: Recorded) -> list[CloudEvent]:
    """The `outreach.actions` CloudEvents a ledger event requests: what a message just
    sent promised the shop will do (domain/actions.py)."""
    return [
        new_event(
            type="care.action.requested",
            source=SOURCE,
            subject=str(data["decision_id"]),
            id=str(data["action_id"]),
            time=row.at,
            data=schemas.CareActionRequested.model_validate(data).model_dump(
                mode="json", exclude_none=True
            ),
        )
        for data in actions.requested(row.status, row.payload, row.at)
    ]


def moment(now: datetime, wall: datetime, lease: timedelta) -> Moment:
    """A moment of the handler being run, with the trace of the request in hand."""
    return Moment(now, wall, lease, tracing.current_trace_fields())


__all__ = [
    "REQUEST_CREATED",
    "SOURCE",
    "Decided",
    "Seen",
    "action_events",
    "experience_to_ask",
    "expired",
    "facts_of",
    "last_look",
    "message_event",
    "moment",
    "on_held",
    "on_request",
]
