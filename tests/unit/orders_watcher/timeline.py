"""Build order timelines as CloudEvents and run them through the watcher's handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from common.envelope import CloudEvent, new_event
from common.kafka import InputMessage
from common.topics import Topics
from services.orders_watcher.domain.model import OrderState
from services.orders_watcher.domain.rules import DetectionConfig
from services.orders_watcher.handlers import OrdersWatcher

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TOPIC_OF = {
    "order": "commerce.orders",
    "shipment": "commerce.shipments",
    "return": "commerce.returns",
}


Moment = float | datetime  # hours after T0, or an absolute time


def h(moment: Moment) -> datetime:
    return moment if isinstance(moment, datetime) else T0 + timedelta(hours=moment)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def placed(
    order_id: str = "o-1",
    *,
    method: str = "standard",
    ship_by: Moment = 24,
    deliver_by: Moment = 72,
    at: Moment = 0,
    items: list[tuple[str, int]] | None = None,
) -> CloudEvent:
    items = items or [("sku-1", 1)]
    return _event(
        "order.placed",
        order_id,
        at,
        {
            "order_id": order_id,
            "customer_id": "c-1",
            "currency": "EUR",
            "total": "59.90",
            "items": [
                {"sku": s, "name": f"Item {s}", "quantity": q, "unit_price": "29.95"}
                for s, q in items
            ],
            "shipping_method": method,
            "promised_ship_by": iso(h(ship_by)),
            "promised_delivery_by": iso(h(deliver_by)),
            "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
        },
    )


def cancelled(order_id: str = "o-1", *, at: Moment, by: str = "customer") -> CloudEvent:
    return _event(
        "order.cancelled",
        order_id,
        at,
        {"order_id": order_id, "reason": "changed mind", "cancelled_by": by},
    )


def shipped(
    order_id: str = "o-1",
    *,
    at: Moment,
    shipment_id: str = "s-1",
    estimate: Moment | None = None,
    items: list[tuple[str, int]] | None = None,
) -> CloudEvent:
    items = items or [("sku-1", 1)]
    data: dict[str, Any] = {
        "shipment_id": shipment_id,
        "order_id": order_id,
        "carrier": "DHL",
        "tracking_number": "JJD000390007788123",
        "tracking_url": "https://track.example/JJD",
        "items": [{"sku": s, "quantity": q} for s, q in items],
    }
    if estimate is not None:
        data["estimated_delivery_at"] = iso(h(estimate))
    return _event("shipment.created", order_id, at, data)


def scan(
    order_id: str = "o-1",
    *,
    at: Moment,
    status: str,
    shipment_id: str = "s-1",
    substatus: str | None = None,
    estimate: Moment | None = None,
    arrives: Moment | None = None,
) -> CloudEvent:
    data: dict[str, Any] = {
        "shipment_id": shipment_id,
        "order_id": order_id,
        "status": status,
        "checkpoint_at": iso(h(at)),
    }
    if substatus:
        data["substatus"] = substatus
    if estimate is not None:
        data["estimated_delivery_at"] = iso(h(estimate))
    return _event(
        "shipment.tracking_updated",
        order_id,
        arrives if arrives is not None else at,
        data,
        suffix=f"{shipment_id}-{status}-{at}",
    )


def return_event(
    kind: str, order_id: str = "o-1", *, at: Moment, return_id: str = "r-1"
) -> CloudEvent:
    data: dict[str, Any] = {"return_id": return_id, "order_id": order_id}
    if kind == "requested":
        data.update(
            customer_id="c-1",
            reason="damaged",
            items=[{"sku": "sku-1", "quantity": 1, "reason": "damaged"}],
        )
    if kind == "refunded":
        data.update(amount="29.95", currency="EUR")
    return _event(f"return.{kind}", order_id, at, data)


def _event(
    type_: str, order_id: str, at: Moment, data: dict[str, Any], suffix: str = ""
) -> CloudEvent:
    return new_event(
        type=type_,
        source="/test",
        subject=order_id,
        data=data,
        time=h(at),
        id=f"{type_}:{order_id}:{suffix or at}",
    )


def message(event: CloudEvent, offset: int = 0) -> InputMessage:
    topic = TOPIC_OF[event.type.split(".")[0]]
    return InputMessage(
        topic=topic,
        partition=0,
        offset=offset,
        key=event.subject.encode() if event.subject else None,
        value=event.to_bytes(),
    )


@dataclass
class Run:
    """Feeds events in arrival order, firing deadlines in between as the live watcher would."""

    config: DetectionConfig = field(default_factory=DetectionConfig)
    state: OrderState | None = None
    emitted: list[CloudEvent] = field(default_factory=list)
    deadline: datetime | None = None
    now: datetime = T0 - timedelta(days=1)

    def __post_init__(self) -> None:
        self.watcher = OrdersWatcher(self.config, Topics())

    def _advance(self, now: datetime, *, inclusive: bool = True) -> None:
        """Act on the deadlines up to `now` (a record at `now` is handled before a
        deadline at the same moment, as the worker does: `inclusive=False`)."""
        while (
            self.state is not None
            and self.deadline is not None
            and (self.deadline <= now if inclusive else self.deadline < now)
        ):
            outcome = self.watcher.handle_tick(self.state, self.deadline)
            self.state, self.deadline = outcome.state, outcome.deadline
            self.emitted += [r.event for r in outcome.records]

    def feed(self, *events: CloudEvent, until: float | None = None) -> Run:
        for i, event in enumerate(events):
            # Like the event clock: time follows the events and never goes backwards.
            self.now = max(self.now, event.time)
            self._advance(self.now, inclusive=False)
            outcome = self.watcher.handle_event(self.state, message(event, i), event, self.now)
            self.state, self.deadline = outcome.state, outcome.deadline
            self.emitted += [r.event for r in outcome.records]
        if until is not None:
            self.now = max(self.now, h(until))
            self._advance(self.now)
        return self

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.type.split(".")[1], e.data["kind"]) for e in self.emitted]

    def final(self) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for e in self.emitted:
            out[e.data["incident_id"]] = (e.data["kind"], e.data["status"])
        return out
