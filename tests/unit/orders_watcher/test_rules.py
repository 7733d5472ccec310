"""One table row per rule: a timeline in, the incidents out (SPEC §6 defaults)."""

from __future__ import annotations

import pytest

from common.envelope import CloudEvent
from tests.unit.orders_watcher.timeline import (
    Run,
    cancelled,
    placed,
    return_event,
    scan,
    shipped,
)

CASES = [
    pytest.param(
        [
            placed(),
            shipped(at=10, estimate=60),
            scan(at=20, status="in_transit"),
            scan(at=50, status="delivered"),
        ],
        200,
        [],
        id="on_time_order_raises_nothing",
    ),
    pytest.param(
        [placed(ship_by=24)],
        30,
        [("opened", "dispatch_late")],
        id="dispatch_late_when_no_shipment_by_promised_ship_by",
    ),
    pytest.param(
        [placed(ship_by=24), shipped(at=30), scan(at=40, status="delivered")],
        200,
        [("opened", "dispatch_late"), ("resolved", "dispatch_late")],
        id="late_dispatch_resolved_by_delivery",
    ),
    pytest.param(
        [
            placed(deliver_by=72),
            shipped(at=10, estimate=60),
            scan(at=30, status="in_transit", estimate=100),
        ],
        40,
        [("opened", "delivery_at_risk")],
        id="estimate_slipping_past_promise_warns_before_it_breaks",
    ),
    pytest.param(
        [
            placed(deliver_by=72),
            shipped(at=10, estimate=60),
            scan(at=30, status="in_transit", estimate=80),
        ],
        40,
        [],
        id="slip_within_12h_margin_is_not_at_risk",
    ),
    pytest.param(
        [
            placed(deliver_by=72),
            shipped(at=10, estimate=60),
            scan(at=30, status="in_transit", estimate=100),
            scan(at=40, status="in_transit", estimate=120),
        ],
        45,
        [("opened", "delivery_at_risk"), ("updated", "delivery_at_risk")],
        id="a_new_estimated_date_updates_the_same_incident",
    ),
    pytest.param(
        [
            placed(deliver_by=72),
            shipped(at=10),
            scan(at=20, status="in_transit"),
            scan(at=60, status="in_transit"),
        ],
        80,
        [("opened", "delivery_late")],
        id="delivery_late_when_not_delivered_at_promise",
    ),
    pytest.param(
        [
            placed(deliver_by=72),
            shipped(at=10),
            scan(at=20, status="in_transit"),
            scan(at=70, status="in_transit"),
            scan(at=90, status="delivered"),
        ],
        100,
        [("opened", "delivery_late"), ("resolved", "delivery_late")],
        id="late_delivery_resolved_when_delivered",
    ),
    pytest.param(
        [placed(deliver_by=200), shipped(at=10), scan(at=20, status="in_transit")],
        100,
        [("opened", "shipment_stalled")],
        id="stalled_after_72h_without_tracking_update",
    ),
    pytest.param(
        [
            placed(method="express", deliver_by=200),
            shipped(at=10),
            scan(at=20, status="in_transit"),
        ],
        70,
        [("opened", "shipment_stalled")],
        id="express_stalls_after_48h",
    ),
    pytest.param(
        [placed(deliver_by=200), shipped(at=10), scan(at=20, status="in_transit")],
        70,
        [],
        id="standard_parcel_not_stalled_at_50h",
    ),
    pytest.param(
        [placed(deliver_by=200), shipped(at=10), scan(at=30, status="attempt_failed")],
        31,
        [("opened", "delivery_failed")],
        id="failed_attempt_raised_at_once",
    ),
    pytest.param(
        [placed(deliver_by=200), shipped(at=10), scan(at=30, status="available_for_pickup")],
        31,
        [("opened", "awaiting_pickup")],
        id="awaiting_pickup_raised_at_once",
    ),
    pytest.param(
        [placed(deliver_by=200), shipped(at=10), scan(at=30, status="exception", substatus="lost")],
        31,
        [("opened", "carrier_exception")],
        id="carrier_exception_lost",
    ),
    pytest.param(
        [placed(deliver_by=200), shipped(at=10), scan(at=30, status="returned_to_sender")],
        31,
        [("opened", "returned_to_sender")],
        id="returned_to_sender_raised_at_once",
    ),
    pytest.param(
        [placed(ship_by=24), cancelled(at=10)],
        300,
        [],
        id="cancelled_order_raises_no_delay_incidents",
    ),
    pytest.param(
        [placed(ship_by=24), cancelled(at=30)],
        300,
        [("opened", "dispatch_late"), ("resolved", "dispatch_late")],
        id="cancellation_resolves_open_incidents",
    ),
    pytest.param(
        [
            placed(),
            shipped(at=10),
            scan(at=50, status="delivered"),
            return_event("requested", at=60),
            return_event("received", at=80),
        ],
        80 + 5 * 24 + 1,
        [("opened", "refund_late")],
        id="refund_late_after_5_days",
    ),
    pytest.param(
        [
            placed(),
            shipped(at=10),
            scan(at=50, status="delivered"),
            return_event("requested", at=60),
            return_event("received", at=80),
            return_event("refunded", at=100),
        ],
        400,
        [],
        id="refund_within_5_days_is_fine",
    ),
]


