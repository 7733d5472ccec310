"""A message's life as values: every change the ledger makes to a decision's row, built
by a pure function from the row as it was, the moment, and what the provider said.

Each change is a `Move`: the states the row must still be in, the claim it must still
belong to (the fence), the columns to write and the event to record with them. The
runtime (services/outreach/runtime.py) reads the ledger, asks these functions what to
do, writes the move as one compare-and-set and calls the provider; nothing here does
I/O, reads a clock or draws a random number: wall time, leases, the request's trace
and the retry's jitter are passed in. The states and the moves allowed between them
are `states.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypedDict

from common.envelope import derived_id
from common.tracing import TRACE_FIELDS
from services.outreach.domain.decisions import ChannelOption, ContactPlan, Decision
from services.outreach.domain.states import Report, Status, reported

# Key of a ledger change's payload holding the trace context (never published as data).
TRACE_KEY = "_trace"
# A released message whose last look cannot be taken (preferences away) waits this long.
OUTAGE_PAUSE = timedelta(seconds=10)


@dataclass
class SendingPolicy:
    # Provider calls that may fail (other than by throttling) before a message is failed.
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    # The lease of a claimed send: longer than any provider call can take (the SDK
    # timeouts), so a row still in `sending` after it was left by a process that died or
    # stalled. Decided rows carry the same lease between their decision and their claim.
    in_doubt_after: timedelta = timedelta(minutes=10)
    # After an ambiguous answer (a timeout, a 5xx, a reset after the request left), how
    # long before the provider is asked whether it has the message: long enough for a
    # request still on its way to land, and for a signed event to report it.
    in_doubt_settle: timedelta = timedelta(seconds=30)
    # How long a send may stay in doubt while the provider cannot be asked before it is
    # failed for a person to look at.
    in_doubt_give_up: timedelta = timedelta(hours=24)
    # Channels whose provider confirms every accepted message by a signed event (email,
    # when SENDGRID_WEBHOOK_PUBLIC_KEY is set): no event by the time we ask = not sent —
    # provided our webhooks could hear it (see the runtime's `_events_would_have_come`).
    confirmed_by_events: frozenset[str] = frozenset()
    # How long the provider may take to retry an event our webhooks did not take (they
    # were down): after a worker has been up this long, a missing event means no message.
    events_retried_within: timedelta = timedelta(hours=1)
    # A worker not seen for this long is down (workers record themselves every second).
    worker_seen_within: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class CauseState:
    """What the ledger says of a message's cause at one moment: resolved; a message about
    a newer revision exists (`superseded`); the customer's proactive messages in the cap
    window besides this cause (0 unless asked)."""

    resolved: bool
    superseded: bool
    sent_in_window: int = 0


class RowChanges(TypedDict, total=False):
    """What a move may write besides the state check: a decision row's columns."""

    status: str
    reason: str | None
    rule: str
    channel: str | None
    address: str | None
    locale: str | None
    time_zone: str | None
    send_at: datetime | None
    sent_at: datetime | None
    updated_at: datetime
    template_key: str | None
    template_version: int | None
    subject: str | None
    body_text: str | None
    body_html: str | None
    provider: str | None
    provider_message_id: str | None
    outbox: bool
    attempts: int
    fallbacks: list[dict[str, Any]]
    last_error: str | None
    lease_until: datetime | None
    claimed_at: datetime | None
    failures: int
    expires_at: datetime | None
    request: dict[str, Any]
    storm_id: str | None
    experiments: list[dict[str, Any]] | None


class Recorded(Protocol):
    """A ledger event as written: `Entry`, or the ledger's own row of it."""

    event_id: str
    decision_id: str
    status: str
    at: datetime
    payload: dict[str, Any]


