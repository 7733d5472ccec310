"""A small shop history for risk_detector tests: a few customers, each meant to end in
one kind of decision, as CloudEvents in event-time order (unit and integration tests).

- c-lapse orders every 5 days, then has a lost parcel, a complaint and NPS 2 (score
  ~65, below the check-in) and stops ordering: just past twice the usual gap (day 25)
  the silence adds 20 points and a `churn_risk` check-in must follow, with no further
  fact about the customer ever arriving.
- c-return asks to return three orders, two for merchant-fault reasons: two apologies
  and a `serial_returns` check-in.
- c-vip spends 1,500 and suffers two lost parcels, a complaint and NPS 1 (score > 85):
  a hand-off to a human, and the automated check-in waits for the agent.
- c-clock keeps ordering every two days until day 40, so event time moves on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from common.envelope import CloudEvent, new_event
from common.topics import CUSTOMERS, FEEDBACK, INCIDENTS, ORDERS, RETURNS

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
LAPSE_CHECK = T0 + timedelta(days=25, seconds=1)


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def order(
    customer: str, order_id: str, day: float, total: str = "40.00"
) -> tuple[str, str, CloudEvent]:
    placed = at(day)
    return (
        ORDERS,
        order_id,
        new_event(
            type="order.placed",
            source="/shop/orders",
            subject=order_id,
            id=f"placed-{order_id}",
            time=placed,
            data={
                "order_id": order_id,
                "customer_id": customer,
                "currency": "EUR",
                "total": total,
                "items": [{"sku": "sku-1", "name": "Mug", "quantity": 1, "unit_price": total}],
                "shipping_method": "standard",
                "promised_ship_by": (placed + timedelta(days=1)).isoformat(),
                "promised_delivery_by": (placed + timedelta(days=4)).isoformat(),
                "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
            },
        ),
    )


def return_requested(
    customer: str, order_id: str, return_id: str, reason: str, day: float
) -> tuple[str, str, CloudEvent]:
    return (
        RETURNS,
        order_id,
        new_event(
            type="return.requested",
            source="/shop/returns",
            subject=order_id,
            id=f"return-{return_id}",
            time=at(day),
            data={
                "return_id": return_id,
                "order_id": order_id,
                "customer_id": customer,
                "items": [{"sku": "sku-1", "quantity": 1, "reason": reason}],
                "reason": reason,
            },
        ),
    )


def feedback(
    customer: str, kind: str, score: int | None, day: float
) -> tuple[str, str, CloudEvent]:
    data: dict[str, Any] = {"customer_id": customer, "kind": kind}
    if score is not None:
        data["score"] = score
    return (
        FEEDBACK,
        customer,
        new_event(
            type="feedback.received",
            source="/shop/feedback",
            subject=customer,
            id=f"fb-{customer}-{kind}-{day}",
            time=at(day),
            data=data,
        ),
    )


def lost_parcel(customer: str, order_id: str, day: float) -> tuple[str, str, CloudEvent]:
    incident_id = f"inc-{order_id}"
    return (
        INCIDENTS,
        customer,
        new_event(
            type="incident.opened",
            source="/outreach/orders_watcher",
            subject=incident_id,
            id=f"{incident_id}-1-opened",
            time=at(day),
            data={
                "incident_id": incident_id,
                "revision": 1,
                "kind": "carrier_exception",
                "severity": "critical",
                "customer_id": customer,
                "order_id": order_id,
                "status": "open",
                "detected_at": at(day).isoformat(),
                "explanation": f"the carrier reports order {order_id} lost",
                "evidence": [f"tracking-{order_id}"],
                "facts": {"substatus": "lost"},
            },
        ),
    )


def upserted(customer: str, day: float, opt_in: bool) -> tuple[str, str, CloudEvent]:
    return (
        CUSTOMERS,
        customer,
        new_event(
            type="customer.upserted",
            source="/shop/customers",
            subject=customer,
            id=f"upsert-{customer}",
            time=at(day),
            data={
                "customer_id": customer,
                "first_name": "Alex",
                "locale": "en-US",
                "timezone": "Europe/Berlin",
                "marketing_opt_in": opt_in,
            },
        ),
    )


def history() -> list[tuple[str, str, CloudEvent]]:
    """(unprefixed topic, key, event), in event-time order."""
    events = [
        upserted("c-lapse", 0, True),
        upserted("c-return", 0, False),
        upserted("c-vip", 0, False),
    ]
    events += [order("c-lapse", f"o-lapse-{i}", 5 * i) for i in range(4)]  # days 0..15
    events += [order("c-return", f"o-ret-{i}", 1 + i) for i in range(3)]
    events += [order("c-vip", "o-vip-0", 2, total="900.00"), order("c-vip", "o-vip-1", 3, "600.00")]
    events += [order("c-clock", f"o-clock-{i}", 2 * i + 0.5) for i in range(21)]  # to day 40.5
    events += [
        return_requested("c-return", "o-ret-0", "r-0", "damaged", 6),
        return_requested("c-return", "o-ret-1", "r-1", "size_fit", 7),
        return_requested("c-return", "o-ret-2", "r-2", "wrong_item", 8),
        lost_parcel("c-vip", "o-vip-0", 9),
        lost_parcel("c-vip", "o-vip-1", 10),
        feedback("c-vip", "complaint", None, 11),
        feedback("c-vip", "nps", 1, 12),
        lost_parcel("c-lapse", "o-lapse-3", 18),
        feedback("c-lapse", "complaint", None, 20),
        feedback("c-lapse", "nps", 2, 21),
    ]
    return sorted(events, key=lambda e: e[2].time)