@pytest.mark.parametrize(("events", "until", "expected"), CASES)
def test_rule(events, until, expected):
    run = Run().feed(*events, until=until)
    assert [k for k in run.kinds() if k[1] != "post_incident_checkin"] == expected


def test_carrier_exception_severity_is_critical_for_lost_and_damaged():
    for substatus, severity in [
        ("lost", "critical"),
        ("damaged", "critical"),
        ("weather_delay", "warning"),
        ("address_issue", "warning"),
    ]:
        run = Run().feed(
            placed(deliver_by=200),
            shipped(at=10),
            scan(at=30, status="exception", substatus=substatus),
            until=31,
        )
        assert run.emitted[-1].data["severity"] == severity, substatus


def test_post_incident_checkin_24h_after_delivery_of_an_order_that_had_an_incident():
    run = Run().feed(
        placed(deliver_by=72),
        shipped(at=10),
        scan(at=20, status="in_transit"),
        scan(at=90, status="delivered"),
        until=90 + 23,
    )
    assert ("checkin_due", "post_incident_checkin") not in run.kinds()
    run.feed(until=90 + 24)
    assert run.kinds()[-1] == ("checkin_due", "post_incident_checkin")
    run.feed(until=400)
    assert run.kinds().count(("checkin_due", "post_incident_checkin")) == 1


def test_a_checkin_says_whether_a_promise_was_broken_and_names_the_incidents():
    late = Run().feed(
        placed(deliver_by=72),
        shipped(at=10),
        scan(at=20, status="in_transit"),
        scan(at=90, status="delivered"),
        until=400,
    )
    checkin = late.emitted[-1].data
    assert checkin["kind"] == "post_incident_checkin"
    assert checkin["facts"]["promise_broken"] is True
    opened = {e.data["incident_id"] for e in late.emitted if e.data["kind"] == "delivery_late"}
    assert set(checkin["facts"]["incident_ids"]) >= opened and opened

    # A failed attempt, then the delivery on time: an incident, no promise broken.
    on_time = Run().feed(
        placed(deliver_by=200),
        shipped(at=10),
        scan(at=30, status="attempt_failed"),
        scan(at=60, status="delivered"),
        until=400,
    )
    checkin = on_time.emitted[-1].data
    assert checkin["kind"] == "post_incident_checkin"
    assert checkin["facts"]["promise_broken"] is False
    assert checkin["facts"]["incident_ids"]


def test_no_checkin_for_an_order_without_incident():
    run = Run().feed(placed(), shipped(at=10), scan(at=50, status="delivered"), until=400)
    assert run.kinds() == []


def test_duplicate_event_ids_have_no_effect():
    events = [placed(deliver_by=200), shipped(at=10), scan(at=30, status="attempt_failed")]
    once = Run().feed(*events, until=31)
    twice = Run().feed(*events, *events, until=31)
    assert [e.id for e in twice.emitted] == [e.id for e in once.emitted]


def test_repeated_identical_status_does_not_update_but_a_new_one_does():
    run = Run().feed(
        placed(deliver_by=200),
        shipped(at=10),
        scan(at=30, status="exception", substatus="weather_delay"),
        until=31,
    )
    run.feed(scan(at=30, status="exception", substatus="weather_delay"), until=32)
    assert run.kinds() == [("opened", "carrier_exception")]
    run.feed(scan(at=40, status="exception", substatus="lost"), until=41)
    assert run.kinds()[-1] == ("updated", "carrier_exception")
    assert run.emitted[-1].data["severity"] == "critical"


def test_order_with_two_shipments_is_delivered_when_all_items_are():
    items = [("sku-1", 1), ("sku-2", 1)]
    run = Run().feed(
        placed(deliver_by=72, items=items),
        shipped(at=10, shipment_id="s-1", items=[("sku-1", 1)]),
        shipped(at=11, shipment_id="s-2", items=[("sku-2", 1)]),
        scan(at=40, status="delivered", shipment_id="s-1"),
        scan(at=41, status="in_transit", shipment_id="s-2"),
        until=80,
    )
    assert run.kinds() == [("opened", "delivery_late")]
    run.feed(scan(at=81, status="delivered", shipment_id="s-2"), until=82)
    assert run.kinds()[-1] == ("resolved", "delivery_late")


def test_tracking_is_ordered_by_checkpoint_not_arrival():
    # `delivered` (checkpoint 50) arrives before an older in_transit scan (checkpoint 30).
    run = Run().feed(
        placed(deliver_by=72),
        shipped(at=10),
        scan(at=50, status="delivered"),
        scan(at=30, status="in_transit", arrives=55),
        until=200,
    )
    assert run.kinds() == []


