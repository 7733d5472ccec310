"""A shop's story replayed on the real broker decides the same, however it is replayed.

The same four days (late scans, duplicates, customers in several time zones) published
through the whole pipeline as fast as the broker takes them with one watcher, and paced
with a second watcher joining when a third of the story is out (the group rebalances in
the middle of the replay and half the orders' state moves to the newcomer): the same
incidents, requests and hand-offs (by content), the same decisions and suppressions in
outreach's ledger, the same messages accepted by the provider doubles (with their
counts), no orphan dead letter (every shipment's order is on the broker before it), and
no order judged late that was on time. Only outside effects are compared: the records on
the topics, the ledger's rows, what the doubles accepted.

More combinations by hand: `python -m tests.replay --watchers 1,2,2 --speed 0,0,20000
--join-at 0.3 --runs 3`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from simulator.shop import Emission
from tests.replay.harness import Replay, replay, story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def promises_kept(emissions: list[Emission]) -> tuple[set[str], set[str]]:
    """(orders shipped by their promised dispatch, orders delivered by their promised
    delivery), from the story itself."""
    ship_by: dict[str, datetime] = {}
    deliver_by: dict[str, datetime] = {}
    shipped: dict[str, datetime] = {}
    parcels: dict[str, set[str]] = {}
    delivered: dict[str, datetime] = {}  # per shipment: its first delivery scan
    for emission in emissions:
        event = emission.event
        if event is None:
            continue
        data: dict[str, Any] = event.data
        order_id = data.get("order_id")
        if event.type == "order.placed":
            ship_by[order_id] = datetime.fromisoformat(data["promised_ship_by"])
            deliver_by[order_id] = datetime.fromisoformat(data["promised_delivery_by"])
        elif event.type == "shipment.created":
            shipped[order_id] = min(event.time, shipped.get(order_id, event.time))
            parcels.setdefault(order_id, set()).add(data["shipment_id"])
        elif event.type == "shipment.tracking_updated" and data.get("status") == "delivered":
            at = datetime.fromisoformat(data["checkpoint_at"])
            shipment = data["shipment_id"]
            delivered[shipment] = min(at, delivered.get(shipment, at))
    on_time_dispatch = {o for o, at in shipped.items() if o in ship_by and at <= ship_by[o]}
    # An order is delivered when its last parcel is.
    on_time_delivery = {
        o
        for o, ids in parcels.items()
        if o in deliver_by
        and all(s in delivered for s in ids)
        and max(delivered[s] for s in ids) <= deliver_by[o]
    }
    return on_time_dispatch, on_time_delivery


def opened(run: Replay, kind: str) -> set[str]:
    return {
        order_id
        for (type_, _time, _id, k, _revision, order_id) in run.incidents
        if type_ == "incident.opened" and k == kind
    }


def test_a_story_gives_the_same_outcomes_fast_and_paced(kafka_bootstrap, tmp_path):
    emissions = story(customers=150, days=4, orders_per_hour=4.0)
    span = (emissions[-1].at - emissions[0].at).total_seconds()
    late_scans = sum(
        1 for e in emissions if e.event is not None and e.event.time < e.at.replace(microsecond=0)
    )
    orders = sum(1 for e in emissions if e.event is not None and e.event.type == "order.placed")
    assert orders > 350 and late_scans > 15  # the story has what it should

    fast = replay(kafka_bootstrap, emissions, tmp_path / "fast")
    runs = {
        "paced, two watchers, one joining": replay(
            kafka_bootstrap,
            emissions,
            tmp_path / "paced",
            speed=span / 15,
            watchers=2,
            join_at=0.3,
        )
    }
    assert len(fast.incidents) > 100 and len(fast.requests) > 100
    assert sum(fast.messages.values()) > 50
    suppressed = {row[5] for row in fast.decisions if row[4] == "suppressed"}
    # Decisions that depend on the order of what happened to a customer.
    assert "frequency_cap" in suppressed
    assert suppressed & {"already_resolved", "not_experienced"}
    assert fast.orphans == [], "orphan dead letters for orders on the broker"
    for name, run in runs.items():
        assert run.orphans == [], f"{name}: orphan dead letters for orders on the broker"
        differences = run.differences(fast)
        for kind, (only_here, fast_only) in differences.items():
            print(f"{name}: {kind}: {len(only_here)} only {name}, {len(fast_only)} only fast")
            for item in (only_here[:5], fast_only[:5]):
                print("  ", item)
        assert not differences, (name, sorted(differences))

    on_time_dispatch, on_time_delivery = promises_kept(emissions)
    assert not opened(fast, "dispatch_late") & on_time_dispatch
    assert not opened(fast, "delivery_late") & on_time_delivery