class Row(Protocol):
    """The columns of a decision's ledger row these functions read."""

    decision_id: str
    request_id: str
    customer_id: str
    order_id: str | None
    cause_type: str
    cause_id: str
    cause_kind: str
    intent: str
    message_kind: str
    status: str
    reason: str | None
    channel: str | None
    send_at: datetime | None
    updated_at: datetime
    template_key: str | None
    template_version: int | None
    attempts: int
    failures: int
    fallbacks: list[dict[str, Any]]
    request: dict[str, Any]
    experiments: list[dict[str, Any]] | None


@dataclass(frozen=True)
class Entry:
    """One ledger event (and, for public states, one `outreach.messages` record)."""

    event_id: str
    decision_id: str
    customer_id: str
    status: str
    at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class Move:
    """One compare-and-set on a decision's row: written only if the row is still in one
    of `expected` and (when `fence` is set) still on that claim."""

    decision_id: str
    expected: tuple[str, ...]
    values: RowChanges
    entry: Entry | None = None
    fence: int | None = None


@dataclass(frozen=True)
class Moment:
    """When a move is made: `now` on the deciding clock (event time on a replay), `wall`
    for leases and claims (real seconds whatever decides), and the trace of the request
    being handled, if any (else the trace the row's request kept)."""

    now: datetime
    wall: datetime
    lease: timedelta
    trace: Mapping[str, str] = field(default_factory=dict)

    @property
    def lease_until(self) -> datetime:
        return self.wall + self.lease


def entry(row: Row, status: str, at: Moment, *, mark: Any = None, **detail: Any) -> Entry:
    """One ledger event. Its id is derived from the change — decision, state, attempt,
    channel, and for states a row can enter more than once per attempt (scheduled, in
    doubt) their moment — so that a change written twice is one event."""
    seq = {Status.SENDING: row.attempts + 1}.get(Status(status), row.attempts)
    send_at = detail.pop("send_at", row.send_at)
    data: dict[str, Any] = {
        "customer_id": row.customer_id,
        "order_id": row.order_id,
        "decision_id": row.decision_id,
        "request_id": row.request_id,
        "cause": {"type": row.cause_type, "id": row.cause_id, "kind": row.cause_kind},
        "intent": row.intent,
        "message_kind": row.message_kind,
        "channel": detail.pop("channel", row.channel),
        "template": detail.pop("template", row.template_key),
        "template_version": detail.pop("template_version", row.template_version),
    }
    arms = detail.pop("experiments", row.experiments)
    if arms:
        data["experiments"] = arms
    if status == Status.SCHEDULED:
        data["send_at"] = send_at.isoformat() if send_at else None
        mark = mark or data["send_at"] or "held"
    for key, value in detail.items():
        if value is not None:
            data[key] = value.value if hasattr(value, "value") else value
    event_id = derived_id(
        "message",
        row.decision_id,
        status,
        seq,
        data.get("channel"),
        *([mark.isoformat() if isinstance(mark, datetime) else str(mark)] if mark else []),
    )
    trace = dict(at.trace) or {
        k: v for k in TRACE_FIELDS if isinstance(v := row.request.get(k), str)
    }
    if trace:
        # Kept with the change so the relay's message event joins the request's trace.
        data[TRACE_KEY] = trace
    return Entry(event_id, row.decision_id, row.customer_id, status, at.now, data)


# --- the decision, and a decision taken again -------------------------------------------


@dataclass
class NewRow:
    """A decision's new ledger row: its columns, readable as a `Row`."""

    decision_id: str
    request_id: str
    customer_id: str
    order_id: str | None
    cause_type: str
    cause_id: str
    cause_kind: str
    intent: str
    message_kind: str
    severity: str
    category: str
    status: str
    reason: str | None
    rule: str
    channel: str | None
    address: str | None
    locale: str | None
    time_zone: str | None
    send_at: datetime | None
    decided_at: datetime
    updated_at: datetime
    revision: int
    lease_until: datetime | None
    expires_at: datetime | None
    fallbacks: list[dict[str, Any]]
    request: dict[str, Any]
    attempts: int = 0
    failures: int = 0
    outbox: bool = False
    template_key: str | None = None
    template_version: int | None = None
    experiments: list[dict[str, Any]] | None = field(default_factory=list)


