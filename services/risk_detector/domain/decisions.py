"""What the risk detector decides: that a customer should hear from us, and why.

Input: the customer's profile (already updated with the new fact), the fact itself,
and the time. Output: outreach requests and hand-offs, each with a stable id derived
from its cause, so a replay or a redelivery never asks twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common.schemas import IncidentKind
from services.risk_detector.domain.profile import (
    AwaitingAgent,
    HandoffMade,
    Profile,
    RequestMade,
    ResolutionSeen,
)
from services.risk_detector.domain.scoring import Score, Weights, score

INCIDENT_INTENTS: dict[str, str] = {
    IncidentKind.DISPATCH_LATE: "apology",
    IncidentKind.DELIVERY_AT_RISK: "status_update",
    IncidentKind.DELIVERY_LATE: "apology",
    IncidentKind.SHIPMENT_STALLED: "status_update",
    IncidentKind.DELIVERY_FAILED: "status_update",
    IncidentKind.AWAITING_PICKUP: "status_update",
    IncidentKind.CARRIER_EXCEPTION: "status_update",
    IncidentKind.RETURNED_TO_SENDER: "status_update",
    IncidentKind.REFUND_LATE: "apology",
    "post_incident_checkin": "check_in",
}
PRIORITY = {"critical": 90, "warning": 60, "info": 30}


@dataclass(frozen=True)
class Policy:
    """Thresholds of SPEC §6 (risk), all configurable."""

    checkin_score: float = 70.0
    handoff_score: float = 85.0
    high_value_quantile: float = 0.9
    high_value_spend: float = 1000.0
    serial_returns_count: int = 3
    serial_returns_window_days: int = 90
    checkin_quiet_days: int = 30
    checkin_waits_for_agent: bool = True
    agent_wait_days: float = 3.0
    weights: Weights = field(default_factory=Weights)


@dataclass(frozen=True)
class RequestDecision:
    request_id: str
    intent: str
    message_kind: str
    cause_type: str
    cause_id: str
    cause_kind: str
    severity: str
    priority: int
    order_id: str | None
    reasons: list[dict[str, Any]]
    risk_score: float | None = None
    offer_tier: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # The moment the decision belongs to, when it is not the handled fact's time.
    at: datetime | None = None


@dataclass(frozen=True)
class HandoffDecision:
    handoff_id: str
    score: float
    reasons: list[dict[str, Any]]
    order_ids: list[str]
    summary: str


@dataclass
class Decisions:
    requests: list[RequestDecision] = field(default_factory=list)
    handoffs: list[HandoffDecision] = field(default_factory=list)
    score: Score | None = None
    # Check-ins held back for an agent: (the hand-off's id, the check-in).
    held: list[tuple[str, RequestDecision]] = field(default_factory=list)


def stable_id(prefix: str, *parts: object) -> str:
    raw = "\x1f".join(str(p) for p in parts)
    return f"{prefix}_{hashlib.sha256(raw.encode()).hexdigest()[:24]}"


def on_incident(profile: Profile, incident: dict[str, Any], change: str) -> list[RequestDecision]:
    """Opened, or updated on a material change: tell the customer. Resolved: nothing here
    (outreach itself suppresses what is not yet sent)."""
    if change not in ("opened", "updated", "checkin_due"):
        return []
    kind = incident["kind"]
    intent = INCIDENT_INTENTS.get(kind)
    if intent is None:
        return []
    severity = incident["severity"]
    if kind == "carrier_exception" and severity == "critical":
        intent = "apology"
    revision = int(incident.get("revision", 1))
    cause_id = incident["incident_id"]
    return [
        RequestDecision(
            request_id=stable_id("req", cause_id, revision),
            intent=intent,
            message_kind=kind,
            cause_type="checkin" if change == "checkin_due" else "incident",
            cause_id=cause_id,
            cause_kind=kind,
            severity=severity,
            priority=PRIORITY.get(severity, 50),
            order_id=incident.get("order_id"),
            reasons=[{"code": kind, "contribution": 0.0, "detail": incident["explanation"]}],
            context={
                "incident": incident,
                "order": incident.get("order"),
                "update": change == "updated",
            },
        )
    ]


def on_return(
    profile: Profile, ret: dict[str, Any], merchant_fault: bool, now: datetime, policy: Policy
) -> list[RequestDecision]:
    out: list[RequestDecision] = []
    if merchant_fault:
        out.append(
            RequestDecision(
                request_id=stable_id("req", "return", ret["return_id"]),
                intent="apology",
                message_kind="merchant_fault_return",
                cause_type="return",
                cause_id=ret["return_id"],
                cause_kind=f"return_{ret['reason']}",
                severity="warning",
                priority=60,
                order_id=ret["order_id"],
                reasons=[
                    {
                        "code": "merchant_fault_return",
                        "contribution": 0.0,
                        "detail": f"return requested: {ret['reason']}",
                    }
                ],
                context={"return": {"return_id": ret["return_id"], "reason": ret["reason"]}},
            )
        )
    # Judged as of the latest return known, not the fact at hand: return requests reach
    # us through differently ordered partitions, and the check-in must not depend on that.
    window = timedelta(days=policy.serial_returns_window_days)
    latest = max((r.at for r in profile.returns), default=now)
    recent = [r for r in profile.returns if timedelta(0) <= latest - r.at <= window]
    if len(recent) >= policy.serial_returns_count and not _recently_checked_in(
        profile, "serial_returns", latest, policy
    ):
        ids = sorted(r.return_id for r in recent)
        out.append(
            RequestDecision(
                request_id=stable_id("req", "serial_returns", profile.customer_id, *ids),
                intent="check_in",
                message_kind="serial_returns",
                cause_type="risk",
                cause_id=stable_id("risk", profile.customer_id, "serial_returns", *ids),
                cause_kind="serial_returns",
                severity="info",
                priority=40,
                order_id=max(recent, key=lambda r: (r.at, r.return_id)).order_id,
                reasons=[
                    {
                        "code": "serial_returns",
                        "contribution": 0.0,
                        "detail": f"{len(recent)} return requests in "
                        f"{policy.serial_returns_window_days} days",
                    }
                ],
                offer_tier="returns_goodwill" if profile.marketing_opt_in else None,
                at=latest,
            )
        )
    return out


def high_value(
    profile: Profile, now: datetime, policy: Policy, high_value_threshold: float | None
) -> bool:
    """A high-value customer: 365-day spend over the configured amount, or in the top
    share of customers (`high_value_threshold`, the running quantile of spend)."""
    spend = profile.spend(now)
    return spend >= policy.high_value_spend or (
        high_value_threshold is not None and spend >= high_value_threshold and spend > 0
    )


def on_score(
    profile: Profile, now: datetime, policy: Policy, high_value_threshold: float | None
) -> Decisions:
    """Check-in at ≥ 70; hand-off at ≥ 85 for a high-value customer."""
    current = score(profile, now, policy.weights)
    decisions = Decisions(score=current)
    reasons = current.reasons()
    codes = sorted(str(r["code"]) for r in reasons)
    spend = profile.spend(now)
    high = high_value(profile, now, policy, high_value_threshold)
    handoff = current.value >= policy.handoff_score and high
    case = _recent_handoff(profile, now, policy)
    if handoff and case is None:
        orders = sorted({i.order_id for i in profile.incidents.values()})[-5:]
        decisions.handoffs.append(
            HandoffDecision(
                handoff_id=stable_id("handoff", profile.customer_id, _period(now, policy), *codes),
                score=current.value,
                reasons=reasons,
                order_ids=orders,
                summary=_summary(profile, current, spend, now),
            )
        )
    case_id = decisions.handoffs[0].handoff_id if decisions.handoffs else case
    wants_checkin = current.value >= policy.checkin_score
    if wants_checkin and not _recently_checked_in(profile, "churn_risk", now, policy):
        checkin = RequestDecision(
            request_id=stable_id(
                "req", "churn_risk", profile.customer_id, _period(now, policy), *codes
            ),
            intent="check_in",
            message_kind="churn_risk",
            cause_type="risk",
            cause_id=stable_id("risk", profile.customer_id, _period(now, policy)),
            cause_kind="churn_risk",
            severity="info",
            priority=50,
            order_id=None,
            reasons=reasons,
            risk_score=current.value,
            offer_tier=("high_value" if high else "standard") if profile.marketing_opt_in else None,
            context=_rhythm_context(profile, now, current),
        )
        if not (handoff and policy.checkin_waits_for_agent and case_id is not None):
            decisions.requests.append(checkin)
        elif _with_the_agent(profile, case_id):
            decisions.held.append((case_id, checkin))
        # Otherwise the agent has answered for this case: solved needs no check-in, and
        # no contact released the one held.
    return decisions


def _with_the_agent(profile: Profile, handoff_id: str) -> bool:
    """Whether the case is still the agent's: no outcome yet, or escalated, and no
    check-in already held for it."""
    outcome = next((r.outcome for r in profile.resolutions if r.handoff_id == handoff_id), None)
    held = any(a.handoff_id == handoff_id for a in profile.awaiting_agent)
    return outcome in (None, "escalated") and not held


def hold_for_agent(profile: Profile, decisions: Decisions, now: datetime) -> None:
    """Keep the check-ins `decisions` held back for an agent in the profile."""
    for handoff_id, checkin in decisions.held:
        request = {**asdict(checkin), "at": None}
        profile.awaiting_agent.append(AwaitingAgent(handoff_id=handoff_id, at=now, request=request))


def on_resolution(
    profile: Profile, handoff_id: str, outcome: str, at: datetime
) -> list[RequestDecision]:
    """The agent's outcome of a hand-off: recorded; the check-in held for it dropped
    (solved), sent now (no_contact) or kept (escalated)."""
    if any(r.handoff_id == handoff_id and r.outcome == outcome for r in profile.resolutions):
        return []
    profile.resolutions.append(ResolutionSeen(handoff_id=handoff_id, outcome=outcome, at=at))
    if outcome == "escalated":
        return []
    held = [a for a in profile.awaiting_agent if a.handoff_id == handoff_id]
    profile.awaiting_agent = [a for a in profile.awaiting_agent if a.handoff_id != handoff_id]
    return [_request(a.request) for a in held] if outcome == "no_contact" else []


def release_overdue(profile: Profile, now: datetime, policy: Policy) -> list[RequestDecision]:
    """Check-ins that waited `agent_wait_days` for an outcome that did not come: sent
    now."""
    due = now - timedelta(days=policy.agent_wait_days)
    overdue = [a for a in profile.awaiting_agent if a.at <= due]
    profile.awaiting_agent = [a for a in profile.awaiting_agent if a.at > due]
    return [_request(a.request) for a in overdue]


def _request(data: dict[str, Any]) -> RequestDecision:
    """A held check-in as it goes out: decided as of the moment it is released."""
    return RequestDecision(**{**data, "at": None})


def _rhythm_context(profile: Profile, now: datetime, current: Score) -> dict[str, Any]:
    """What a check-in template needs to speak about a lapse in ordering."""
    gap = profile.usual_gap()
    last = profile.last_order_at()
    if gap is None or last is None:
        return {}
    if not any(c.code == "falling_order_rhythm" for c in current.contributions):
        return {}
    return {
        "order_rhythm": {
            "last_order_at": last.isoformat(),
            "usual_gap_days": round(gap.total_seconds() / 86400, 1),
            "days_without_order": (now - last).days,
        }
    }


def _period(now: datetime, policy: Policy) -> int:
    """The quiet-period bucket: the same reasons within one bucket give the same id."""
    return int(now.timestamp() // (policy.checkin_quiet_days * 86400))


def _recently_checked_in(profile: Profile, kind: str, now: datetime, policy: Policy) -> bool:
    quiet = timedelta(days=policy.checkin_quiet_days)
    return any(r.message_kind == kind and now - r.at < quiet for r in profile.requests)


def _recent_handoff(profile: Profile, now: datetime, policy: Policy) -> str | None:
    """The id of a hand-off made within the quiet period (the customer's open case)."""
    quiet = timedelta(days=policy.checkin_quiet_days)
    recent = [h for h in profile.handoffs if now - h.at < quiet]
    return recent[-1].handoff_id if recent else None


def _summary(profile: Profile, current: Score, spend: float, now: datetime) -> str:
    top = current.reasons()[:3]
    parts = ", ".join(f"{r['detail']} ({r['contribution']:.0f} pts)" for r in top)
    return (
        f"Churn risk {current.value:.0f}/100 for a high-value customer "
        f"({spend:.2f} spent in 365 days, {len(profile.orders)} orders). "
        f"Main reasons: {parts}. Please contact them personally."
    )


def record_request(profile: Profile, decision: RequestDecision, now: datetime) -> None:
    profile.requests.append(
        RequestMade(
            request_id=decision.request_id,
            intent=decision.intent,
            message_kind=decision.message_kind,
            cause_id=decision.cause_id,
            at=now,
            reasons=[str(r["code"]) for r in decision.reasons],
        )
    )


def record_handoff(profile: Profile, decision: HandoffDecision, now: datetime) -> None:
    profile.handoffs.append(
        HandoffMade(
            handoff_id=decision.handoff_id,
            at=now,
            score=decision.score,
            reasons=[str(r["code"]) for r in decision.reasons],
        )
    )