def test_incident_ids_are_stable_and_event_ids_derived_from_cause():
    a = Run().feed(placed(ship_by=24), until=30)
    b = Run().feed(placed(ship_by=24), until=31)
    assert a.emitted[0].data["incident_id"] == b.emitted[0].data["incident_id"]
    assert a.emitted[0].id == b.emitted[0].id
    assert a.emitted[0].time == b.emitted[0].time  # the promise, not the moment we noticed


def test_incident_carries_evidence_explanation_and_order_context():
    run = Run().feed(
        placed(deliver_by=72),
        shipped(at=10, estimate=60),
        scan(at=20, status="in_transit", estimate=100),
        until=80,
    )
    late = [e for e in run.emitted if e.data["kind"] == "delivery_late"][0]
    assert late.data["customer_id"] == "c-1"
    assert late.data["explanation"].startswith("Order o-1 was not delivered")
    assert late.data["evidence"]
    assert late.data["order"]["carrier"] == "DHL"
    assert late.data["facts"]["delay_days"] == 2
    assert late.data["order"]["estimated_delivery_at"].startswith("2026-03-06T12:00")


def test_a_late_fact_that_disproves_an_incident_retracts_it():
    # The shipment (dispatched at 10 h) reaches us only after the ship-by promise (24 h).
    run = Run().feed(placed(ship_by=24), until=30)
    assert run.kinds() == [("opened", "dispatch_late")]
    run.feed(shipped(at=10), until=31)
    assert run.kinds()[-1] == ("resolved", "dispatch_late")
    assert run.emitted[-1].data["resolution"] == "retracted"


def test_a_fact_dated_after_the_watermark_takes_effect_when_time_reaches_it():
    from services.orders_watcher.domain.rules import DetectionConfig, next_deadline
    from tests.unit.orders_watcher.timeline import h, message

    run = Run()
    events = [placed(deliver_by=200), shipped(at=10), scan(at=30, status="attempt_failed")]
    for i, event in enumerate(events):
        # The watermark is held at 20 h by another partition while these arrive.
        outcome = run.watcher.handle_event(run.state, message(event, i), event, h(20))
        run.state = outcome.state
        assert outcome.records == [] or event is not events[-1]
    assert next_deadline(run.state, h(20), DetectionConfig()) == h(30)
    outcome = run.watcher.handle_tick(run.state, h(30))
    assert [r.event.data["kind"] for r in outcome.records] == ["delivery_failed"]


def _held_at(watermark: float, *events: CloudEvent) -> Run:
    """Feed events while the watermark is held at `watermark` hours (another partition
    lags), then let time run through every deadline the watcher asks for."""
    from tests.unit.orders_watcher.timeline import h, message

    run = Run()
    for i, event in enumerate(events):
        outcome = run.watcher.handle_event(run.state, message(event, i), event, h(watermark))
        run.state, run.deadline = outcome.state, outcome.deadline
        run.emitted += [r.event for r in outcome.records]
    return run


def test_a_delivery_dated_after_the_promise_does_not_count_before_its_time():
    # Read while the watermark is at 20 h: at 20 h the order is neither delivered nor
    # late. The promise (72 h) breaks first, then the delivery (90 h) resolves it.
    run = _held_at(
        20,
        placed(deliver_by=72),
        shipped(at=10),
        scan(at=30, status="in_transit"),
        scan(at=90, status="delivered"),
    )
    assert run.kinds() == []
    run.feed(until=80)
    assert run.kinds() == [("opened", "delivery_late")]
    assert run.emitted[-1].time.isoformat().startswith("2026-03-05T08:00")  # the promise
    run.feed(until=120)
    assert run.kinds()[1] == ("resolved", "delivery_late")


def test_a_dispatch_and_a_refund_dated_later_wait_for_their_time_too():
    dispatched_late = _held_at(5, placed(ship_by=24), shipped(at=30))
    assert dispatched_late.kinds() == []
    dispatched_late.feed(until=26)
    assert dispatched_late.kinds() == [("opened", "dispatch_late")]

    refunded_late = _held_at(
        5,
        placed(),
        shipped(at=10),
        scan(at=40, status="delivered"),
        return_event("received", at=50),
        return_event("refunded", at=50 + 24 * 7),
    )
    assert refunded_late.kinds() == []
    refunded_late.feed(until=50 + 24 * 6)
    assert ("opened", "refund_late") in refunded_late.kinds()
    assert ("resolved", "refund_late") not in refunded_late.kinds()


def test_a_state_read_back_from_the_table_tells_nothing_new():
    # Between records the state may leave memory (the table, another worker): the facts
    # then come back from JSON, with another tzinfo object than the event gave them.
    from services.orders_watcher.domain.model import decode_state, encode_state

    events = [
        placed(deliver_by=72),
        shipped(at=10, estimate=60),
        scan(at=20, status="in_transit", estimate=100),
        scan(at=30, status="exception", substatus="lost"),
    ]
    kept = Run().feed(*events, until=80)
    stored = Run()
    for event in events:
        stored.feed(event)
        assert stored.state is not None
        stored.state = decode_state(encode_state(stored.state))
    stored.feed(until=80)
    assert stored.kinds() == kept.kinds()
    assert ("updated", "delivery_late") not in stored.kinds()
