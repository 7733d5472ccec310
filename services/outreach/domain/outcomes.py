"""Outcomes (docs/outcomes.md): what became of each customer after a decision, and what
an experiment's two arms say about it.

- `fact_of`: a shop's event (or an opt-out of ours) as an outcome fact, or None.
- `exposures`: per experiment, each customer's first decision it covered whose arm could
  act on it (a protected message is nobody's evidence: it went out in both arms).
- `measure`: the customer's outcomes in the windows after that moment — only windows
  that have passed by `now` count, so a young experiment is not read as a quiet one.
- `compare`: control against treatment, per outcome: the difference with its 95 %
  confidence interval, and how many customers per arm it takes to tell a difference
  that size (at 95 % confidence and 80 % power).

Pure: the adapters read the ledger and the outcome events; nothing here touches them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from services.outreach.domain.experiments import CONTROL, NOT_REACHED, PROTECTED, TREATMENT

ORDER, CANCELLATION, RETURN, REFUND = "order", "cancellation", "return", "refund"
COMPLAINT, NPS, CSAT, TICKET, UNSUBSCRIBE = "complaint", "nps", "csat", "ticket", "unsubscribe"
WISMO = "where_is_my_order"
Z_95, Z_80 = 1.959964, 0.841621  # two-sided 95 % confidence; 80 % power
MIN_GROUP = 5  # customers per arm before a comparison is made (or its figures shown)
TOO_FEW = "too few customers"


@dataclass(frozen=True)
class Fact:
    """One thing that happened to a customer (outcome_events)."""

    event_id: str
    customer_id: str | None  # None: known by its order only (a refund, a cancellation)
    order_id: str | None
    at: datetime
    kind: str
    amount: Decimal | None = None
    currency: str | None = None
    score: int | None = None
    detail: str | None = None


def fact_of(event_type: str, event_id: str, at: datetime, data: Mapping[str, Any]) -> Fact | None:
    """The outcome fact an event is, if it is one (a shop's event already validated)."""

    def fact(kind: str, **kw: Any) -> Fact:
        customer = data.get("customer_id")
        return Fact(event_id, customer, data.get("order_id"), at, kind, **kw)

    if event_type == "order.placed":
        return fact(ORDER, amount=_money(data.get("total")), currency=data.get("currency"))
    if event_type == "order.cancelled":
        return fact(CANCELLATION, detail=str(data.get("cancelled_by") or "") or None)
    if event_type == "return.requested":
        return fact(RETURN, detail=data.get("reason"))
    if event_type == "return.refunded":
        return fact(REFUND, amount=_money(data.get("amount")), currency=data.get("currency"))
    if event_type == "feedback.received":
        return fact(str(data["kind"]), score=data.get("score"))
    if event_type == "support.ticket.opened":
        return fact(TICKET, detail=data.get("topic"))
    if event_type == "contact.opted_out":
        return fact(UNSUBSCRIBE, detail=data.get("channel"))
    return None


def _money(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


# --- who was exposed, when -------------------------------------------------------------


@dataclass(frozen=True)
class Decided:
    """What the report needs of one decision (a ledger row)."""

    decision_id: str
    customer_id: str
    order_id: str | None
    decided_at: datetime
    message_kind: str
    intent: str
    status: str
    arms: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Exposure:
    experiment: str
    subject: str
    customer_id: str
    arm: str  # control | treatment
    at: datetime
    order_id: str | None  # the order the decision was about (not a repeat order)
    message_kind: str
    intent: str


def exposures(decisions: Iterable[Decided]) -> dict[str, list[Exposure]]:
    """Per experiment, each customer's first decision it covered (earliest first), the
    protected ones left out."""
    first: dict[tuple[str, str], Exposure] = {}
    for d in sorted(decisions, key=lambda d: (d.decided_at, d.decision_id)):
        for arm in d.arms:
            if arm.get("effect") in (PROTECTED, NOT_REACHED) or arm.get("arm") not in (
                CONTROL,
                TREATMENT,
            ):
                continue
            key = (str(arm["experiment"]), d.customer_id)
            if key not in first:
                first[key] = Exposure(
                    key[0], str(arm.get("subject") or ""), d.customer_id, str(arm["arm"]),
                    d.decided_at, d.order_id, d.message_kind, d.intent,
                )  # fmt: skip
    found: dict[str, list[Exposure]] = defaultdict(list)
    for exposure in first.values():
        found[exposure.experiment].append(exposure)
    return dict(found)


# --- what became of them ---------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    days: int
    kind: Literal["rate", "mean"]
    better: Literal["higher", "lower"]


METRICS: tuple[Metric, ...] = (
    Metric("repeat_30", "ordered again within 30 days", 30, "rate", "higher"),
    Metric("repeat_90", "ordered again within 90 days", 90, "rate", "higher"),
    Metric("spend_90", "spend within 90 days", 90, "mean", "higher"),
    Metric("return_90", "asked to return within 90 days", 90, "rate", "lower"),
    Metric("refund_90", "refunded within 90 days", 90, "rate", "lower"),
    Metric("wismo_30", '"where is my order?" contact within 30 days', 30, "rate", "lower"),
    Metric("complaint_90", "complained within 90 days", 90, "rate", "lower"),
    Metric("unsubscribe_30", "unsubscribed within 30 days", 30, "rate", "lower"),
    Metric("csat_90", "CSAT (1-5) within 90 days, of those who answered", 90, "mean", "higher"),
    Metric(
        "nps_90", "NPS score (0-10) within 90 days, of those who answered", 90, "mean", "higher"
    ),
)
BY_NAME = {m.name: m for m in METRICS}
LONGEST = timedelta(days=max(m.days for m in METRICS))


def measure(
    exposure: Exposure, facts: Sequence[Fact], now: datetime, currency: str | None
) -> dict[str, float]:
    """The customer's outcomes whose window has passed by `now` (a mean with no answer
    in its window, e.g. no CSAT given, is left out). `facts`: the customer's, any order.
    Spend counts orders in `currency` only (None: every order's total as it is)."""
    out: dict[str, float] = {}
    for metric in METRICS:
        end = exposure.at + timedelta(days=metric.days)
        if end > now:
            continue
        within = [f for f in facts if exposure.at < f.at <= end]
        value = _value(metric.name, within, exposure, currency)
        if value is not None:
            out[metric.name] = value
    return out


def _value(name: str, facts: list[Fact], exposure: Exposure, currency: str | None) -> float | None:
    def any_of(kind: str, detail: str | None = None) -> float:
        return float(any(f.kind == kind and (detail is None or f.detail == detail) for f in facts))

    repeat = [f for f in facts if f.kind == ORDER and f.order_id != exposure.order_id]
    if name.startswith("repeat_"):
        return float(bool(repeat))
    if name == "spend_90":
        return float(
            sum((f.amount or 0) for f in repeat if currency is None or f.currency == currency)
        )
    if name in ("csat_90", "nps_90"):
        scores = [f.score for f in facts if f.kind == name[:-3] and f.score is not None]
        return sum(scores) / len(scores) if scores else None
    kind, detail = {
        "return_90": (RETURN, None),
        "refund_90": (REFUND, None),
        "wismo_30": (TICKET, WISMO),
        "complaint_90": (COMPLAINT, None),
        "unsubscribe_30": (UNSUBSCRIBE, None),
    }[name]
    return any_of(kind, detail)


# --- control against treatment ---------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    metric: str
    control_n: int
    treatment_n: int
    control: float | None  # the rate or the mean in each arm
    treatment: float | None
    difference: float | None  # treatment − control
    low: float | None  # its 95 % confidence interval
    high: float | None
    needed_per_arm: int | None  # customers per arm to tell `difference` (or the minimum)
    verdict: str  # better | worse | no difference yet | too few customers


def compare(
    metric: Metric,
    control: Sequence[float],
    treatment: Sequence[float],
    min_effect: float | None = None,
) -> Comparison:
    """Rates: the difference of proportions with the Agresti–Caffo interval (a success
    and a failure added to each arm: sound at small counts and at 0 %). Means: Welch's
    difference with Student's t on the Welch–Satterthwaite degrees of freedom. Below
    `MIN_GROUP` customers in an arm nothing is said (nor shown: it would be a person's).
    `min_effect`: the smallest difference worth telling, for the customers needed (else
    the difference seen)."""
    nc, nt = len(control), len(treatment)
    if nc < MIN_GROUP or nt < MIN_GROUP:
        return Comparison(metric.name, nc, nt, None, None, None, None, None, None, TOO_FEW)
    mc, mt = sum(control) / nc, sum(treatment) / nt
    if metric.kind == "rate":
        pc, pt = (sum(control) + 1) / (nc + 2), (sum(treatment) + 1) / (nt + 2)
        se = math.sqrt(pc * (1 - pc) / (nc + 2) + pt * (1 - pt) / (nt + 2))
        centre, spread, quantile = pt - pc, mc * (1 - mc) + mt * (1 - mt), Z_95
    else:
        vc, vt = _variance(control, mc), _variance(treatment, mt)
        se = math.sqrt(vc / nc + vt / nt)
        centre, spread = mt - mc, vc + vt
        quantile = t_975(_welch_df(vc / nc, vt / nt, nc, nt)) if se > 0 else Z_95
    if se == 0:  # every customer alike in both arms: no spread to judge a difference by
        return Comparison(metric.name, nc, nt, mc, mt, mt - mc, None, None, None, "cannot tell")
    low, high = centre - quantile * se, centre + quantile * se
    effect = abs(min_effect) if min_effect else abs(mt - mc)
    if min_effect and metric.kind == "rate":  # the spread of a difference that size
        other = mc + effect if metric.better == "higher" else mc - effect
        other = min(1.0, max(0.0, other))
        spread = mc * (1 - mc) + other * (1 - other)
    needed = math.ceil((Z_95 + Z_80) ** 2 * spread / effect**2) if effect > 0 else None
    return Comparison(
        metric.name, nc, nt, mc, mt, mt - mc, low, high, needed, _verdict(metric, low, high)
    )


def _welch_df(a: float, b: float, nc: int, nt: int) -> float:
    """Welch–Satterthwaite degrees of freedom (a, b: each arm's variance over its n)."""
    denominator = a * a / (nc - 1) + b * b / (nt - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else float(nc + nt - 2)


def t_975(df: float) -> float:
    """Student's t 97.5 % quantile (a two-sided 95 % interval), by the Cornish–Fisher
    expansion around the normal one: within 1 % of the tables at 3 degrees of freedom,
    0.1 % from 5."""
    z = Z_95
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def _variance(values: Sequence[float], mean: float) -> float:
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def _verdict(metric: Metric, low: float, high: float) -> str:
    if low <= 0 <= high:
        return "no difference yet"
    up = low > 0
    return "better" if up == (metric.better == "higher") else "worse"


# --- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One experiment (or a slice of it: one rule, one intent) compared."""

    experiment: str
    subject: str
    slice: str  # "" for the whole experiment, else "rule:<kind>" | "intent:<intent>"
    control_customers: int
    treatment_customers: int
    comparisons: list[Comparison] = field(default_factory=list)


def report(
    exposed: Mapping[str, Sequence[Exposure]],
    facts_of: Mapping[str, Sequence[Fact]],
    now: datetime,
    *,
    currency: str | None = None,
    min_effect: Mapping[str, float] | None = None,
    slices: bool = True,
) -> list[Group]:
    """Every experiment compared on every outcome, and (with `slices`) each of its rules
    and intents that has customers in both arms."""
    groups = []
    for name in sorted(exposed):
        rows = exposed[name]
        groups.append(_group(name, "", rows, facts_of, now, currency, min_effect))
        if not slices:
            continue
        for label, key in (("rule", "message_kind"), ("intent", "intent")):
            values = sorted({getattr(e, key) for e in rows})
            if len(values) < 2:
                continue  # the slice is the whole experiment
            for value in values:
                part = [e for e in rows if getattr(e, key) == value]
                if {e.arm for e in part} == {CONTROL, TREATMENT}:
                    groups.append(
                        _group(name, f"{label}:{value}", part, facts_of, now, currency, min_effect)
                    )
    return groups


def _group(
    name: str,
    label: str,
    rows: Sequence[Exposure],
    facts_of: Mapping[str, Sequence[Fact]],
    now: datetime,
    currency: str | None,
    min_effect: Mapping[str, float] | None,
) -> Group:
    values: dict[str, dict[str, list[float]]] = {CONTROL: defaultdict(list), TREATMENT: {}}
    values[TREATMENT] = defaultdict(list)
    for e in rows:
        for metric, value in measure(e, facts_of.get(e.customer_id, ()), now, currency).items():
            values[e.arm][metric].append(value)
    arms = [e.arm for e in rows]
    return Group(
        experiment=name,
        subject=rows[0].subject if rows else "",
        slice=label,
        control_customers=arms.count(CONTROL),
        treatment_customers=arms.count(TREATMENT),
        comparisons=[
            compare(
                m,
                values[CONTROL].get(m.name, []),
                values[TREATMENT].get(m.name, []),
                (min_effect or {}).get(m.name),
            )
            for m in METRICS
        ],
    )
