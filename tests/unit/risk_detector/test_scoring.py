"""The churn-risk score: bounds, monotonicity, decay, and its reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.risk_detector.domain.profile import (
    CancellationSeen,
    FeedbackSeen,
    IncidentSeen,
    OrderSeen,
    Profile,
    ReturnSeen,
)
from services.risk_detector.domain.scoring import score

NOW = datetime(2026, 6, 1, tzinfo=UTC)

signal = st.one_of(
    st.tuples(
        st.just("incident"), st.sampled_from(["info", "warning", "critical"]), st.integers(0, 120)
    ),
    st.tuples(st.just("return"), st.booleans(), st.integers(0, 200)),
    st.tuples(st.just("cancel"), st.sampled_from(["merchant", "customer"]), st.integers(0, 200)),
    st.tuples(st.just("nps"), st.integers(0, 10), st.integers(0, 200)),
    st.tuples(st.just("csat"), st.integers(1, 5), st.integers(0, 200)),
    st.tuples(st.just("complaint"), st.none(), st.integers(0, 200)),
)


def build(signals: list[tuple[str, object, int]]) -> Profile:
    profile = Profile(customer_id="c-1")
    for i, (kind, arg, days_ago) in enumerate(signals):
        add(profile, i, kind, arg, NOW - timedelta(days=days_ago))
    return profile


def add(profile: Profile, i: int, kind: str, arg: object, at: datetime) -> None:
    if kind == "incident":
        profile.incidents[f"i{i}"] = IncidentSeen(
            incident_id=f"i{i}", kind="delivery_late", severity=str(arg), order_id=f"o{i}", at=at
        )
    elif kind == "return":
        profile.returns.append(
            ReturnSeen(
                return_id=f"r{i}",
                order_id=f"o{i}",
                reason="damaged",
                merchant_fault=bool(arg),
                at=at,
            )
        )
    elif kind == "cancel":
        profile.cancellations.append(CancellationSeen(order_id=f"o{i}", at=at, by=str(arg)))
    elif kind in ("nps", "csat"):
        profile.feedback.append(FeedbackSeen(kind=kind, score=int(arg), at=at))  # type: ignore[call-overload]
    else:
        profile.feedback.append(FeedbackSeen(kind="complaint", score=None, at=at))


@settings(max_examples=200, deadline=None)
@given(st.lists(signal, max_size=30))
def test_score_stays_within_0_and_100(signals):
    value = score(build(signals), NOW).value
    assert 0 <= value <= 100


@settings(max_examples=200, deadline=None)
@given(st.lists(signal, max_size=20), signal)
def test_adding_a_negative_signal_never_lowers_the_score(signals, extra):
    before = score(build(signals), NOW).value
    after = score(build([*signals, extra]), NOW).value
    assert after >= before


@settings(max_examples=200, deadline=None)
@given(st.lists(signal, min_size=1, max_size=20), st.integers(1, 400))
def test_signals_decay_monotonically(signals, days_later):
    profile = build(signals)
    assert score(profile, NOW + timedelta(days=days_later)).value <= score(profile, NOW).value


@settings(max_examples=100, deadline=None)
@given(st.lists(signal, max_size=20), st.randoms())
def test_score_does_not_depend_on_the_order_signals_arrived(signals, rnd):
    shuffled = list(signals)
    rnd.shuffle(shuffled)
    # Same signals, same ids → same profile content whatever the arrival order.
    a = build(signals)
    b = Profile(customer_id="c-1")
    for i, (kind, arg, days_ago) in sorted(enumerate(signals), key=lambda _: rnd.random()):
        add(b, i, kind, arg, NOW - timedelta(days=days_ago))
    assert score(a, NOW).value == score(b, NOW).value


def test_every_score_comes_with_reasons_that_add_up():
    profile = build([("incident", "critical", 2), ("return", True, 10), ("nps", 2, 5)])
    result = score(profile, NOW)
    reasons = result.reasons()
    assert {r["code"] for r in reasons} == {"incident_critical", "merchant_fault_return", "low_nps"}
    assert abs(sum(float(r["contribution"]) for r in reasons) - result.value) < 0.05


def test_falling_order_rhythm_counts_when_no_order_for_twice_the_usual_gap():
    profile = Profile(customer_id="c-1")
    for i in range(5):
        profile.orders.append(
            OrderSeen(
                order_id=f"o{i}", at=NOW - timedelta(days=100 - 10 * i), total=50, currency="EUR"
            )
        )
    # Usual gap 10 days; last order 60 days ago → well past twice the gap.
    result = score(profile, NOW)
    assert any(c.code == "falling_order_rhythm" for c in result.contributions)
    fresh = score(profile, NOW - timedelta(days=45))
    assert not any(c.code == "falling_order_rhythm" for c in fresh.contributions)
