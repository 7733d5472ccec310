"""The traffic of a fault scenario: a shop's customers in many time zones, on every
channel, hit by a carrier incident at once — and, while their messages are under way,
some opt out, withdraw marketing consent, or see their incident resolved or revised.

Segments (each customer is in one):
- `day`: SMS, WhatsApp or email in a zone where it is day: sent at once;
- `night`: SMS in a zone where it is night: held for 08:00 local (after the run);
- `wake`: SMS whose own quiet hours end a minute or two into the run: held, then
  released — with the last look at the moment of sending;
- `checkin`: three size-fit returns → a marketing check-in with an offer (risk_detector),
  held like `wake`, marketing consent withdrawn for some while it waits.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from common.envelope import CloudEvent, new_event
from tests.e2e.stack import Shop

ZONES = (
    "Pacific/Kiritimati", "Pacific/Auckland", "Australia/Sydney", "Asia/Tokyo",
    "Asia/Shanghai", "Asia/Kolkata", "Asia/Dubai", "Europe/Moscow", "Europe/Berlin",
    "Europe/London", "Atlantic/Azores", "America/Sao_Paulo", "America/New_York",
    "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Anchorage",
    "Pacific/Honolulu",
)  # fmt: skip
TRIGGERS = ("attempt_failed", "lost", "available_for_pickup")


def local_hour(zone: str, at: datetime) -> float:
    local = at.astimezone(ZoneInfo(zone))
    return local.hour + local.minute / 60


def zones_where(at: datetime, low: float, high: float) -> list[str]:
    """Zones whose local time stays within [low, high) hours for the next two hours."""
    return [
        z
        for z in ZONES
        if low <= local_hour(z, at) < high and low <= local_hour(z, at + timedelta(hours=2)) < high
    ]


def night_zones(at: datetime) -> list[str]:
    found = [
        z
        for z in ZONES
        if _quiet(local_hour(z, at)) and _quiet(local_hour(z, at + timedelta(hours=2)))
    ]
    return found


def _quiet(hour: float) -> bool:
    return hour >= 21.5 or hour < 6


@dataclass
class Customer:
    customer_id: str
    first_name: str
    segment: str  # day | night | wake | checkin
    channel: str  # sms | whatsapp | email
    zone: str
    phone: str | None = None
    email: str | None = None
    marketing: bool = False
    quiet: tuple[str, str] = ("21:00", "08:00")  # local HH:MM, as preferences keeps it
    wakes_at: datetime | None = None  # when own quiet hours end (wake and checkin)
    orders: list[str] = field(default_factory=list)

    def address(self, channel: str) -> str | None:
        return self.email if channel == "email" else self.phone


@dataclass
class Storm:
    """A run's customers and the events that make their incidents."""

    run: str  # a prefix of every id, so a checker reads only this run
    customers: list[Customer]
    started: datetime
    triggers: dict[str, str] = field(default_factory=dict)  # order id → trigger
    revised: set[str] = field(default_factory=set)  # orders with a second, material event
    resolved: set[str] = field(default_factory=set)  # orders delivered after the incident

    @classmethod
    def build(
        cls,
        run: str,
        size: int,
        *,
        seed: int = 7,
        wake_s: float | None = None,
        night: bool = True,
        checkins: bool = False,
        now: datetime | None = None,
    ) -> Storm:
        """`size` customers: with `wake_s`, some whose quiet hours end about that many
        seconds from now (rounded up to the minute); with `night`, some where it is
        night; with `checkins`, some on their way to a marketing check-in."""
        rng = random.Random(seed)
        now = now or datetime.now(UTC)
        day, dark = zones_where(now, 9, 19), night_zones(now)
        assert day, "no daytime zone in the list"  # the list covers every hour
        customers: list[Customer] = []
        for i in range(size):
            segment = _segment(i, wake_s is not None, night and bool(dark), checkins)
            channel = "sms" if segment != "day" else ("sms", "whatsapp", "email")[i % 3]
            zone = rng.choice(dark if segment == "night" else day)
            number = f"+49151{rng.randrange(10**7, 10**8)}"
            customer = Customer(
                customer_id=f"{run}c{i:04d}",
                first_name=rng.choice(("Ada", "Bea", "Cem", "Dan", "Eli", "Fay", "Gus")),
                segment=segment,
                channel=channel,
                zone=zone,
                phone=number if channel != "email" else None,
                email=f"{run}c{i:04d}@example.com" if channel == "email" else None,
                marketing=segment == "checkin",
            )
            if segment in ("wake", "checkin"):
                assert wake_s is not None
                customer.quiet, customer.wakes_at = _quiet_until(now, zone, wake_s)
            customers.append(customer)
        storm = cls(run, customers, now)
        for customer in customers:
            orders = 3 if customer.segment == "checkin" else 1
            for j in range(orders):
                order_id = f"{customer.customer_id}-o{j}"
                customer.orders.append(order_id)
                if customer.segment == "wake":  # a failed attempt: it can be revised
                    storm.triggers[order_id] = "attempt_failed"
                elif customer.segment != "checkin":
                    storm.triggers[order_id] = TRIGGERS[len(storm.triggers) % 3]
        return storm

    # --- the events ------------------------------------------------------------------

    def customer_events(self) -> list[tuple[str, str, CloudEvent]]:
        at = self.started - timedelta(minutes=5)
        return [("commerce.customers", c.customer_id, _customer(c, at)) for c in self.customers]

    def order_events(self) -> list[tuple[str, str, CloudEvent]]:
        out = []
        placed = self.started - timedelta(days=3)
        for c in self.customers:
            for order_id in c.orders:
                out.append(("commerce.orders", order_id, _order(order_id, c, placed)))
                out.append(("commerce.shipments", order_id, _shipment(order_id, placed)))
        return out

    def trigger_events(self, at: datetime) -> list[tuple[str, str, CloudEvent]]:
        """The carrier incident: one tracking event per order (three size-fit returns
        per check-in customer)."""
        out = []
        for c in self.customers:
            if c.segment == "checkin":
                for k, order_id in enumerate(c.orders):
                    out.append(("commerce.returns", order_id, _return(order_id, c, at, k)))
                continue
            for order_id in c.orders:
                status = self.triggers[order_id]
                out.append(("commerce.shipments", order_id, _tracking(order_id, status, at)))
        return out

    def revise(self, order_ids: list[str], at: datetime) -> list[tuple[str, str, CloudEvent]]:
        """A second failed attempt: a material change (a new revision of the incident)."""
        self.revised.update(order_ids)
        return [
            ("commerce.shipments", o, _tracking(o, "attempt_failed", at, tag="again"))
            for o in order_ids
        ]

    def resolve(self, order_ids: list[str], at: datetime) -> list[tuple[str, str, CloudEvent]]:
        """The parcel is delivered after all: the incident resolves."""
        self.resolved.update(order_ids)
        return [("commerce.shipments", o, _tracking(o, "delivered", at)) for o in order_ids]

    def of(self, segment: str) -> list[Customer]:
        return [c for c in self.customers if c.segment == segment]

    def by_id(self) -> dict[str, Customer]:
        return {c.customer_id: c for c in self.customers}


