"""The simulated shop: deterministic, valid per SPEC §3, realistic in its mix."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from common.schemas import parse_input
from simulator.carriers import PATTERNS
from simulator.shop import Config, Shop

SMALL = dict(customers=60, orders_per_hour=12, duration=timedelta(days=3))


def run(**overrides):
    return list(Shop(Config(**{**SMALL, **overrides})).events())


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b, c = run(seed=4), run(seed=4), run(seed=5)
    assert [e.value() for e in a] == [e.value() for e in b]
    assert [e.value() for e in a] != [e.value() for e in c]


def test_every_event_is_valid_on_its_topic_with_the_aggregate_as_key():
    for e in run(seed=6):
        payload = parse_input(e.event, e.topic)
        expected_key = (
            getattr(payload, "order_id", None)
            if e.topic in ("commerce.orders", "commerce.shipments", "commerce.returns")
            else payload.customer_id
        )
        assert e.key == expected_key
        assert e.event.subject == e.key


def test_customers_are_known_before_their_first_order():
    seen: set[str] = set()
    for e in run(seed=7):
        if e.event.type == "customer.upserted":
            seen.add(e.key)
        if e.event.type == "order.placed":
            assert e.event.data["customer_id"] in seen


def test_the_story_is_causal_and_the_mix_is_realistic():
    events = run(seed=8, customers=200, orders_per_hour=40)
    placed = {e.key: e.event.time for e in events if e.event.type == "order.placed"}
    statuses = Counter()
    for e in events:
        if e.event.type == "shipment.created":
            assert e.event.time > placed[e.key]
            carrier, number = e.event.data["carrier"], e.event.data["tracking_number"]
            assert PATTERNS[carrier].match(number), (carrier, number)
        if e.event.type == "shipment.tracking_updated":
            statuses[e.event.data["status"]] += 1
    orders = len(placed)
    assert statuses["delivered"] > 0.7 * orders
    for unusual in ("attempt_failed", "available_for_pickup", "exception"):
        assert 0 < statuses[unusual] < 0.2 * orders


def test_bounded_by_max_events():
    assert len(run(seed=9, max_events=250)) == 250
