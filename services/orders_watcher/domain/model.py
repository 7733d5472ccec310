"""Per-order state, kept in the watcher's table and rebuilt from nothing but events.

The state records *facts* (what the shop and the carrier said, with their times); the
incidents are derived from those facts by `rules.evaluate`, so that the order in which
the facts arrived cannot change what is detected.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _State(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Checkpoint(_State):
    at: datetime
    status: str
    substatus: str | None = None
    location: str | None = None
    estimated_delivery_at: datetime | None = None
    event_id: str


class ShipmentState(_State):
    shipment_id: str
    created_at: datetime | None = None
    created_event_id: str | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    items: dict[str, int] = Field(default_factory=dict)
    initial_estimate: datetime | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)

    def sorted_checkpoints(self) -> list[Checkpoint]:
        return sorted(self.checkpoints, key=lambda c: (c.at, c.event_id))

    def delivered_at(self) -> datetime | None:
        for cp in self.sorted_checkpoints():
            if cp.status == "delivered":
                return cp.at
        return None

    def latest_estimate(self) -> datetime | None:
        estimate = self.initial_estimate
        for cp in self.sorted_checkpoints():
            if cp.estimated_delivery_at is not None:
                estimate = cp.estimated_delivery_at
        return estimate

    def latest(self) -> Checkpoint | None:
        cps = self.sorted_checkpoints()
        return cps[-1] if cps else None


class ReturnState(_State):
    return_id: str
    requested_at: datetime | None = None
    received_at: datetime | None = None
    received_event_id: str | None = None
    refunded_at: datetime | None = None
    refunded_event_id: str | None = None
    reason: str | None = None


class OrderFacts(_State):
    customer_id: str
    placed_at: datetime
    placed_event_id: str
    currency: str
    total: str
    items: list[dict[str, Any]]
    shipping_method: str
    promised_ship_by: datetime
    promised_delivery_by: datetime


class EmittedIncident(_State):
    """What we last told downstream about one incident (to emit only transitions)."""

    kind: str
    revision: int
    status: str
    fingerprint: str


class HeldEvent(_State):
    """An event that arrived before its order: kept until `release_at`, then dead-lettered."""

    event_id: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str  # the original bytes, latin-1 decoded, so they can be dead-lettered as-is
    release_at: datetime


class OrderState(_State):
    order_id: str
    order: OrderFacts | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancelled_event_id: str | None = None
    shipments: dict[str, ShipmentState] = Field(default_factory=dict)
    returns: dict[str, ReturnState] = Field(default_factory=dict)
    seen_event_ids: list[str] = Field(default_factory=list)
    emitted: dict[str, EmittedIncident] = Field(default_factory=dict)
    checkin_emitted: bool = False
    held: list[HeldEvent] = Field(default_factory=list)
    last_event_at: datetime | None = None
    # The latest time the order was judged at. It is never judged at an earlier time
    # again (a worker reading a backlog judges at the backlog's time, which may lie
    # before what the previous owner already concluded): that could retract what was
    # rightly emitted.
    judged_at: datetime | None = None

    def judging_at(self, now: datetime) -> datetime:
        return now if self.judged_at is None or now >= self.judged_at else self.judged_at

    def seen(self, event_id: str) -> bool:
        return event_id in self.seen_event_ids

    def remember(self, event_id: str, limit: int = 500) -> None:
        self.seen_event_ids.append(event_id)
        if len(self.seen_event_ids) > limit:
            del self.seen_event_ids[: len(self.seen_event_ids) - limit]

    def shipment(self, shipment_id: str) -> ShipmentState:
        if shipment_id not in self.shipments:
            self.shipments[shipment_id] = ShipmentState(shipment_id=shipment_id)
        return self.shipments[shipment_id]

    def return_(self, return_id: str) -> ReturnState:
        if return_id not in self.returns:
            self.returns[return_id] = ReturnState(return_id=return_id)
        return self.returns[return_id]

    def delivered_at(self) -> datetime | None:
        """When every ordered item had been delivered (several shipments may share them)."""
        if self.order is None or not self.shipments:
            return None
        ordered: dict[str, int] = {}
        for item in self.order.items:
            ordered[item["sku"]] = ordered.get(item["sku"], 0) + int(item["quantity"])
        delivered: dict[str, int] = {}
        moments: list[datetime] = []
        for shipment in self.shipments.values():
            at = shipment.delivered_at()
            if at is None:
                continue
            moments.append(at)
            for sku, qty in shipment.items.items():
                delivered[sku] = delivered.get(sku, 0) + qty
        if not moments:
            return None
        complete = all(delivered.get(sku, 0) >= qty for sku, qty in ordered.items())
        # A shipment whose items we never learned counts as the whole order.
        unknown_items = any(
            not s.items and s.delivered_at() is not None for s in self.shipments.values()
        )
        return max(moments) if complete or unknown_items else None

    def dispatched_at(self) -> datetime | None:
        times = [s.created_at for s in self.shipments.values() if s.created_at is not None]
        return min(times) if times else None