def new_row(
    request: Mapping[str, Any],
    decision: Decision,
    plan: ContactPlan | None,
    revision: int,
    at: Moment,
    *,
    scheduled_expiry: timedelta,
) -> NewRow:
    """A decision's new ledger row (`request`: the request's JSON form)."""
    status = _STATUS_OF[decision.outcome]
    held_until = decision.send_at or at.now
    cause = request["cause"]
    return NewRow(
        decision_id=decision.decision_id,
        request_id=request["request_id"],
        customer_id=request["customer_id"],
        order_id=request.get("order_id"),
        cause_type=cause["type"],
        cause_id=cause["id"],
        cause_kind=cause["kind"],
        intent=request["intent"],
        message_kind=request["message_kind"],
        severity=request["severity"],
        category=decision.category.value,
        status=status,
        reason=decision.reason.value if decision.reason else None,
        rule=decision.rule,
        channel=decision.channel,
        address=decision.address,
        locale=plan.locale if plan else None,
        time_zone=plan.time_zone if plan else None,
        send_at=decision.send_at,
        decided_at=at.now,
        updated_at=at.now,
        revision=revision,
        lease_until=at.lease_until if status is Status.DECIDED else None,
        # Held by a pause: no expiry until it is decided.
        expires_at=(
            None
            if status is Status.SCHEDULED and decision.send_at is None
            else held_until + scheduled_expiry
        ),
        fallbacks=[f.__dict__ for f in decision.fallbacks],
        experiments=[a.as_record() for a in decision.arms],
        request={
            **request,
            "first_name": plan.first_name if plan else "",
            # The request's trace, for changes made later (a scheduled send at 08:00).
            **at.trace,
        },
    )


_STATUS_OF = {"suppress": Status.SUPPRESSED, "schedule": Status.SCHEDULED, "send": Status.DECIDED}


def redecided(
    row: Row,
    decision: Decision,
    plan: ContactPlan | None,
    at: Moment,
    *,
    expected: Status,
    scheduled_expiry: timedelta,
) -> Move:
    """A held row decided again (after a pause, or at its last look): scheduled for later,
    or decided now (to be delivered)."""
    fresh = new_row(row.request, decision, plan, 1, at, scheduled_expiry=scheduled_expiry)
    # The arms stand as assigned; only a decision taken from the start (at a resume) has
    # them anew — the last look does not ask the experiments again.
    arms = fresh.experiments if decision.arms else row.experiments
    target = Status.SCHEDULED if decision.outcome == "schedule" else Status.DECIDED
    scheduled = target is Status.SCHEDULED
    return Move(
        row.decision_id,
        (expected,),
        RowChanges(
            channel=fresh.channel,
            address=fresh.address,
            locale=fresh.locale,
            time_zone=fresh.time_zone,
            fallbacks=fresh.fallbacks,
            experiments=arms,
            rule=decision.rule,
            send_at=decision.send_at,
            expires_at=fresh.expires_at,
            updated_at=at.now,
            status=target,
            lease_until=None if scheduled else at.lease_until,
        ),
        entry(
            row,
            target,
            at,
            channel=fresh.channel,
            send_at=decision.send_at,
            experiments=arms,
        )
        if scheduled
        else None,
        fence=row.attempts,
    )


def release(row: Row, at: Moment) -> Move:
    """scheduled → decided, leased to this worker until it claims the send."""
    return Move(
        row.decision_id,
        (Status.SCHEDULED,),
        RowChanges(status=Status.DECIDED, updated_at=at.now, lease_until=at.lease_until),
        fence=row.attempts,
    )


