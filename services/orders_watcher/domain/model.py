"""Per-order state, kept in the watcher's table and rebuilt from nothing but events.

The state records *facts* (what the shop and the carrier said, with their times); the
incidents are derived from those facts by `rules.evaluate`, so that the order in which
the facts arrived cannot change what is detected.

The classes are msgspec structs: the rules read and change them on every record, and
a state is parsed and written as JSON whenever it leaves memory, so their cost is per
record (pydantic models cost about ten times as much for both). `encode_state` and
`decode_state` are the state's JSON form; it is the one pydantic models wrote before
(same field names, RFC 3339 times, unknown fields ignored), so stored states still load.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime

import msgspec
from msgspec import field


class _State(msgspec.Struct, kw_only=True, gc=False):
    """A state holds nothing the garbage collector tracks: its structs are untracked
    (`gc=False`: they form trees, never cycles) and its sequences are tuples of untracked
    things (which the collector untracks the first time it sees them), not lists. The
    watcher keeps thousands of recent states in memory (adapters/state_cache.py); tracked,
    they made every full collection walk them, a pause of 60-120 ms on the benchmark's
    machine every few seconds under load (docs/performance.md, run O)."""


class Checkpoint(_State, kw_only=True):
    at: datetime
    status: str
    substatus: str | None = None
    location: str | None = None
    estimated_delivery_at: datetime | None = None
    event_id: str


class ShipmentState(_State, kw_only=True):
    shipment_id: str
    created_at: datetime | None = None
    created_event_id: str | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    items: dict[str, int] = field(default_factory=dict)
    initial_estimate: datetime | None = None
    checkpoints: tuple[Checkpoint, ...] = ()

    # Checkpoints are kept in event order, (at, event_id), whatever order they came in:
    # the rules read them in that order on every record.

    def __post_init__(self) -> None:
        # A state stored before the order was kept holds them in arrival order.
        self.checkpoints = tuple(sorted(self.checkpoints, key=_event_order))

    def add(self, checkpoint: Checkpoint) -> None:
        points = self.checkpoints
        at = bisect_right(points, _event_order(checkpoint), key=_event_order)
        self.checkpoints = (*points[:at], checkpoint, *points[at:])

    def delivered_at(self) -> datetime | None:
        """The first delivery scan's time."""
        for cp in self.checkpoints:
            if cp.status == "delivered":
                return cp.at
        return None


def _event_order(cp: Checkpoint) -> tuple[datetime, str]:
    return cp.at, cp.event_id


class ReturnState(_State, kw_only=True):
    return_id: str
    requested_at: datetime | None = None
    received_at: datetime | None = None
    received_event_id: str | None = None
    refunded_at: datetime | None = None
    refunded_event_id: str | None = None
    reason: str | None = None


class OrderItem(_State, kw_only=True):
    """A line of the order, as placed (stored as the JSON object it was always stored as)."""

    sku: str
    name: str
    quantity: int
    unit_price: str


class OrderFacts(_State, kw_only=True):
    customer_id: str
    placed_at: datetime
    placed_event_id: str
    currency: str
    total: str
    items: tuple[OrderItem, ...]
    shipping_method: str
    promised_ship_by: datetime
    promised_delivery_by: datetime


class EmittedIncident(_State, kw_only=True):
    """What we last told downstream about one incident (to emit only transitions)."""

    kind: str
    revision: int
    status: str
    fingerprint: str


class HeldEvent(_State, kw_only=True):
    """An event that arrived before its order: kept until `release_at`, then dead-lettered."""

    event_id: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str  # the original bytes, latin-1 decoded, so they can be dead-lettered as-is
    release_at: datetime


class OrderState(_State, kw_only=True):
    order_id: str
    order: OrderFacts | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancelled_event_id: str | None = None
    shipments: dict[str, ShipmentState] = field(default_factory=dict)
    returns: dict[str, ReturnState] = field(default_factory=dict)
    seen_event_ids: tuple[str, ...] = ()
    emitted: dict[str, EmittedIncident] = field(default_factory=dict)
    checkin_emitted: bool = False
    held: tuple[HeldEvent, ...] = ()
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
        seen = (*self.seen_event_ids, event_id)
        self.seen_event_ids = seen[len(seen) - limit :] if len(seen) > limit else seen

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
        delivered: dict[str, int] = {}
        moments: list[datetime] = []
        # A shipment whose items we never learned counts as the whole order.
        unknown_items = False
        for shipment in self.shipments.values():
            at = shipment.delivered_at()
            if at is None:
                continue
            moments.append(at)
            unknown_items = unknown_items or not shipment.items
            for sku, qty in shipment.items.items():
                delivered[sku] = delivered.get(sku, 0) + qty
        if not moments:
            return None
        if not unknown_items:
            ordered: dict[str, int] = {}
            for item in self.order.items:
                ordered[item.sku] = ordered.get(item.sku, 0) + item.quantity
            if any(delivered.get(sku, 0) < qty for sku, qty in ordered.items()):
                return None
        return max(moments)

    def dispatched_at(self) -> datetime | None:
        times = [s.created_at for s in self.shipments.values() if s.created_at is not None]
        return min(times) if times else None


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(OrderState)


def encode_state(state: OrderState) -> bytes:
    """The state's JSON (as stored in the `orders` table)."""
    return _ENCODER.encode(state)


def decode_state(raw: bytes) -> OrderState:
    """A state from its JSON; raises msgspec.ValidationError (a ValueError) if it is not
    one."""
    return _DECODER.decode(raw)
