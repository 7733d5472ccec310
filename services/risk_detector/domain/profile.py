"""The per-customer profile: every signal the score and the decisions read, with times."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _M(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OrderSeen(_M):
    order_id: str
    at: datetime
    total: float
    currency: str


class IncidentSeen(_M):
    incident_id: str
    kind: str
    severity: str
    order_id: str
    at: datetime
    status: str = "open"
    revision: int = 1


class ReturnSeen(_M):
    return_id: str
    order_id: str
    reason: str
    merchant_fault: bool
    at: datetime


class CancellationSeen(_M):
    order_id: str
    at: datetime
    by: str


class FeedbackSeen(_M):
    kind: str
    score: int | None
    at: datetime
    order_id: str | None = None
    via: str = "feedback"  # or "reply": a complaint in a reply to one of our messages


class RequestMade(_M):
    request_id: str
    intent: str
    message_kind: str
    cause_id: str
    at: datetime
    reasons: list[str] = Field(default_factory=list)


class HandoffMade(_M):
    handoff_id: str
    at: datetime
    score: float
    reasons: list[str] = Field(default_factory=list)


class AwaitingAgent(_M):
    """An automated check-in held back while an agent has the customer's case
    (`RISK_DETECTOR_CHECKIN_WAITS_FOR_AGENT`): released by the agent's `no_contact`, or
    after `RISK_DETECTOR_AGENT_WAIT_DAYS` without an outcome; dropped by `solved`."""

    handoff_id: str
    at: datetime
    request: dict[str, Any]  # the RequestDecision, as it would have gone out


class ResolutionSeen(_M):
    """The agent's outcome of a hand-off (support.resolutions)."""

    handoff_id: str
    outcome: str
    at: datetime


class Profile(_M):
    customer_id: str
    marketing_opt_in: bool = False
    known: bool = False
    orders: list[OrderSeen] = Field(default_factory=list)
    incidents: dict[str, IncidentSeen] = Field(default_factory=dict)
    returns: list[ReturnSeen] = Field(default_factory=list)
    cancellations: list[CancellationSeen] = Field(default_factory=list)
    feedback: list[FeedbackSeen] = Field(default_factory=list)
    requests: list[RequestMade] = Field(default_factory=list)
    handoffs: list[HandoffMade] = Field(default_factory=list)
    awaiting_agent: list[AwaitingAgent] = Field(default_factory=list)
    resolutions: list[ResolutionSeen] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)
    last_score: float = 0.0
    last_event_at: datetime | None = None
    # The latest rhythm check already made (domain/rhythm.py): each is made once.
    rhythm_checked_at: datetime | None = None

    def seen(self, event_id: str) -> bool:
        return event_id in self.seen_event_ids

    def remember(self, event_id: str, limit: int = 1000) -> None:
        self.seen_event_ids.append(event_id)
        if len(self.seen_event_ids) > limit:
            del self.seen_event_ids[: len(self.seen_event_ids) - limit]

    def spend(self, now: datetime, days: int = 365) -> float:
        since = now - timedelta(days=days)
        return sum(o.total for o in self.orders if o.at >= since)

    def usual_gap(self) -> timedelta | None:
        """Median gap between consecutive orders (needs three orders: two gaps)."""
        times = sorted(o.at for o in self.orders)
        gaps = sorted(b - a for a, b in pairwise(times))
        if len(gaps) < 2:
            return None
        mid = len(gaps) // 2
        return gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2

    def last_order_at(self) -> datetime | None:
        return max((o.at for o in self.orders), default=None)

    def prune(self, now: datetime, keep_days: int = 400) -> None:
        """Forget signals older than any rule looks back (bounded state per customer)."""
        since = now - timedelta(days=keep_days)
        self.orders = [o for o in self.orders if o.at >= since][-200:]
        self.incidents = {k: v for k, v in self.incidents.items() if v.at >= since}
        self.returns = [r for r in self.returns if r.at >= since]
        self.cancellations = [c for c in self.cancellations if c.at >= since]
        self.feedback = [f for f in self.feedback if f.at >= since]
        self.requests = [r for r in self.requests if r.at >= since][-200:]
        self.handoffs = [h for h in self.handoffs if h.at >= since][-50:]
        self.resolutions = [r for r in self.resolutions if r.at >= since][-50:]
