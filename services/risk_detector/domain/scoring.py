"""The churn-risk score: 0–100, the sum of decaying signal contributions, with reasons.

Each signal contributes `weight × 0.5^(age / half_life)` while it is younger than its
window; the score is the sum, capped at 100. Adding a signal can only raise the score,
and every contribution shrinks as the signal ages. docs/risk.md has worked examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.risk_detector.domain.profile import Profile


@dataclass(frozen=True)
class Weights:
    incident_info: float = 4.0
    incident_warning: float = 12.0
    incident_critical: float = 25.0
    incident_half_life_days: float = 30.0
    incident_window_days: int = 90
    merchant_fault_return: float = 15.0
    return_half_life_days: float = 45.0
    merchant_cancellation: float = 15.0
    cancellation_half_life_days: float = 45.0
    complaint: float = 20.0
    nps_detractor: float = 15.0  # 0–6
    nps_strong_detractor: float = 22.0  # 0–3
    csat_low: float = 15.0  # 1–2
    agent_no_contact: float = 10.0  # an agent could not reach them
    feedback_half_life_days: float = 60.0
    signal_window_days: int = 180
    falling_rhythm: float = 20.0
    falling_rhythm_extra_per_gap: float = 5.0
    falling_rhythm_max: float = 30.0


@dataclass(frozen=True)
class Contribution:
    code: str
    points: float
    detail: str
    at: datetime


@dataclass(frozen=True)
class Score:
    value: float
    contributions: tuple[Contribution, ...] = field(default_factory=tuple)

    def reasons(self) -> list[dict[str, object]]:
        """Reasons grouped by code, largest share first."""
        grouped: dict[str, list[Contribution]] = {}
        for c in self.contributions:
            grouped.setdefault(c.code, []).append(c)
        out = [
            {
                "code": code,
                "contribution": round(sum(c.points for c in items), 2),
                "detail": "; ".join(c.detail for c in items[:3])
                + (f" (+{len(items) - 3} more)" if len(items) > 3 else ""),
            }
            for code, items in grouped.items()
        ]
        return sorted(out, key=lambda r: -float(r["contribution"]))  # type: ignore[arg-type]


def _decay(weight: float, age: timedelta, half_life_days: float) -> float:
    days = max(0.0, age.total_seconds() / 86400)
    return float(weight * 0.5 ** (days / half_life_days))


def score(profile: Profile, now: datetime, w: Weights = Weights()) -> Score:
    parts = [
        *_incident_parts(profile, now, w),
        *_return_and_cancellation_parts(profile, now, w),
        *_feedback_parts(profile, now, w),
    ]
    rhythm = falling_rhythm(profile, now, w)
    if rhythm is not None:
        parts.append(rhythm)
    total = min(100.0, sum(p.points for p in parts))
    return Score(round(total, 2), tuple(parts))


def _incident_parts(profile: Profile, now: datetime, w: Weights) -> Iterator[Contribution]:
    incident_window = timedelta(days=w.incident_window_days)
    by_severity = {
        "info": w.incident_info,
        "warning": w.incident_warning,
        "critical": w.incident_critical,
    }
    for inc in profile.incidents.values():
        age = now - inc.at
        if inc.kind == "post_incident_checkin" or age > incident_window or age.total_seconds() < 0:
            continue
        points = _decay(
            by_severity.get(inc.severity, w.incident_warning), age, w.incident_half_life_days
        )
        yield Contribution(
            f"incident_{inc.severity}", points, f"{inc.kind} on order {inc.order_id}", inc.at
        )


def _return_and_cancellation_parts(
    profile: Profile, now: datetime, w: Weights
) -> Iterator[Contribution]:
    window = timedelta(days=w.signal_window_days)
    for ret in profile.returns:
        age = now - ret.at
        if ret.merchant_fault and timedelta(0) <= age <= window:
            yield Contribution(
                "merchant_fault_return",
                _decay(w.merchant_fault_return, age, w.return_half_life_days),
                f"return {ret.return_id}: {ret.reason}",
                ret.at,
            )
    for c in profile.cancellations:
        age = now - c.at
        if c.by == "merchant" and timedelta(0) <= age <= window:
            yield Contribution(
                "merchant_cancellation",
                _decay(w.merchant_cancellation, age, w.cancellation_half_life_days),
                f"order {c.order_id} cancelled by the shop",
                c.at,
            )


def _feedback_parts(profile: Profile, now: datetime, w: Weights) -> Iterator[Contribution]:
    window = timedelta(days=w.signal_window_days)
    for f in profile.feedback:
        age = now - f.at
        if not timedelta(0) <= age <= window:
            continue
        weight, code, detail = 0.0, "", ""
        if f.kind == "complaint":
            detail = "complaint in a reply" if f.via == "reply" else "complaint received"
            weight, code = w.complaint, "complaint"
        elif f.kind == "nps" and f.score is not None and f.score <= 6:
            strong = f.score <= 3
            weight = w.nps_strong_detractor if strong else w.nps_detractor
            code, detail = "low_nps", f"NPS {f.score}/10"
        elif f.kind == "csat" and f.score is not None and f.score <= 2:
            weight, code, detail = w.csat_low, "low_csat", f"CSAT {f.score}/5"
        if weight:
            yield Contribution(code, _decay(weight, age, w.feedback_half_life_days), detail, f.at)
    for r in profile.resolutions:
        age = now - r.at
        if r.outcome == "no_contact" and timedelta(0) <= age <= window:
            points = _decay(w.agent_no_contact, age, w.feedback_half_life_days)
            yield Contribution("agent_no_contact", points, "an agent could not reach them", r.at)


def falling_rhythm(profile: Profile, now: datetime, w: Weights = Weights()) -> Contribution | None:
    """No order for more than twice the customer's usual gap."""
    gap = profile.usual_gap()
    last = profile.last_order_at()
    if gap is None or last is None or gap.total_seconds() <= 0:
        return None
    overdue = now - last
    if overdue <= 2 * gap:
        return None
    extra_gaps = (overdue - 2 * gap) / gap
    points = min(
        w.falling_rhythm_max, w.falling_rhythm + w.falling_rhythm_extra_per_gap * extra_gaps
    )
    return Contribution(
        "falling_order_rhythm",
        points,
        f"no order for {overdue.days} days (usually every {gap.days} days)",
        last + 2 * gap,
    )
