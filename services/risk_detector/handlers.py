"""risk_detector's handlers: a customer's fact in, requests and hand-offs out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from common import handling, schemas
from common.envelope import CloudEvent, derived_id, new_event
from common.kafka import Outgoing
from common.metrics import REQUESTS
from common.topics import Topics
from services.risk_detector.domain import decisions as rules
from services.risk_detector.domain.profile import (
    CancellationSeen,
    FeedbackSeen,
    IncidentSeen,
    OrderSeen,
    Profile,
    ReturnSeen,
)
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.domain.rhythm import due_rhythm_checks, next_rhythm_check

SOURCE = "/outreach/risk_detector"
#: The changes of an incident on `outreach.incidents` (incident.<change>).
INCIDENT_CHANGES = ("opened", "updated", "resolved", "checkin_due")
CUSTOMER_HEADER = "x-outreach-customer-id"


@dataclass
class Outcome(handling.Outcome[Profile]):
    """What one fact or tick decided about a customer (common/handling.py); `deadline` is
    the next moment the silence since their last order must be looked at. `erased`: the
    customer is to be forgotten, their orders too; `quantile_changed`: the spend estimate
    took a new sample (the caller persists it)."""

    erased: bool = False
    quantile_changed: bool = False


#: What a fact did: the requests it decided (None: none, and the score is not looked at
#: again), and whether it fed the spend estimate.
Applied = tuple[list[rules.RequestDecision] | None, bool]
#: A fact's payload, parsed (InvalidEvent if it is not what its type carries).
Parse = Callable[[CloudEvent], Any]
#: What a fact changes in the profile, given its parsed payload.
Apply = Callable[[Profile, CloudEvent, Any, P2Quantile], Applied]


def _payload(schema: type[Any]) -> Parse:
    return lambda event: schemas.parse_payload(event, schema)


class RiskDetector:
    def __init__(self, policy: rules.Policy, topics: Topics) -> None:
        self.policy = policy
        self.topics = topics
        # Used when the caller keeps no estimate of its own (the stream keeps one per
        # partition, in a changelogged table).
        self.spend_quantile = self.new_quantile()
        # Each fact's payload is parsed before anything of the profile changes: a fact
        # that is refused (dead-lettered) leaves no trace, whoever keeps the profile.
        self.facts: handling.Dispatch[tuple[Parse, Apply]] = handling.Dispatch(
            "risk_detector",
            {
                **{
                    f"incident.{change}": (_payload(schemas.Incident), self._incident)
                    for change in INCIDENT_CHANGES
                },
                "customer.upserted": (_payload(schemas.CustomerUpserted), self._customer),
                "order.placed": (_payload(schemas.OrderPlaced), self._order_placed),
                "order.cancelled": (_payload(schemas.OrderCancelled), self._order_cancelled),
                "return.requested": (_payload(schemas.ReturnRequested), self._return_requested),
                "feedback.received": (_payload(schemas.FeedbackReceived), self._feedback),
                # A support contact: measured by outreach's experiments, no risk signal.
                "support.ticket.opened": (schemas.parse_input, self._no_signal),
                "support.handoff.resolved": (_payload(schemas.HandoffResolved), self._resolution),
                "outreach.reply.received": (_payload(schemas.ReplyReceived), self._reply),
            },
        )

    def new_quantile(self) -> P2Quantile:
        return P2Quantile(self.policy.high_value_quantile)

    def handle(
        self,
        profile: Profile | None,
        customer_id: str,
        event: CloudEvent,
        quantile: P2Quantile | None = None,
    ) -> Outcome:
        """One fact about the customer. `quantile` is the running estimate of 365-day spend
        this customer is compared with (and which a new order feeds)."""
        spend = quantile if quantile is not None else self.spend_quantile
        profile = profile or Profile(customer_id=customer_id)
        if profile.seen(event.id):
            return Outcome(state=profile, duplicate=True)
        now = event.time
        kind = event.type
        if kind == "customer.erased":
            return Outcome(state=None, erased=True)
        parse, apply = self.facts(kind)
        payload = parse(event)
        # Silence that had already passed before this fact is judged first, each rhythm
        # check as of its own moment: the same decisions whether or not a tick came first.
        early = self.check_rhythm(profile, now, spend)
        profile.remember(event.id)
        if profile.last_event_at is None or now > profile.last_event_at:
            profile.last_event_at = now
        decided, sampled = apply(profile, event, payload, spend)
        if decided is None:  # a fact that changes no score (the customer's record)
            return Outcome(
                state=profile,
                records=early,
                deadline=next_rhythm_check(profile, self.policy.weights),
            )
        released = rules.release_overdue(profile, now, self.policy)
        decided += released
        scored = rules.on_score(profile, now, self.policy, spend.value())
        profile.last_score = scored.score.value if scored.score else 0.0
        if not released:  # a check-in released now is the case's check-in
            rules.hold_for_agent(profile, scored, now)
        decided += scored.requests
        records = early + self._emit(
            profile, decided, scored.handoffs, now, scored.score, spend.value()
        )
        profile.prune(now)
        return Outcome(
            state=profile,
            records=records,
            deadline=next_rhythm_check(profile, self.policy.weights),
            quantile_changed=sampled,
        )

    # --- one function per fact: what it changes in the profile, and the requests it
    # --- decides (None: none, and no scoring), and whether it fed the spend estimate.

    def _incident(
        self, profile: Profile, event: CloudEvent, incident: schemas.Incident, spend: P2Quantile
    ) -> Applied:
        change = event.type.split(".", 1)[1]
        if change != "checkin_due":
            profile.incidents[incident.incident_id] = IncidentSeen(
                incident_id=incident.incident_id,
                kind=incident.kind,
                severity=incident.severity.value,
                order_id=incident.order_id,
                at=incident.detected_at,
                status=incident.status,
                revision=incident.revision,
            )
        return rules.on_incident(profile, incident.model_dump(mode="json"), change), False

    def _customer(
        self,
        profile: Profile,
        event: CloudEvent,
        upsert: schemas.CustomerUpserted,
        spend: P2Quantile,
    ) -> Applied:
        profile.known = True
        profile.marketing_opt_in = upsert.marketing_opt_in
        return None, False

    def _order_placed(
        self, profile: Profile, event: CloudEvent, placed: schemas.OrderPlaced, spend: P2Quantile
    ) -> Applied:
        if any(o.order_id == placed.order_id for o in profile.orders):
            return [], False
        profile.orders.append(
            OrderSeen(
                order_id=placed.order_id,
                at=event.time,
                total=float(placed.total),
                currency=placed.currency,
            )
        )
        spend.add(profile.spend(event.time))
        return [], True

    def _order_cancelled(
        self, profile: Profile, event: CloudEvent, cancel: schemas.OrderCancelled, spend: P2Quantile
    ) -> Applied:
        profile.cancellations.append(
            CancellationSeen(order_id=cancel.order_id, at=event.time, by=cancel.cancelled_by)
        )
        return [], False

    def _return_requested(
        self, profile: Profile, event: CloudEvent, ret: schemas.ReturnRequested, spend: P2Quantile
    ) -> Applied:
        fault = ret.reason in schemas.MERCHANT_FAULT_REASONS
        if all(r.return_id != ret.return_id for r in profile.returns):
            profile.returns.append(
                ReturnSeen(
                    return_id=ret.return_id,
                    order_id=ret.order_id,
                    reason=ret.reason.value,
                    merchant_fault=fault,
                    at=event.time,
                )
            )
        decided = rules.on_return(
            profile,
            {"return_id": ret.return_id, "order_id": ret.order_id, "reason": ret.reason.value},
            fault,
            event.time,
            self.policy,
        )
        return decided, False

    def _no_signal(
        self, profile: Profile, event: CloudEvent, payload: Any, spend: P2Quantile
    ) -> Applied:
        return None, False  # (its data was checked: bad data is refused)

    def _feedback(
        self, profile: Profile, event: CloudEvent, fb: schemas.FeedbackReceived, spend: P2Quantile
    ) -> Applied:
        profile.feedback.append(
            FeedbackSeen(kind=fb.kind, score=fb.score, at=event.time, order_id=fb.order_id)
        )
        return [], False

    def _reply(
        self, profile: Profile, event: CloudEvent, reply: schemas.ReplyReceived, spend: P2Quantile
    ) -> Applied:
        """A customer's reply (outreach.replies): a survey answer is a CSAT score; a
        complaint, or an angry reply, counts as a complaint; any other changes nothing."""
        if reply.survey_score is not None:  # an answer to our survey: a CSAT score
            profile.feedback.append(
                FeedbackSeen(
                    kind="csat", score=reply.survey_score, at=event.time,
                    order_id=reply.order_id, via="reply",
                )
            )  # fmt: skip
            return [], False
        if reply.intent != "complaint" and reply.tone != "angry":
            return None, False
        profile.feedback.append(
            FeedbackSeen(
                kind="complaint", score=None, at=event.time, order_id=reply.order_id, via="reply"
            )
        )
        return [], False

    def _resolution(
        self,
        profile: Profile,
        event: CloudEvent,
        resolved: schemas.HandoffResolved,
        spend: P2Quantile,
    ) -> Applied:
        return rules.on_resolution(
            profile, resolved.handoff_id, resolved.outcome, event.time
        ), False

    def handle_tick(
        self, profile: Profile, now: datetime, quantile: P2Quantile | None = None
    ) -> Outcome:
        """Time passed with no fact about the customer: make the rhythm checks now due."""
        spend = quantile if quantile is not None else self.spend_quantile
        records = self.check_rhythm(profile, now, spend)
        if profile.rhythm_checked_at is not None:
            profile.prune(profile.rhythm_checked_at)
        return Outcome(
            state=profile,
            records=records,
            deadline=next_rhythm_check(profile, self.policy.weights),
        )

    def check_rhythm(self, profile: Profile, until: datetime, spend: P2Quantile) -> list[Outgoing]:
        """Re-score the customer at every rhythm check due by `until`, as of that moment:
        a check-in or hand-off exactly as any other fact would have raised it."""
        out: list[Outgoing] = []
        for at in due_rhythm_checks(profile, until, self.policy.weights):
            scored = rules.on_score(profile, at, self.policy, spend.value())
            profile.last_score = scored.score.value if scored.score else 0.0
            out += self._emit(
                profile, scored.requests, scored.handoffs, at, scored.score, spend.value()
            )
            profile.rhythm_checked_at = at
        return out

    def _emit(
        self,
        profile: Profile,
        decided: list[rules.RequestDecision],
        handoffs: list[rules.HandoffDecision],
        now: datetime,
        current: Any,
        high_value_threshold: float | None = None,
    ) -> list[Outgoing]:
        """The requests not made before (each recorded in the profile) and the hand-offs;
        each request says the customer's value (the high-value rule of SPEC §6)."""
        out: list[Outgoing] = []
        made = {r.request_id for r in profile.requests}
        for d in decided:
            if d.request_id in made:
                continue
            made.add(d.request_id)
            high = rules.high_value(profile, d.at or now, self.policy, high_value_threshold)
            out.append(self._request(profile, d, now, current, "high" if high else "standard"))
        for h in handoffs:
            rules.record_handoff(profile, h, now)
            out.append(self._handoff(profile, h, now))
        return out

    def _request(
        self, profile: Profile, d: rules.RequestDecision, now: datetime, current: Any, value: str
    ) -> Outgoing:
        at = d.at or now
        request = schemas.OutreachRequest(
            request_id=d.request_id,
            customer_id=profile.customer_id,
            order_id=d.order_id,
            intent=schemas.Intent(d.intent),
            message_kind=d.message_kind,
            cause=schemas.Cause(type=d.cause_type, id=d.cause_id, kind=d.cause_kind),
            severity=schemas.Severity(d.severity),
            priority=d.priority,
            offer_tier=d.offer_tier,
            customer_value=value,
            risk_score=self._risk_score(profile, d, current),
            reasons=[
                schemas.Reason(
                    code=str(r["code"]),
                    contribution=float(r["contribution"]),
                    detail=str(r["detail"]),
                )
                for r in d.reasons
            ],
            context=d.context,
            requested_at=at,
        )
        rules.record_request(profile, d, at)
        REQUESTS.labels(d.intent, d.message_kind).inc()
        return _outgoing(
            self.topics.requests,
            profile.customer_id,
            "outreach.request.created",
            d.request_id,
            derived_id("request", d.request_id),
            at,
            request,
        )

    def _handoff(self, profile: Profile, h: rules.HandoffDecision, now: datetime) -> Outgoing:
        handoff = schemas.HandoffRequested(
            handoff_id=h.handoff_id,
            customer_id=profile.customer_id,
            order_ids=h.order_ids,
            risk_score=h.score,
            reasons=[schemas.Reason.model_validate(r) for r in h.reasons],
            summary=h.summary,
        )
        return _outgoing(
            self.topics.handoffs,
            profile.customer_id,
            "support.handoff.requested",
            profile.customer_id,
            derived_id("handoff", h.handoff_id),
            now,
            handoff,
        )

    def _risk_score(self, profile: Profile, d: rules.RequestDecision, current: Any) -> float | None:
        if d.risk_score is not None:
            return d.risk_score
        if d.at is not None:  # a decision as of its own moment is scored as of it, too
            from services.risk_detector.domain.scoring import score

            return score(profile, d.at, self.policy.weights).value
        return current.value if current else None

    def explain(self, profile: Profile, now: datetime) -> dict[str, Any]:
        from services.risk_detector.domain.scoring import score

        current = score(profile, now, self.policy.weights)
        total = current.value or 1.0
        gap = profile.usual_gap()
        return {
            "customer_id": profile.customer_id,
            "as_of": now.isoformat(),
            "score": current.value,
            "reasons": [
                {**r, "share": round(float(r["contribution"]) / total, 3)}  # type: ignore[arg-type]
                for r in current.reasons()
            ],
            "profile": {
                "orders_365d": len([o for o in profile.orders if (now - o.at).days <= 365]),
                "spend_365d": round(profile.spend(now), 2),
                "usual_gap_days": gap.days if gap is not None else None,
                "incidents": [i.model_dump(mode="json") for i in profile.incidents.values()],
                "returns": [r.model_dump(mode="json") for r in profile.returns],
                "merchant_cancellations": [
                    c.model_dump(mode="json") for c in profile.cancellations if c.by == "merchant"
                ],
                "feedback": [f.model_dump(mode="json") for f in profile.feedback],
                "marketing_opt_in": profile.marketing_opt_in,
            },
            "requests": [r.model_dump(mode="json") for r in profile.requests],
            "handoffs": [h.model_dump(mode="json") for h in profile.handoffs],
            "resolutions": [r.model_dump(mode="json") for r in profile.resolutions],
            "awaiting_agent": [
                {
                    "handoff_id": a.handoff_id,
                    "at": a.at.isoformat(),
                    "request_id": a.request["request_id"],
                }
                for a in profile.awaiting_agent
            ],
        }


def _outgoing(
    topic: str,
    key: str,
    type_: str,
    subject: str,
    event_id: str,
    at: datetime,
    payload: BaseModel,
) -> Outgoing:
    """A record of risk_detector's, keyed by the customer."""
    event = new_event(
        type=type_,
        source=SOURCE,
        subject=subject,
        id=event_id,
        time=at,
        data=payload.model_dump(mode="json"),
    )
    return Outgoing(topic=topic, key=key, event=event)