def publish(shop: Shop, events: list[tuple[str, str, CloudEvent]]) -> None:
    for topic, key, event in events:
        value = event.to_bytes()
        shop.producer.send(
            shop.prefix + topic,
            key=key.encode(),
            value=value,
            headers=[("content-type", b"application/cloudevents+json")],
        )
    shop.producer.flush()


def _segment(i: int, wake: bool, night: bool, checkins: bool) -> str:
    cycle = ["day", "day", "day"]
    if night:
        cycle.append("night")
    if wake:
        cycle += ["wake", "wake"]
    if checkins and wake:
        cycle.append("checkin")
    return cycle[i % len(cycle)]


def _quiet_until(now: datetime, zone: str, wake_s: float) -> tuple[tuple[str, str], datetime]:
    """Quiet hours that began an hour ago and end on the first full minute at least
    `wake_s` from now: (start, end) as HH:MM local, and the end in UTC."""
    local = now.astimezone(ZoneInfo(zone))
    start = local - timedelta(hours=1)
    end = local + timedelta(seconds=wake_s)
    end = end.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return (f"{start:%H:%M}", f"{end:%H:%M}"), end.astimezone(UTC)


def _event(
    type_: str, subject: str, at: datetime, data: dict[str, Any], tag: str = ""
) -> CloudEvent:
    return new_event(
        type=type_,
        source="/shop/chaos",
        subject=subject,
        time=at,
        data=data,
        id=f"{type_}/{subject}/{tag or math.floor(at.timestamp() * 1000)}",
    )


def _customer(c: Customer, at: datetime) -> CloudEvent:
    data: dict[str, Any] = {
        "customer_id": c.customer_id,
        "first_name": c.first_name,
        "locale": "en-GB",
        "timezone": c.zone,
        "marketing_opt_in": c.marketing,
    }
    if c.phone:
        data["phone"] = c.phone
    if c.email:
        data["email"] = c.email
    return _event("customer.upserted", c.customer_id, at, data, tag="v1")


def _order(order_id: str, c: Customer, placed: datetime) -> CloudEvent:
    return _event(
        "order.placed",
        order_id,
        placed,
        {
            "order_id": order_id,
            "customer_id": c.customer_id,
            "currency": "EUR",
            "total": "49.90",
            "items": [{"sku": "MUG-1", "name": "Mug", "quantity": 1, "unit_price": "49.90"}],
            "shipping_method": "standard",
            "promised_ship_by": (placed + timedelta(days=1)).isoformat(),
            "promised_delivery_by": (placed + timedelta(days=6)).isoformat(),
            "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
        },
        tag="placed",
    )


def _shipment(order_id: str, placed: datetime) -> CloudEvent:
    return _event(
        "shipment.created",
        order_id,
        placed + timedelta(hours=5),
        {
            "shipment_id": f"s-{order_id}",
            "order_id": order_id,
            "carrier": "DHL",
            "tracking_number": f"JJD{abs(hash(order_id)) % 10**10:010d}",
            "tracking_url": "https://dhl.example/track",
            "items": [{"sku": "MUG-1", "quantity": 1}],
        },
        tag="created",
    )


def _tracking(order_id: str, status: str, at: datetime, tag: str = "") -> CloudEvent:
    data: dict[str, Any] = {
        "shipment_id": f"s-{order_id}",
        "order_id": order_id,
        "checkpoint_at": at.isoformat(),
        "location": "Leipzig hub",
    }
    if status == "lost":
        data.update(status="exception", substatus="lost")
    else:
        data["status"] = status
    return _event("shipment.tracking_updated", order_id, at, data, tag=tag or status)


def _return(order_id: str, c: Customer, at: datetime, k: int) -> CloudEvent:
    return _event(
        "return.requested",
        order_id,
        at - timedelta(minutes=3 - k),
        {
            "return_id": f"r-{order_id}",
            "order_id": order_id,
            "customer_id": c.customer_id,
            "items": [{"sku": "MUG-1", "quantity": 1, "reason": "size_fit"}],
            "reason": "size_fit",
        },
        tag="requested",
    )
