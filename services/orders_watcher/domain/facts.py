"""Recording an input event's facts into the order state (no decisions here): one
function per event type, in `FACTS`, the watcher's dispatch table."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from common import schemas
from services.orders_watcher.domain.model import Checkpoint, OrderFacts, OrderItem, OrderState

#: Records one event's facts: (state, the event's parsed payload, its id, its time).
Apply = Callable[[OrderState, Any, str, datetime], None]


def needs_order(event_type: str) -> bool:
    """Facts that mean nothing without their order (held until order.placed arrives)."""
    return event_type != "order.placed"


def _remember(state: OrderState, event_id: str, event_time: datetime) -> None:
    state.remember(event_id)
    if state.last_event_at is None or event_time > state.last_event_at:
        state.last_event_at = event_time


def _placed(state: OrderState, p: schemas.OrderPlaced, event_id: str, at: datetime) -> None:
    state.order = OrderFacts(
        customer_id=p.customer_id,
        placed_at=at,
        placed_event_id=event_id,
        currency=p.currency,
        total=str(p.total),
        items=tuple(
            OrderItem(sku=i.sku, name=i.name, quantity=i.quantity, unit_price=str(i.unit_price))
            for i in p.items
        ),
        shipping_method=p.shipping_method.value,
        promised_ship_by=p.promised_ship_by,
        promised_delivery_by=p.promised_delivery_by,
    )


def _cancelled(state: OrderState, p: schemas.OrderCancelled, event_id: str, at: datetime) -> None:
    if state.cancelled_at is None or at < state.cancelled_at:
        state.cancelled_at = at
        state.cancelled_by = p.cancelled_by
        state.cancelled_event_id = event_id


def _shipped(state: OrderState, p: schemas.ShipmentCreated, event_id: str, at: datetime) -> None:
    shipment = state.shipment(p.shipment_id)
    shipment.created_at = at
    shipment.created_event_id = event_id
    shipment.carrier = p.carrier
    shipment.tracking_number = p.tracking_number
    shipment.tracking_url = p.tracking_url
    for item in p.items:
        shipment.items[item.sku] = shipment.items.get(item.sku, 0) + item.quantity
    shipment.initial_estimate = p.estimated_delivery_at


def _tracked(
    state: OrderState, p: schemas.ShipmentTrackingUpdated, event_id: str, at: datetime
) -> None:
    state.shipment(p.shipment_id).add(
        Checkpoint(
            at=p.checkpoint_at,
            status=p.status.value,
            substatus=p.substatus,
            location=p.location,
            estimated_delivery_at=p.estimated_delivery_at,
            event_id=event_id,
        )
    )


def _return_requested(
    state: OrderState, p: schemas.ReturnRequested, event_id: str, at: datetime
) -> None:
    ret = state.return_(p.return_id)
    ret.requested_at = at
    ret.reason = p.reason.value


def _return_received(
    state: OrderState, p: schemas.ReturnReceived, event_id: str, at: datetime
) -> None:
    ret = state.return_(p.return_id)
    ret.received_at = at
    ret.received_event_id = event_id


def _refunded(state: OrderState, p: schemas.ReturnRefunded, event_id: str, at: datetime) -> None:
    ret = state.return_(p.return_id)
    ret.refunded_at = at
    ret.refunded_event_id = event_id


def _recording(apply: Apply) -> Apply:
    """`apply`, after the event is remembered (idempotence is the caller's, by event id)."""

    def recorded(state: OrderState, payload: Any, event_id: str, event_time: datetime) -> None:
        _remember(state, event_id, event_time)
        apply(state, payload, event_id, event_time)

    return recorded


_BY_TYPE: dict[str, Apply] = {
    "order.placed": _placed,
    "order.cancelled": _cancelled,
    "shipment.created": _shipped,
    "shipment.tracking_updated": _tracked,
    "return.requested": _return_requested,
    "return.received": _return_received,
    "return.refunded": _refunded,
}
FACTS: dict[str, Apply] = {event_type: _recording(a) for event_type, a in _BY_TYPE.items()}
