"""A falling order rhythm detected from the absence of orders, and the spend quantile that
survives a restart."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from common.topics import Topics
from services.risk_detector.domain.decisions import Policy
from services.risk_detector.domain.profile import OrderSeen, Profile
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.domain.rhythm import (
    RESOLUTION,
    due_rhythm_checks,
    next_rhythm_check,
    rhythm_checks,
)
from services.risk_detector.domain.scoring import score
from services.risk_detector.handlers import RiskDetector
from tests.risk_scenario import LAPSE_CHECK, T0, at, feedback, history, order


def regular(days: list[float]) -> Profile:
    profile = Profile(customer_id="c-1")
    for i, day in enumerate(days):
        profile.orders.append(OrderSeen(order_id=f"o{i}", at=at(day), total=40, currency="EUR"))
    return profile


def feed(detector: RiskDetector, events, until=None):
    """Handle each event as the stream would (profile per customer), firing ticks at
    `until`; returns the records emitted, in order."""
    profiles: dict[str, Profile | None] = {}
    out = []
    for _topic, key, event in events:
        customer = event.data.get("customer_id", key)
        outcome = detector.handle(profiles.get(customer), customer, event)
        profiles[customer] = outcome.state
        out += outcome.records
    if until is not None:
        for profile in profiles.values():
            if profile is not None:
                out += detector.handle_tick(profile, until).records
    return out, profiles


def test_the_silence_is_checked_just_past_twice_the_usual_gap_and_while_it_grows():
    profile = regular([0, 5, 10, 15])
    first = at(25) + RESOLUTION
    assert rhythm_checks(profile) == [first, at(30) + RESOLUTION, at(35) + RESOLUTION]
    assert next_rhythm_check(profile) == first
    # Just before the first check the absence does not count yet; at it, it does.
    assert not any(c.code == "falling_order_rhythm" for c in score(profile, at(25)).contributions)
    assert any(c.code == "falling_order_rhythm" for c in score(profile, first).contributions)


def test_no_rhythm_check_without_a_usual_gap():
    assert rhythm_checks(regular([0, 5])) == []
    assert next_rhythm_check(regular([])) is None


def test_a_check_already_made_is_not_due_again_and_a_new_order_moves_the_next_one():
    profile = regular([0, 5, 10, 15])
    profile.rhythm_checked_at = at(25) + RESOLUTION
    assert due_rhythm_checks(profile, at(26)) == []
    assert next_rhythm_check(profile) == at(30) + RESOLUTION
    profile.orders.append(OrderSeen(order_id="o9", at=at(27), total=40, currency="EUR"))
    assert next_rhythm_check(profile) == at(27 + 10) + RESOLUTION


def test_a_regular_who_stops_ordering_gets_one_check_in_when_the_silence_passes_its_deadline():
    detector = RiskDetector(Policy(), Topics())
    lapse = [e for e in history() if e[2].data.get("customer_id", e[1]) == "c-lapse"]
    out, profiles = feed(detector, lapse)
    assert not [r for r in out if r.event.data.get("message_kind") == "churn_risk"]
    profile = profiles["c-lapse"]
    assert profile is not None
    outcome = detector.handle_tick(profile, LAPSE_CHECK + timedelta(days=30))
    checkins = [r.event for r in outcome.records]
    assert [e.data["message_kind"] for e in checkins] == ["churn_risk"]
    request = checkins[0].data
    assert request["requested_at"] == "2026-01-30T09:00:01Z"
    assert checkins[0].time == LAPSE_CHECK
    assert "falling_order_rhythm" in {r["code"] for r in request["reasons"]}
    assert request["context"]["order_rhythm"]["usual_gap_days"] == 5.0
    assert request["offer_tier"] is not None  # opted into marketing
    # Every later check (30, 35 days) falls in the quiet period: nothing more.
    assert outcome.deadline is None
    assert detector.handle_tick(profile, LAPSE_CHECK + timedelta(days=60)).records == []


def test_the_check_in_does_not_depend_on_whether_a_tick_or_a_later_fact_comes_first():
    def run(tick_first: bool):
        detector = RiskDetector(Policy(), Topics())
        lapse = [e for e in history() if e[2].data.get("customer_id", e[1]) == "c-lapse"]
        out, profiles = feed(detector, lapse)
        profile = profiles["c-lapse"]
        later = feedback("c-lapse", "csat", 4, 27)[2]
        if tick_first:
            tick = detector.handle_tick(profile, at(26))
            out += tick.records
            out += detector.handle(tick.state, "c-lapse", later).records
        else:
            out += detector.handle(profile, "c-lapse", later).records
        return [r.event.to_bytes() for r in out if r.event.data["cause"]["type"] == "risk"]

    assert run(tick_first=True) == run(tick_first=False)
    assert len(run(tick_first=True)) == 1


def test_an_order_before_the_deadline_means_no_silence_and_a_later_deadline():
    detector = RiskDetector(Policy(), Topics())
    lapse = [e for e in history() if e[2].data.get("customer_id", e[1]) == "c-lapse"]
    lapse.append(order("c-lapse", "o-lapse-back", 24))
    out, profiles = feed(detector, lapse, until=at(26))
    assert not [r for r in out if r.event.data.get("message_kind") == "churn_risk"]
    profile = profiles["c-lapse"]
    assert profile is not None
    assert next_rhythm_check(profile) == at(24 + 10) + RESOLUTION


def test_the_whole_history_decides_the_same_whenever_the_ticks_come():
    early, _ = feed(RiskDetector(Policy(), Topics()), history(), until=at(41))
    detector = RiskDetector(Policy(), Topics())
    profiles: dict[str, Profile | None] = {}
    late = []
    for _topic, key, event in history():
        customer = event.data.get("customer_id", key)
        outcome = detector.handle(profiles.get(customer), customer, event)
        profiles[customer] = outcome.state
        late += outcome.records
        for other, profile in profiles.items():  # a tick after every fact
            if profile is not None and other != customer:
                late += detector.handle_tick(profile, event.time).records
    for profile in profiles.values():
        if profile is not None:
            late += detector.handle_tick(profile, at(41)).records
    key = sorted(r.event.id for r in early)
    assert key == sorted(r.event.id for r in late)
    kinds = sorted(
        r.event.data.get("message_kind", r.event.type) for r in early
    )  # two apologies, serial returns, the lapse, the hand-off
    assert kinds == sorted(
        [
            "merchant_fault_return",
            "merchant_fault_return",
            "serial_returns",
            "churn_risk",
            "support.handoff.requested",
            "carrier_exception",
            "carrier_exception",
            "carrier_exception",
        ]
    )


def test_a_new_order_feeds_the_quantile_the_caller_passes():
    detector = RiskDetector(Policy(), Topics())
    estimate = detector.new_quantile()
    _topic, _key, placed = order("c-9", "o-9", 1, total="120.00")
    outcome = detector.handle(None, "c-9", placed, estimate)
    assert outcome.quantile_changed
    assert estimate.count == 1 and detector.spend_quantile.count == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 10_000), min_size=0, max_size=60), st.integers(0, 60))
def test_a_restored_spend_quantile_goes_on_exactly_as_one_never_interrupted(values, cut):
    whole = P2Quantile(0.9)
    for v in values:
        whole.add(v)
    first = P2Quantile(0.9)
    for v in values[:cut]:
        first.add(v)
    restored = P2Quantile.from_dict(first.to_dict())
    for v in values[cut:]:
        restored.add(v)
    assert restored.to_dict() == whole.to_dict()
    assert restored.value() == whole.value()


def test_the_quantile_tracks_the_top_ten_percent_without_a_sort():
    rng = random.Random(4)
    estimate = P2Quantile(0.9)
    values = [rng.uniform(0, 1000) for _ in range(5000)]
    for v in values:
        estimate.add(v)
    exact = sorted(values)[int(0.9 * len(values))]
    assert abs((estimate.value() or 0) - exact) < 30
    assert T0 < LAPSE_CHECK


def test_serial_returns_are_noticed_whatever_order_the_return_requests_arrive_in():
    returns = [e for e in history() if e[2].type == "return.requested"]
    seen = set()
    for permutation in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        detector = RiskDetector(Policy(), Topics())
        out, _ = feed(detector, [returns[i] for i in permutation])
        checkins = [r.event for r in out if r.event.data["message_kind"] == "serial_returns"]
        assert len(checkins) == 1
        seen.add(checkins[0].to_bytes())
    assert len(seen) == 1