def wait_for_preferences(row: Row, at: Moment) -> Move:
    """Released, but its last look cannot be taken (preferences away): back to waiting,
    a little later."""
    return Move(
        row.decision_id,
        (Status.DECIDED,),
        RowChanges(status=Status.SCHEDULED, send_at=at.now + OUTAGE_PAUSE, lease_until=None),
        fence=row.attempts,
    )


# --- ends: suppressed, failed -----------------------------------------------------------


def suppress(
    row: Row, reason: str, rule: str, at: Moment, experiments: list[dict[str, Any]] | None = None
) -> Move:
    """Not to be sent after all (a resolution, a newer revision, the last look; a
    decision held by a pause, with the arms it was decided in: `experiments`)."""
    changes = RowChanges(
        status=Status.SUPPRESSED, reason=str(reason), rule=rule, lease_until=None, updated_at=at.now
    )
    if experiments is not None:
        changes["experiments"] = experiments
    detail = {} if experiments is None else {"experiments": experiments}
    return Move(
        row.decision_id,
        (Status.SCHEDULED, Status.DECIDED),
        changes,
        entry(row, Status.SUPPRESSED, at, reason=reason, **detail),
        fence=row.attempts,
    )


def storm_hold(row: Row, storm_id: str, at: Moment) -> Move:
    """About to leave, but its storm waits for an operator (domain/storms.py): held with
    it — scheduled with no time (its channel and language kept, for the storm's view),
    decided again once released, with a fresh expiry (an approval days later still
    sends it, as a resume does). Only from the state the caller read it in."""
    return Move(
        row.decision_id,
        (Status(row.status),),
        RowChanges(
            status=Status.SCHEDULED,
            send_at=None,
            expires_at=None,
            storm_id=storm_id,
            rule=f"storm: held with storm {storm_id} until an operator decides it",
            lease_until=None,
            updated_at=at.now,
        ),
        entry(row, Status.SCHEDULED, at, mark=f"storm:{storm_id}", send_at=None),
        fence=row.attempts,
    )


def carry(row: Row, request: dict[str, Any], at: Moment) -> Move:
    """scheduled → decided, leased to this worker, now naming the messages it carries
    (`context.also`, domain/consolidation.py): one compare-and-set, so that no copy of
    the row read before can be released without them."""
    return Move(
        row.decision_id,
        (Status.SCHEDULED,),
        RowChanges(
            status=Status.DECIDED,
            request=request,
            updated_at=at.now,
            lease_until=at.lease_until,
        ),
        fence=row.attempts,
    )


def carried(row: Row, carrier_id: str, at: Moment, grace: timedelta) -> Move:
    """A scheduled message named in `carrier_id`: it waits `grace` for that one to leave
    (then it ends `consolidated`); if it never does, it comes due and goes on its own."""
    context = dict(row.request.get("context") or {})
    context["carried_by"] = carrier_id
    return Move(
        row.decision_id,
        (Status.SCHEDULED,),
        RowChanges(
            send_at=at.now + grace,
            rule=f"carried by the message {carrier_id} (ends when it has left)",
            request={**row.request, "context": context},
            updated_at=at.now,
        ),
        fence=row.attempts,
    )


def fail(row: Row, reason: str, at: Moment, *, expected: tuple[str, ...]) -> Move:
    return Move(
        row.decision_id,
        expected,
        RowChanges(
            status=Status.FAILED,
            reason=reason[:64],
            last_error=reason,
            lease_until=None,
            updated_at=at.now,
        ),
        entry(row, Status.FAILED, at, reason=reason[:200]),
        fence=row.attempts,
    )


# --- a provider call: the claim and what came of it --------------------------------------


@dataclass(frozen=True)
class Rendered:
    """The message as rendered for a claim, and which template version served."""

    subject: str | None
    text: str
    html: str | None
    template_key: str
    template_version: int
    skipped: list[int] = field(default_factory=list)


