"""The simulated shop: a deterministic, time-ordered stream of SPEC §3 events.

Everything comes from one `random.Random(seed)` and a fixed start time, so the same
options give byte-identical events (ids included). Each order draws a scenario — most
go well; some are dispatched late, slip, stall, fail an attempt, wait at a pickup
point, hit a carrier exception, go back to the sender or get cancelled — and returns
and feedback follow from what happened. A little real-world noise is added on purpose:
duplicate deliveries of an event and tracking scans that arrive after later ones.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from common.envelope import CloudEvent, new_event
from simulator.carriers import tracking_number
from simulator.catalog import HUBS, MARKETS, PRODUCTS, TRACKING_URLS, Market

DEFAULT_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SCENARIOS: dict[str, float] = {
    "on_time": 0.72,
    "late_dispatch": 0.04,
    "at_risk": 0.05,
    "stalled": 0.03,
    "attempt_failed": 0.05,
    "pickup": 0.04,
    "exception": 0.03,
    "returned_to_sender": 0.01,
    "cancelled": 0.03,
}
EXCEPTIONS = ("lost", "damaged", "address_issue", "customs_hold", "weather_delay", "carrier_delay")
RETURN_REASONS = (
    ("size_fit", 30),
    ("changed_mind", 20),
    ("damaged", 8),
    ("defective", 8),
    ("wrong_item", 5),
    ("not_as_described", 8),
    ("late_delivery", 6),
    ("better_price", 5),
    ("other", 10),
)
SOURCES = {
    "commerce.orders": "/shop/orders",
    "commerce.shipments": "/shop/shipping",
    "commerce.returns": "/shop/returns",
    "commerce.customers": "/shop/customers",
    "commerce.feedback": "/shop/feedback",
}


@dataclass
class Config:
    seed: int = 1
    customers: int = 200
    orders_per_hour: float = 60.0
    duration: timedelta = timedelta(days=7)
    start: datetime = DEFAULT_START
    max_events: int | None = None
    scenarios: dict[str, float] = field(default_factory=lambda: dict(SCENARIOS))
    duplicate_rate: float = 0.02
    out_of_order_rate: float = 0.03
    malformed_rate: float = 0.0
    return_rate: float = 0.12
    feedback_rate: float = 0.2


@dataclass
class Customer:
    customer_id: str
    market: Market
    first_name: str
    regular_gap_days: float | None
    serial_returner: bool
    churns_at: datetime | None


@dataclass(frozen=True)
class Emission:
    """One record to publish: topic, key and the event (or raw malformed bytes)."""

    at: datetime
    topic: str
    key: str
    event: CloudEvent | None
    raw: bytes | None = None

    def value(self) -> bytes:
        return self.raw if self.raw is not None else self.event.to_bytes()  # type: ignore[union-attr]


class Shop:
    def __init__(self, config: Config) -> None:
        self.c = config
        self.rnd = random.Random(config.seed)
        self._queue: list[tuple[datetime, int, Emission]] = []
        self._seq = 0
        self._ids = 0
        self.customers = [self._customer(i) for i in range(config.customers)]

    # --- identities ----------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self.c.seed}-{self._ids:07d}"

    def _customer(self, index: int) -> Customer:
        rnd = self.rnd
        market = rnd.choices(MARKETS, weights=[m.weight for m in MARKETS])[0]
        regular = rnd.random() < 0.35
        churns = regular and rnd.random() < 0.3
        return Customer(
            customer_id=f"cust-{self.c.seed}-{index:05d}",
            market=market,
            first_name=rnd.choice(market.first_names),
            regular_gap_days=rnd.uniform(2, 6) if regular else None,
            serial_returner=rnd.random() < 0.06,
            churns_at=self.c.start + timedelta(days=rnd.uniform(1, 4)) if churns else None,
        )

    # --- scheduling ----------------------------------------------------------------

    def _emit(
        self,
        at: datetime,
        topic: str,
        key: str,
        type_: str,
        data: dict[str, Any],
        *,
        event_time: datetime | None = None,
    ) -> None:
        """Schedule an event that happened at `event_time` (default `at`), published at `at`."""
        when = event_time or at
        event = new_event(
            type=type_, source=SOURCES[topic], subject=key, data=data, time=when, id=self._id("evt")
        )
        self._push(Emission(at, topic, key, event))
        if self.rnd.random() < self.c.duplicate_rate:
            self._push(Emission(at + timedelta(minutes=self.rnd.uniform(1, 90)), topic, key, event))

    def _push(self, emission: Emission) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (emission.at, self._seq, emission))

    # --- the story -----------------------------------------------------------------

    def events(self) -> Iterator[Emission]:
        """Every emission in publishing order. Orders stop at the end of the window; what
        they set in motion (deliveries, returns, refunds) still plays out, then it ends."""
        end = self.c.start + self.c.duration
        for customer in self.customers:
            self._upsert(customer, self.c.start - timedelta(minutes=30))
        rate = self.c.orders_per_hour
        next_order = self.c.start + timedelta(hours=self.rnd.expovariate(rate)) if rate > 0 else end
        emitted = 0
        while True:
            head = self._queue[0][0] if self._queue else None
            if next_order < end and (head is None or next_order <= head):
                self._order(self._pick_customer(next_order), next_order)
                next_order += timedelta(hours=self.rnd.expovariate(rate))
                continue
            if head is None:
                return
            _, _, emission = heapq.heappop(self._queue)
            yield emission
            emitted += 1
            if self.c.max_events is not None and emitted >= self.c.max_events:
                return

    def _pick_customer(self, at: datetime) -> Customer:
        for _ in range(10):
            customer = self.rnd.choice(self.customers)
            if customer.churns_at is not None and at >= customer.churns_at:
                continue  # this regular stopped ordering: the churn signal
            if customer.regular_gap_days is not None or self.rnd.random() < 0.5:
                return customer
        return self.rnd.choice(self.customers)

    def _upsert(self, customer: Customer, at: datetime) -> None:
        rnd, m = self.rnd, customer.market
        last = rnd.choice(m.last_names)
        data: dict[str, Any] = {
            "customer_id": customer.customer_id,
            "first_name": customer.first_name,
            "last_name": last,
            "locale": rnd.choice(m.locales),
            "timezone": rnd.choice(m.zones),
            "marketing_opt_in": rnd.random() < 0.6,
        }
        if rnd.random() < 0.92:
            slug = f"{customer.first_name}.{last}".lower().replace(" ", "").replace("'", "")
            data["email"] = f"{slug}.{customer.customer_id[-5:]}@example.com"
        if rnd.random() < 0.55 or "email" not in data:
            data["phone"] = rnd.choice(m.phone_prefixes) + "".join(
                rnd.choice("0123456789") for _ in range(m.phone_digits)
            )
        self._emit(at, "commerce.customers", customer.customer_id, "customer.upserted", data)

    def _order(self, customer: Customer, at: datetime) -> None:
        rnd, m = self.rnd, customer.market
        order_id = self._id("ord")
        method = rnd.choices(("standard", "express", "next_day", "pickup"), (70, 15, 8, 7))[0]
        lines = rnd.sample(PRODUCTS, k=rnd.choice((1, 1, 1, 2, 2, 3)))
        items = [
            {"sku": sku, "name": name, "quantity": rnd.choice((1, 1, 1, 2)), "unit_price": price}
            for sku, name, price in lines
        ]
        total = sum((Decimal(str(i["unit_price"])) * int(i["quantity"]) for i in items), Decimal(0))
        ship_by = at + timedelta(hours={"next_day": 8, "express": 16}.get(method, 24))
        transit = {"standard": 72, "express": 24, "next_day": 16, "pickup": 72}[method]
        deliver_by = ship_by + timedelta(hours=transit)
        postal, city = rnd.choice(m.cities)
        self._emit(
            at,
            "commerce.orders",
            order_id,
            "order.placed",
            {
                "order_id": order_id,
                "customer_id": customer.customer_id,
                "currency": m.currency,
                "total": str(total),
                "items": items,
                "shipping_method": method,
                "promised_ship_by": ship_by.isoformat(),
                "promised_delivery_by": deliver_by.isoformat(),
                "shipping_address": {"country": m.country, "postal_code": postal, "city": city},
            },
        )
        if self.c.malformed_rate and rnd.random() < self.c.malformed_rate:
            self._push(
                Emission(
                    at + timedelta(minutes=1),
                    "commerce.orders",
                    order_id,
                    None,
                    raw=b'{"specversion": "1.0", "type": "order.placed", "data": ',
                )
            )
        scenario = rnd.choices(list(self.c.scenarios), weights=list(self.c.scenarios.values()))[0]
        if scenario == "cancelled":
            self._emit(
                at + timedelta(hours=rnd.uniform(1, 6)),
                "commerce.orders",
                order_id,
                "order.cancelled",
                {
                    "order_id": order_id,
                    "reason": rnd.choice(("out of stock", "changed mind", "payment failed")),
                    "cancelled_by": rnd.choice(("customer", "merchant")),
                },
            )
            return
        delivered = self._ship(customer, order_id, items, at, ship_by, deliver_by, scenario)
        if delivered is not None:
            self._after_delivery(customer, order_id, items, delivered, scenario)

    def _ship(
        self,
        customer: Customer,
        order_id: str,
        items: list[dict[str, Any]],
        placed: datetime,
        ship_by: datetime,
        deliver_by: datetime,
        scenario: str,
    ) -> datetime | None:
        rnd, m = self.rnd, customer.market
        carrier = rnd.choice(m.carriers)
        hub = rnd.choice(HUBS[m.country])
        if scenario == "late_dispatch":
            shipped = ship_by + timedelta(hours=rnd.uniform(4, 30))
        else:
            shipped = placed + (ship_by - placed) * rnd.uniform(0.3, 0.9)
        transit = deliver_by - ship_by
        estimate = shipped + transit * rnd.uniform(0.6, 0.95)
        split = len(items) > 1 and rnd.random() < 0.25
        parcels = [items[:1], items[1:]] if split else [items]
        last_delivery: datetime | None = None
        for n, parcel_items in enumerate(parcels):
            shipment_id = self._id("shp")
            number = tracking_number(carrier, rnd)
            created = shipped + timedelta(minutes=20 * n)
            self._emit(
                created,
                "commerce.shipments",
                order_id,
                "shipment.created",
                {
                    "shipment_id": shipment_id,
                    "order_id": order_id,
                    "carrier": carrier,
                    "tracking_number": number,
                    "tracking_url": TRACKING_URLS[carrier].format(n=number),
                    "items": [{"sku": i["sku"], "quantity": i["quantity"]} for i in parcel_items],
                    "estimated_delivery_at": estimate.isoformat(),
                },
            )
            track = _Tracker(self, order_id, shipment_id)
            track.scan(created + timedelta(hours=1), "info_received")
            track.scan(created + timedelta(hours=rnd.uniform(4, 10)), "in_transit", location=hub)
            done = self._scenario_tail(track, scenario, created, estimate, deliver_by, hub)
            if done is None:
                return None
            last_delivery = max(last_delivery or done, done)
        return last_delivery

    def _scenario_tail(
        self,
        track: _Tracker,
        scenario: str,
        created: datetime,
        estimate: datetime,
        deliver_by: datetime,
        hub: str,
    ) -> datetime | None:
        rnd = self.rnd
        if scenario == "at_risk":
            slip = deliver_by + timedelta(hours=rnd.uniform(24, 72))
            said = min(deliver_by - timedelta(hours=6), created + timedelta(hours=12))
            track.scan(said, "in_transit", location=hub, estimate=slip)
            out = slip - timedelta(hours=5)
            track.scan(out, "out_for_delivery")
            return track.scan(slip - timedelta(hours=1), "delivered")
        if scenario == "stalled":
            last = created + timedelta(hours=12)
            track.scan(last, "in_transit", location=hub)
            if rnd.random() < 0.4:
                track.scan(last + timedelta(days=rnd.uniform(5, 7)), "exception", substatus="lost")
                return None
            return track.scan(last + timedelta(days=rnd.uniform(4, 6)), "delivered")
        out = max(estimate - timedelta(hours=6), created + timedelta(hours=12))
        track.scan(out, "out_for_delivery")
        if scenario == "attempt_failed":
            track.scan(out + timedelta(hours=3), "attempt_failed", location="front door")
            track.scan(out + timedelta(hours=24), "out_for_delivery")
            return track.scan(out + timedelta(hours=27), "delivered")
        if scenario == "pickup":
            track.scan(out + timedelta(hours=3), "available_for_pickup", location="Parcel shop")
            return track.scan(out + timedelta(hours=rnd.uniform(20, 60)), "delivered")
        if scenario == "exception":
            sub = rnd.choice(EXCEPTIONS)
            track.scan(out - timedelta(hours=3), "exception", substatus=sub, location=hub)
            if sub in ("lost",):
                return None
            return track.scan(out + timedelta(hours=rnd.uniform(24, 72)), "delivered")
        if scenario == "returned_to_sender":
            track.scan(out + timedelta(hours=3), "attempt_failed")
            track.scan(out + timedelta(days=3), "returned_to_sender")
            return None
        if scenario == "late_dispatch":
            return track.scan(out + timedelta(hours=4), "delivered")
        return track.scan(out + timedelta(hours=rnd.uniform(1, 5)), "delivered")

    def _after_delivery(
        self,
        customer: Customer,
        order_id: str,
        items: list[dict[str, Any]],
        delivered: datetime,
        scenario: str,
    ) -> None:
        rnd = self.rnd
        rate = 0.6 if customer.serial_returner else self.c.return_rate
        if rnd.random() < rate:
            return_id = self._id("ret")
            reason = rnd.choices([r for r, _ in RETURN_REASONS], [w for _, w in RETURN_REASONS])[0]
            if scenario != "on_time" and rnd.random() < 0.3:
                reason = "late_delivery"
            requested = delivered + timedelta(days=rnd.uniform(1, 6))
            item = items[0]
            data: dict[str, Any] = {
                "return_id": return_id,
                "order_id": order_id,
                "customer_id": customer.customer_id,
                "reason": reason,
                "items": [{"sku": item["sku"], "quantity": 1, "reason": reason}],
            }
            if rnd.random() < 0.3:
                data["comment"] = "Please process quickly."
            self._emit(requested, "commerce.returns", order_id, "return.requested", data)
            received = requested + timedelta(days=rnd.uniform(2, 5))
            self._emit(
                received,
                "commerce.returns",
                order_id,
                "return.received",
                {"return_id": return_id, "order_id": order_id},
            )
            slow = rnd.random() < 0.1
            refunded = received + timedelta(days=rnd.uniform(6, 9) if slow else rnd.uniform(1, 3))
            self._emit(
                refunded,
                "commerce.returns",
                order_id,
                "return.refunded",
                {
                    "return_id": return_id,
                    "order_id": order_id,
                    "amount": item["unit_price"],
                    "currency": customer.market.currency,
                },
            )
        if rnd.random() < self.c.feedback_rate:
            bad = scenario not in ("on_time", "cancelled")
            at = delivered + timedelta(days=rnd.uniform(1, 3))
            if bad and rnd.random() < 0.25:
                self._emit(
                    at,
                    "commerce.feedback",
                    customer.customer_id,
                    "feedback.received",
                    {
                        "customer_id": customer.customer_id,
                        "order_id": order_id,
                        "kind": "complaint",
                        "comment": "The delivery was a mess.",
                    },
                )
                return
            kind = rnd.choice(("nps", "csat"))
            score = (
                (rnd.randint(0, 6) if bad else rnd.randint(6, 10))
                if kind == "nps"
                else (rnd.randint(1, 3) if bad else rnd.randint(3, 5))
            )
            self._emit(
                at,
                "commerce.feedback",
                customer.customer_id,
                "feedback.received",
                {
                    "customer_id": customer.customer_id,
                    "order_id": order_id,
                    "kind": kind,
                    "score": score,
                },
            )


class _Tracker:
    def __init__(self, shop: Shop, order_id: str, shipment_id: str) -> None:
        self.shop, self.order_id, self.shipment_id = shop, order_id, shipment_id

    def scan(
        self,
        at: datetime,
        status: str,
        *,
        location: str | None = None,
        substatus: str | None = None,
        estimate: datetime | None = None,
    ) -> datetime:
        data: dict[str, Any] = {
            "shipment_id": self.shipment_id,
            "order_id": self.order_id,
            "status": status,
            "checkpoint_at": at.isoformat(),
        }
        if location:
            data["location"] = location
        if substatus:
            data["substatus"] = substatus
        if estimate:
            data["estimated_delivery_at"] = estimate.isoformat()
        published = at
        if status != "delivered" and self.shop.rnd.random() < self.shop.c.out_of_order_rate:
            published = at + timedelta(hours=self.shop.rnd.uniform(2, 8))  # a late scan
        self.shop._emit(
            published,
            "commerce.shipments",
            self.order_id,
            "shipment.tracking_updated",
            data,
            event_time=at,
        )
        return at
