"""Recording an input event's facts into the order state (no decisions here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common import schemas
from services.orders_watcher.domain.model import Checkpoint, OrderFacts, OrderItem, OrderState

ORDER_SCOPED = (
    schemas.ShipmentCreated,
    schemas.ShipmentTrackingUpdated,
    schemas.ReturnRequested,
    schemas.ReturnReceived,
    schemas.ReturnRefunded,
    schemas.OrderCancelled,
)


def needs_order(payload: Any) -> bool:
    """Facts that mean nothing without their order (held until order.placed arrives)."""
    return isinstance(payload, ORDER_SCOPED)


def apply(state: OrderState, payload: Any, event_id: str, event_time: datetime) -> None:
    """Record what the event says. Idempotence is the caller's (by event id)."""
    state.remember(event_id)
    if state.last_event_at is None or event_time > state.last_event_at:
        state.last_event_at = event_time
    match payload:
        case schemas.OrderPlaced():
            state.order = _order_facts(payload, event_id, event_time)
        case schemas.OrderCancelled():
            if state.cancelled_at is None or event_time < state.cancelled_at:
                state.cancelled_at = event_time
                state.cancelled_by = payload.cancelled_by
                state.cancelled_event_id = event_id
        case schemas.ShipmentCreated():
            shipment = state.shipment(payload.shipment_id)
            shipment.created_at = event_time
            shipment.created_event_id = event_id
            shipment.carrier = payload.carrier
            shipment.tracking_number = payload.tracking_number
            shipment.tracking_url = payload.tracking_url
            for item in payload.items:
                shipment.items[item.sku] = shipment.items.get(item.sku, 0) + item.quantity
            shipment.initial_estimate = payload.estimated_delivery_at
        case schemas.ShipmentTrackingUpdated():
            shipment = state.shipment(payload.shipment_id)
            shipment.add(
                Checkpoint(
                    at=payload.checkpoint_at,
                    status=payload.status.value,
                    substatus=payload.substatus,
                    location=payload.location,
                    estimated_delivery_at=payload.estimated_delivery_at,
                    event_id=event_id,
                )
            )
        case schemas.ReturnRequested():
            ret = state.return_(payload.return_id)
            ret.requested_at = event_time
            ret.reason = payload.reason.value
        case schemas.ReturnReceived():
            ret = state.return_(payload.return_id)
            ret.received_at = event_time
            ret.received_event_id = event_id
        case schemas.ReturnRefunded():
            ret = state.return_(payload.return_id)
            ret.refunded_at = event_time
            ret.refunded_event_id = event_id
        case _:
            raise TypeError(f"orders_watcher does not handle {type(payload).__name__}")


def _order_facts(payload: schemas.OrderPlaced, event_id: str, event_time: datetime) -> OrderFacts:
    return OrderFacts(
        customer_id=payload.customer_id,
        placed_at=event_time,
        placed_event_id=event_id,
        currency=payload.currency,
        total=str(payload.total),
        items=tuple(
            OrderItem(sku=i.sku, name=i.name, quantity=i.quantity, unit_price=str(i.unit_price))
            for i in payload.items
        ),
        shipping_method=payload.shipping_method.value,
        promised_ship_by=payload.promised_ship_by,
        promised_delivery_by=payload.promised_delivery_by,
    )
