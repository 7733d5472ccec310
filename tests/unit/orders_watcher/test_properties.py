"""Properties of detection: arrival order within the allowed lateness, duplicates and
cancellations cannot change which incidents exist."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.envelope import CloudEvent
from services.orders_watcher.domain.rules import DetectionConfig
from tests.unit.orders_watcher.timeline import (
    Run,
    cancelled,
    message,
    placed,
    return_event,
    scan,
    shipped,
)

CONFIG = DetectionConfig()
LATENESS_H = CONFIG.allowed_lateness.total_seconds() / 3600
DELAY_KINDS = {"dispatch_late", "delivery_at_risk", "delivery_late", "shipment_stalled"}


@st.composite
def timelines(draw: st.DrawFn) -> list[CloudEvent]:
    """One order's events, in event-time order: a plausible parcel journey with random
    gaps, statuses and estimates, sometimes a return."""
    method = draw(st.sampled_from(["standard", "express", "next_day"]))
    ship_by = draw(st.integers(6, 30))
    deliver_by = ship_by + draw(st.integers(12, 96))
    events = [placed(method=method, ship_by=ship_by, deliver_by=deliver_by)]
    t = draw(st.integers(30, 3600)) / 60
    events.append(shipped(at=t, estimate=t + draw(st.integers(10, 120))))
    statuses = draw(
        st.lists(
            st.sampled_from(
                [
                    "in_transit",
                    "in_transit",
                    "out_for_delivery",
                    "attempt_failed",
                    "available_for_pickup",
                    "exception",
                ]
            ),
            max_size=6,
        )
    )
    for status in statuses:
        t += draw(st.integers(1, 6000)) / 60  # minutes apart: scans can be close together
        estimate = t + draw(st.integers(-10, 80)) if draw(st.booleans()) else None
        substatus = (
            draw(st.sampled_from(["lost", "damaged", "weather_delay"]))
            if status == "exception"
            else None
        )
        events.append(scan(at=t, status=status, substatus=substatus, estimate=estimate))
    if draw(st.booleans()):
        t += draw(st.integers(1, 60))
        events.append(scan(at=t, status="delivered"))
        if draw(st.booleans()):
            t += draw(st.integers(10, 100))
            events.append(return_event("requested", at=t))
            t += draw(st.integers(10, 100))
            events.append(return_event("received", at=t))
            if draw(st.booleans()):
                events.append(return_event("refunded", at=t + draw(st.integers(1, 200))))
    return events


def final(events: list[CloudEvent], until: float) -> dict[str, tuple[str, str]]:
    return Run(config=CONFIG).feed(*events, until=until).final()


def horizon(events: list[CloudEvent]) -> float:
    last = max(e.time for e in events)
    return (last - events[0].time).total_seconds() / 3600 + 400


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines(), st.randoms(use_true_random=False))
def test_any_reordering_within_the_allowed_lateness_yields_the_same_incidents(events, rnd):
    # Each event arrives up to the allowed lateness after it happened (tracking scans
    # carry their own checkpoint time; other events arrive when they happen).
    delayed = sorted(
        events,
        key=lambda e: (
            e.time + timedelta(hours=rnd.uniform(0, LATENESS_H * 0.99))
            if e.type == "shipment.tracking_updated"
            else e.time
        ),
    )
    until = horizon(events)
    assert final(delayed, until) == final(events, until)


@settings(max_examples=100, deadline=None)
@given(timelines(), st.data())
def test_duplicates_change_nothing(events, data):
    extra = data.draw(st.lists(st.sampled_from(events), max_size=5))
    with_duplicates = sorted(events + extra, key=lambda e: e.time)
    until = horizon(events)
    assert final(with_duplicates, until) == final(events, until)


@settings(max_examples=100, deadline=None)
@given(st.integers(6, 30), st.integers(12, 96), st.floats(0.5, 5.9))
def test_no_delay_incident_for_an_order_cancelled_in_time(ship_by, transit, cancel_at):
    run = Run(config=CONFIG).feed(
        placed(ship_by=ship_by, deliver_by=ship_by + transit), cancelled(at=cancel_at), until=1000
    )
    assert not {kind for kind, _ in run.final().values()} & DELAY_KINDS


def lagging(events: list[CloudEvent], lags: list[float], until: float) -> Run:
    """Each event handled while the watermark still lags behind it by up to its lag
    (hours): as a worker judges while another partition holds the event clock back. The
    watermark never goes back, and deadlines fire as it passes them."""
    run = Run(config=CONFIG)
    for i, (event, lag) in enumerate(zip(events, lags, strict=True)):
        watermark = max(run.now, event.time - timedelta(hours=lag))
        run.now = watermark
        run._advance(watermark, inclusive=False)
        outcome = run.watcher.handle_event(run.state, message(event, i), event, watermark)
        run.state, run.deadline = outcome.state, outcome.deadline
        run.emitted += [r.event for r in outcome.records]
    return run.feed(until=until)


def told(run: Run) -> set[tuple[str, str, int, str]]:
    """Every transition emitted: incident, change, revision, and when the facts say."""
    return {
        (e.data["incident_id"], e.type, e.data["revision"], e.time.isoformat()) for e in run.emitted
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines(), st.data())
def test_a_watermark_held_back_tells_the_same_incidents_at_the_same_moments(events, data):
    # The facts are read before their time (the event clock waits for another
    # partition): each takes effect when the watermark reaches it, so downstream hears
    # the same transitions, dated the same, as from a watermark that follows the events.
    lags = data.draw(st.lists(st.floats(0, 48), min_size=len(events), max_size=len(events)))
    until = horizon(events)
    held_back = lagging(events, lags, until)
    following = Run(config=CONFIG).feed(*events, until=until)
    assert held_back.final() == following.final()
    assert told(held_back) == told(following)
