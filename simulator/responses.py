"""Simulated customers answering what the shop did after an incident, by hidden truths a
test knows and the system must find (docs/outcomes.md): whether they order again within
30 days — more likely after a message, more still with a remedy that works — and
whether they contact support asking where their order is.

Deterministic: one `random.Random(seed)`; the same answers for the same calls. The
events are the shop's own (SPEC §3, `support.ticket.opened` of docs/events.md), ready to
publish like the shop's (`Emission`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common.envelope import new_event
from simulator.shop import SOURCES, Emission

WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Truth:
    """The hidden effects: chances within the window (30 days unless the customers are
    told otherwise) of a customer's incident."""

    repeat: float = 0.20  # ordering again, had we said nothing
    message: float = 0.10  # what a message adds to it
    remedies: Mapping[str, float] = field(default_factory=dict)  # what a remedy adds, by name
    wismo: float = 0.30  # asking support where the order is, had we said nothing
    wismo_message: float = -0.20  # what a message changes of that

    def repeat_chance(self, messaged: bool, remedy: str | None) -> float:
        chance = self.repeat + (self.message if messaged else 0.0)
        if messaged and remedy is not None:
            chance += self.remedies.get(remedy, 0.0)
        return min(1.0, max(0.0, chance))

    def wismo_chance(self, messaged: bool) -> float:
        return min(1.0, max(0.0, self.wismo + (self.wismo_message if messaged else 0.0)))


class Customers:
    """Draws each customer's answer to what they got (or did not)."""

    def __init__(self, truth: Truth, seed: int = 7, window: timedelta = WINDOW) -> None:
        self.truth = truth
        self.rnd = random.Random(seed)
        self.window = window  # within which a repeat order comes, if it does
        self._ids = 0

    def answer(
        self,
        customer_id: str,
        at: datetime,
        *,
        messaged: bool,
        remedy: str | None = None,
        code: str | None = None,
        currency: str = "EUR",
    ) -> list[Emission]:
        """What `customer_id` does after a decision at `at`: a repeat order (using `code`,
        the remedy's discount code, if one came with the message) and a "where is my
        order?" contact, each drawn by the truth."""
        rnd, found = self.rnd, []
        repeat, wismo = rnd.random(), rnd.random()
        if repeat < self.truth.repeat_chance(messaged, remedy):
            when = at + timedelta(seconds=rnd.uniform(3600, self.window.total_seconds() - 3600))
            found.append(self._order(customer_id, when, code if messaged else None, currency))
        if wismo < self.truth.wismo_chance(messaged):
            when = at + timedelta(hours=rnd.uniform(1, 72))
            found.append(self._ticket(customer_id, when))
        return found

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-answer-{self._ids:07d}"

    def _event(
        self, topic: str, key: str, type_: str, at: datetime, data: dict[str, Any]
    ) -> Emission:
        event = new_event(
            type=type_, source=SOURCES[topic], subject=key, data=data, time=at, id=self._id("evt")
        )
        return Emission(at, topic, key, event)

    def _order(self, customer_id: str, at: datetime, code: str | None, currency: str) -> Emission:
        order_id = self._id("ord")
        total = f"{self.rnd.choice((19, 29, 49, 89, 129))}.90"
        data: dict[str, Any] = {
            "order_id": order_id,
            "customer_id": customer_id,
            "currency": currency,
            "total": total,
            "items": [{"sku": "SKU-1", "name": "Lamp", "quantity": 1, "unit_price": total}],
            "shipping_method": "standard",
            "promised_ship_by": (at + timedelta(days=1)).isoformat(),
            "promised_delivery_by": (at + timedelta(days=4)).isoformat(),
            "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
        }
        if code is not None:
            data["discount_codes"] = [code]
        return self._event("commerce.orders", order_id, "order.placed", at, data)

    def _ticket(self, customer_id: str, at: datetime) -> Emission:
        ticket = self._id("tkt")
        data = {
            "ticket_id": ticket,
            "customer_id": customer_id,
            "topic": "where_is_my_order",
            "channel": self.rnd.choice(("email", "phone", "chat")),
        }
        return self._event("commerce.feedback", customer_id, "support.ticket.opened", at, data)