def claim(row: Row, rendered: Rendered, at: Moment, *, address: str | None) -> Move:
    """decided → sending for one provider call: the next attempt number (the fence), a
    lease, and the body as it will be sent."""
    return Move(
        row.decision_id,
        (Status.DECIDED,),
        RowChanges(
            status=Status.SENDING,
            channel=row.channel,
            address=address,
            fallbacks=row.fallbacks,
            template_key=rendered.template_key,
            template_version=rendered.template_version,
            subject=rendered.subject,
            body_text=rendered.text,
            body_html=rendered.html,
            attempts=row.attempts + 1,
            claimed_at=at.wall,
            lease_until=at.lease_until,
            updated_at=at.now,
        ),
        entry(
            row,
            Status.SENDING,
            at,
            detail={"channel": row.channel},
            # newer published versions that failed and were skipped
            template_skipped=rendered.skipped or None,
        ),
        fence=row.attempts,
    )


def sent(
    row: Row,
    at: Moment,
    *,
    provider: str,
    provider_message_id: str | None,
    outbox: bool,
    reconciled: bool = False,
    remedy: dict[str, Any] | None = None,
) -> Move:
    """sending → sent (the provider took it), or in doubt → sent (found at the provider);
    `remedy`: what the message carried (the shop's systems are asked to honour it)."""
    detail: dict[str, Any] = dict(provider_message_id=provider_message_id, remedy=remedy)
    values = RowChanges(
        status=Status.SENT,
        provider=provider,
        provider_message_id=provider_message_id,
        sent_at=at.now,
        updated_at=at.now,
        lease_until=None,
    )
    if reconciled:
        detail["reconciled"] = True
    else:
        detail |= dict(
            outbox=outbox, template=row.template_key, template_version=row.template_version
        )
        values |= RowChanges(outbox=outbox, last_error=None)
    expected = Status.IN_DOUBT if reconciled else Status.SENDING
    return Move(
        row.decision_id, (expected,), values, entry(row, Status.SENT, at, **detail), row.attempts
    )


def in_doubt(row: Row, reason: str, at: Moment, *, look_in: timedelta) -> Move:
    """The provider may have the message: ask it after `look_in`, never resend now."""
    return Move(
        row.decision_id,
        (Status.SENDING,),
        RowChanges(
            status=Status.IN_DOUBT,
            lease_until=at.wall + look_in,
            updated_at=at.now,
            last_error=f"in doubt: {reason}"[:500],
        ),
        entry(row, Status.IN_DOUBT, at, reason=reason[:200], mark=at.wall),
        fence=row.attempts,
    )


def refused(
    row: Row,
    error: str,
    at: Moment,
    policy: SendingPolicy,
    *,
    throttled: bool,
    retry_after: float | None,
    jitter: float,
) -> Move:
    """The provider did not take it (429, refused, breaker open): try again later (with
    `jitter` in [0.5, 1] of the backoff), after the last look again; or, after
    `max_attempts` failed calls, failed. Throttling does not count as a failed call."""
    failures = row.failures + (0 if throttled else 1)
    if failures >= policy.max_attempts:
        return fail(row, f"gave_up after {failures} attempts: {error}", at, expected=_SENDING)
    attempt = max(failures, 1)
    delay = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** (attempt - 1))
    delay = max(delay * jitter, retry_after or 0.0)
    return Move(
        row.decision_id,
        _SENDING,
        RowChanges(
            status=Status.SCHEDULED,
            send_at=at.now + timedelta(seconds=delay),
            failures=failures,
            lease_until=None,
            updated_at=at.now,
            last_error=error,
        ),
        fence=row.attempts,
    )


_SENDING = (Status.SENDING.value,)


