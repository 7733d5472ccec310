"""A storm on the real broker (docs/storms.md):
a 500-parcel hub outage becomes one storm awaiting approval, approved, each customer
reached once with all their orders named.

The four services as processes on the real broker (wall clock), the official SDKs
against the Twilio and SendGrid doubles, the ledger on SQLite. The shop has 500 parcels
of 440 customers (60 of them with two orders; email and SMS, English and German); the
carrier reports every parcel delayed at its Leipzig hub at once. Storms: 20 incidents of
one scope within 10 minutes make one, from 100 on its messages wait; a message about an
incident waits 4 s before it leaves (OUTREACH_CONSOLIDATE_S), so the storm forms before
any leaves. The operator approves with a note in English and German, as the studio does
(`StormStore.act` on outreach's database).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from common.envelope import CloudEvent, new_event
from services.outreach.adapters.db import create_engine, session_factory
from services.outreach.adapters.ledger import Delivery
from services.outreach.adapters.storms import StormRow, StormStore
from services.outreach.domain.storms import Action, State, StormPolicy
from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e.stack import Shop, Stack
from tests.e2e.test_outreach_crash import daytime_zone
from tests.e2e.test_walking_skeleton import consumed, email_text, email_to, sms_body, sms_to

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CUSTOMERS = 440
TWO_ORDERS = 60  # customers 0..59 have a second order: 500 parcels
PARCELS = CUSTOMERS + TWO_ORDERS
CARRIER = "DHL"
HUB = "Leipzig hub"
SCOPE = f"hub:{CARRIER.lower()}@{HUB}"
RATE, APPROVAL_SIZE, CONSOLIDATE_S = "20/600", 100, 4.0
NOTES = {
    "en": "Storm note: a power cut stopped the Leipzig hub; it is running again.",
    "de": "Sturmhinweis: Ein Stromausfall legte das Leipziger Paketzentrum lahm.",
}


# --- the shop ---------------------------------------------------------------------


def event(type_: str, subject: str, at: datetime, data: dict[str, Any]) -> CloudEvent:
    return new_event(
        type=type_, source="/shop/test", subject=subject, time=at, data=data,
        id=f"{type_}/{subject}",
    )  # fmt: skip


class Shopper:
    """One customer of the test shop: channel and language by number (every
    combination of email/SMS and English/German), one or two orders."""

    def __init__(self, n: int) -> None:
        self.id = f"c-{n:03d}"
        self.sms = n % 2 == 1
        self.language = "de" if n % 4 >= 2 else "en"
        self.address = f"+4915112{n:06d}" if self.sms else f"c{n:03d}@example.com"
        self.orders = [f"o-{n:03d}-a"] + ([f"o-{n:03d}-b"] if n < TWO_ORDERS else [])

    def upserted(self, zone: str, at: datetime) -> CloudEvent:
        data: dict[str, Any] = {
            "customer_id": self.id,
            "first_name": "Ada",
            "locale": "de-DE" if self.language == "de" else "en-GB",
            "timezone": zone,  # daytime there: quiet hours do not hold the SMS
            "marketing_opt_in": False,
        }
        data["phone" if self.sms else "email"] = self.address
        return event("customer.upserted", self.id, at, data)


def order(oid: str, cid: str, at: datetime) -> CloudEvent:
    return event(
        "order.placed",
        oid,
        at,
        {
            "order_id": oid,
            "customer_id": cid,
            "currency": "EUR",
            "total": "89.90",
            "items": [
                {"sku": "LAMP-1", "name": "Reading lamp", "quantity": 1, "unit_price": "89.90"}
            ],
            "shipping_method": "standard",
            "promised_ship_by": (at + timedelta(days=1)).isoformat(),
            "promised_delivery_by": (at + timedelta(days=5)).isoformat(),
            "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
        },
    )


def shipment(oid: str, at: datetime) -> CloudEvent:
    return event(
        "shipment.created",
        oid,
        at,
        {
            "shipment_id": f"s-{oid}",
            "order_id": oid,
            "carrier": CARRIER,
            "tracking_number": f"JJD0146{oid[2:5]}{oid[-1]}",
            "tracking_url": "https://dhl.example/JJD",
            "items": [{"sku": "LAMP-1", "quantity": 1}],
        },
    )


def delayed_at_hub(oid: str, at: datetime) -> CloudEvent:
    return new_event(
        type="shipment.tracking_updated",
        source="/shop/test",
        subject=oid,
        time=at,
        id=f"tracking/{oid}/hub",
        data={
            "shipment_id": f"s-{oid}",
            "order_id": oid,
            "status": "exception",
            "substatus": "carrier_delay",
            "checkpoint_at": at.isoformat(),
            "location": HUB,
        },
    )


def publish_all(shop: Shop, topic: str, events: Iterable[tuple[str, CloudEvent]]) -> None:
    """Publish a batch as the shop's systems would at a busy moment: every record sent,
    then one flush (a flush per record would take seconds for 500)."""
    for key, e in events:
        shop.producer.send(
            shop.prefix + topic,
            key=key.encode(),
            value=e.to_bytes(),
            headers=[("content-type", b"application/cloudevents+json")],
            timestamp_ms=int(e.time.timestamp() * 1000),
        )
    shop.producer.flush()


# --- outreach's database, as the studio opens it -------------------------------------


class OutreachDatabase:
    """outreach's database opened by a second process (as the studio's is): the storm
    tables through `StormStore`, the ledger's held rows counted."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = create_engine(url)
        self.store = StormStore(
            session_factory(self.engine),
            StormPolicy.parse(RATE, APPROVAL_SIZE, 600.0),
        )

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def storms(self) -> list[StormRow]:
        async def read() -> list[StormRow]:
            async with self.store.sessions() as s:
                return list((await s.execute(select(StormRow))).scalars())

        return list(self.run(read()))

    def held(self, storm_id: str) -> int:
        """The storm's messages held: scheduled with no time, naming the storm."""

        async def count() -> int:
            async with self.store.sessions() as s:
                query = select(func.count()).where(
                    Delivery.storm_id == storm_id,
                    Delivery.status == "scheduled",
                    Delivery.send_at.is_(None),
                )
                return int(await s.scalar(query) or 0)

        return int(self.run(count()))

    def statuses(self) -> dict[str, int]:
        async def count() -> dict[str, int]:
            async with self.store.sessions() as s:
                rows = await s.execute(
                    select(Delivery.status, func.count()).group_by(Delivery.status)
                )
                return {str(status): int(n) for status, n in rows.all()}

        return dict(self.run(count()))

    def approve(self, storm_id: str, notes: dict[str, str]) -> Any:
        return self.run(
            self.store.act(
                storm_id, Action.APPROVE, "ops@shop.example", datetime.now(UTC), notes=notes
            )
        )

    def close(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()


def gauge(stack: Stack, metric: str, labels: str = "") -> float | None:
    """A gauge on outreach's /metrics (`labels`: e.g. 'state="awaiting"'); None if absent."""
    pattern = rf"^{metric}{re.escape('{' + labels + '}') if labels else ''} ([0-9.e+-]+)$"
    found = re.search(pattern, stack.metrics("outreach"), re.MULTILINE)
    return float(found.group(1)) if found else None


# --- the test ---------------------------------------------------------------------


@pytest.fixture
def stack(kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double):
    s = Stack(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        extra_env={
            "OUTREACH_CLOCK": "wall",
            "OUTREACH_DATABASE_URL": database_url(tmp_path),
            "OUTREACH_STORM_RATE": RATE,
            "OUTREACH_STORM_APPROVAL_SIZE": str(APPROVAL_SIZE),
            "OUTREACH_STORM_QUIET_S": "600",
            "OUTREACH_CONSOLIDATE_S": str(CONSOLIDATE_S),
            "OUTREACH_LEDGER_METRICS_S": "0.5",
            "OUTREACH_SCHEDULER_INTERVAL_S": "0.25",
            "OUTREACH_PROVIDER_RATE_PER_S": "200",
            **provider_env(twilio_double, sendgrid_double),
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outreach.db'}"


def test_a_hub_outage_is_one_storm_approved_and_each_customer_reached_once(
    stack, kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double
):
    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    shop = Shop(kafka_bootstrap, topic_prefix)
    db = OutreachDatabase(database_url(tmp_path))
    shoppers = [Shopper(n) for n in range(CUSTOMERS)]
    by_address = {s.address: s for s in shoppers}
    assert sum(len(s.orders) for s in shoppers) == PARCELS

    def accepted() -> list[tuple[str, str]]:
        """(recipient, text) of every message the provider doubles accepted."""
        return [(email_to(m), email_text(m)) for m in list(sendgrid_double.messages)] + [
            (sms_to(m), sms_body(m)) for m in list(twilio_double.messages)
        ]

    try:
        now = datetime.now(UTC)
        zone = daytime_zone()
        publish_all(
            shop,
            "commerce.customers",
            ((s.id, s.upserted(zone, now - timedelta(minutes=5))) for s in shoppers),
        )
        placed = now - timedelta(hours=10)
        orders = [(oid, s.id) for s in shoppers for oid in s.orders]
        publish_all(
            shop, "commerce.orders", ((oid, order(oid, cid, placed)) for oid, cid in orders)
        )
        publish_all(
            shop,
            "commerce.shipments",
            ((oid, shipment(oid, placed + timedelta(hours=2))) for oid, _ in orders),
        )
        wait_for(
            lambda: consumed(stack, "preferences", "commerce.customers", "processed") >= CUSTOMERS,
            timeout=60,
            message="preferences to know every customer",
        )
        wait_for(
            lambda: (
                consumed(stack, "orders_watcher", "commerce.orders", "processed") >= PARCELS
                and consumed(stack, "orders_watcher", "commerce.shipments", "processed") >= PARCELS
            ),
            timeout=60,
            message="the watcher to know every order and shipment",
        )
        phase("shop ready")

        # The outage: the carrier reports every parcel delayed at its Leipzig hub.
        hit = datetime.now(UTC) - timedelta(seconds=1)
        publish_all(
            shop,
            "commerce.shipments",
            ((oid, delayed_at_hub(oid, hit + timedelta(milliseconds=i))) for i, (oid, _) in
             enumerate(orders)),
        )  # fmt: skip
        phase("outage published")

        def the_storm() -> StormRow | None:
            found = [r for r in db.storms() if r.scope == SCOPE]
            return found[0] if len(found) == 1 and found[0].state == State.AWAITING else None

        storm = wait_for(the_storm, timeout=60, interval=0.5, message=f"a storm of {SCOPE}")
        assert isinstance(storm, StormRow)
        phase("storm awaiting")
        wait_for(
            lambda: (
                db.held(storm.storm_id) == PARCELS
                and gauge(stack, "outreach_storm_held_messages") == PARCELS
            ),
            timeout=60,
            interval=0.5,
            message=f"every one of the {PARCELS} messages held with the storm",
        )
        phase("all held")
        assert accepted() == [], "a message left before the storm was decided"
        # One storm, of the hub (not one of the carrier beside it), every parcel in it.
        assert [(r.scope, r.size) for r in db.storms()] == [(SCOPE, PARCELS)]
        assert (gauge(stack, "outreach_storms", 'state="awaiting"') or 0) >= 1
        # Nothing leaves while it waits: a message decided before the storm held it would
        # have left once its gathering window (CONSOLIDATE_S) was over; wait that long.
        time.sleep(CONSOLIDATE_S + 1)
        assert accepted() == [], "a message left while its storm awaited approval"
        assert db.held(storm.storm_id) == PARCELS
        phase("waited")

        approved = db.approve(storm.storm_id, NOTES)
        assert approved.state is State.APPROVED
        phase("approved")

        def everyone_reached() -> bool:
            return {to for to, _ in accepted()} >= set(by_address)

        wait_for(everyone_reached, timeout=60, interval=0.5, message="every customer reached")
        phase("everyone reached")
        # A second message to anyone would be due within a gathering window of the first.
        time.sleep(CONSOLIDATE_S + 1)
        got = accepted()
        counts = Counter(to for to, _ in got)
        twice = {to: n for to, n in counts.items() if n != 1}
        assert not twice, f"{len(twice)} customers got more than one message: {twice}"
        assert set(counts) == set(by_address)
        for to, text in got:
            shopper = by_address[to]
            missing = [oid for oid in shopper.orders if oid not in text]
            assert not missing, f"{to}: {missing} not named in {text!r}"
            other = "en" if shopper.language == "de" else "de"
            assert NOTES[shopper.language] in text, f"{to}: no note in {text!r}"
            assert NOTES[other] not in text, f"{to}: the {other} note in {text!r}"
        assert db.held(storm.storm_id) == 0
        wait_for(
            lambda: (
                gauge(stack, "outreach_storms", 'state="awaiting"') == 0
                and gauge(stack, "outreach_storm_held_messages") == 0
            ),
            timeout=10,
            interval=0.5,
            message="no storm awaiting approval on /metrics",
        )
        phase("done")
    finally:
        print(f"phases (s since start): {phases}")
        shop.close()
        db.close()