def rejected(row: Row, code: str, error: str, at: Moment) -> Move:
    """A permanent error: on to the next channel of the plan (decided again, under a new
    claim), or failed when none is left."""
    fallbacks = [ChannelOption(**f) for f in row.fallbacks or []]
    if not fallbacks:
        return fail(row, f"{code}: {error}", at, expected=_SENDING)
    nxt, rest = fallbacks[0], fallbacks[1:]
    return Move(
        row.decision_id,
        _SENDING,
        RowChanges(
            status=Status.DECIDED,
            channel=nxt.channel,
            address=nxt.address,
            fallbacks=[f.__dict__ for f in rest],
            lease_until=at.lease_until,
            updated_at=at.now,
            last_error=f"{row.channel}: {code}: {error}",
        ),
        entry(row, Status.FAILED, at, reason=code, fallback_to=nxt.channel, channel=row.channel),
        fence=row.attempts,
    )


# --- in doubt: asking the provider -------------------------------------------------------


def look(row: Row, at: Moment) -> Move:
    """Take a row whose lease ran out (sending, or in doubt and due) to ask the provider:
    the look is itself leased and fenced, so two sweepers never both act on one claim."""
    return Move(
        row.decision_id,
        (row.status,),
        RowChanges(status=Status.IN_DOUBT, lease_until=at.lease_until),
        fence=row.attempts,
    )


def look_again(row: Row, at: Moment, *, settle: timedelta) -> Move:
    """The provider could not be asked now: ask again after `settle`."""
    return Move(
        row.decision_id,
        (Status.IN_DOUBT,),
        RowChanges(status=Status.IN_DOUBT, lease_until=at.wall + settle),
        fence=row.attempts,
    )


def absent(row: Row, at: Moment, policy: SendingPolicy) -> Move:
    """Certainly not at the provider: decided again (counted as a failed attempt) to be
    delivered after the last look under a new claim, or failed after `max_attempts`."""
    if row.failures + 1 >= policy.max_attempts:
        reason = f"gave_up: not taken by the provider in {row.failures + 1} attempts"
        return fail(row, reason, at, expected=(Status.IN_DOUBT,))
    return Move(
        row.decision_id,
        (Status.IN_DOUBT,),
        RowChanges(
            status=Status.DECIDED,
            failures=row.failures + 1,
            lease_until=at.lease_until,
            updated_at=at.now,
            last_error="in doubt: not at the provider; sending again",
        ),
        fence=row.attempts,
    )


# --- provider feedback (webhooks) --------------------------------------------------------


def report(
    row: Row, said: Report, at: Moment, *, provider: str | None, detail: dict[str, Any]
) -> Move | None:
    """A provider's report of a message's fate (accepted, delivered, failed). States only
    move forward: a report the message is already past (late, repeated, reordered) is
    None. A report for a row still sending or in doubt is proof the provider took it."""
    sources, target = reported(said)
    if row.status not in sources:
        return None
    values = RowChanges(
        status=target,
        updated_at=at.now,
        reason=(str(detail.get("reason"))[:64] if target == Status.FAILED else row.reason),
    )
    if row.status in (Status.SENDING, Status.IN_DOUBT):
        values |= RowChanges(
            sent_at=row.updated_at or at.now,
            provider_message_id=detail.get("provider_message_id"),
            provider=provider,
            lease_until=None,
        )
        # The provider took it: what the message promised is owed (domain/actions.py).
        detail = {**detail, "taken": True}
    return Move(row.decision_id, tuple(sources), values, entry(row, target, at, **detail))


__all__ = [
    "OUTAGE_PAUSE",
    "TRACE_KEY",
    "CauseState",
    "Entry",
    "Moment",
    "Move",
    "NewRow",
    "Recorded",
    "Rendered",
    "Row",
    "RowChanges",
    "SendingPolicy",
    "absent",
    "claim",
    "entry",
    "fail",
    "in_doubt",
    "look",
    "look_again",
    "new_row",
    "redecided",
    "refused",
    "rejected",
    "release",
    "report",
    "sent",
    "suppress",
    "wait_for_preferences",
]
