"""A remedy through the whole pipeline (docs/remedies.md), seen from outside: with a
remedy policy published in the studio's database, a late parcel's apology carries its
code to the customer (what the SendGrid double accepted); the relay asks the shop's
systems on `outreach.actions` to honour exactly that code (its value, currency, expiry,
the decision it came with); `outreach.messages` never carries the code; and the code
used with the customer's next order is counted as redeemed, once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.remedies import RemedyStore
from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e.stack import Shop, Stack, TopicReader
from tests.e2e.test_walking_skeleton import (
    consumed,
    customer,
    email_text,
    order,
    publish_in_time_order,
    shipment,
    tracking,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
POLICY = {
    "currency": "EUR",
    "budget": {"period": "month", "cap": "100"},
    "rules": [{"intents": ["apology"], "offer": ["amount:10"]}],
}


@pytest.fixture
def stack(kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double):
    s = Stack(kafka_bootstrap, topic_prefix, tmp_path,
              extra_env=provider_env(twilio_double, sendgrid_double))  # fmt: skip
    # Published before the worker starts: a policy published later serves within
    # the store's refresh (5 s), which nothing outside could wait for.
    (s.data_dir / "outreach").mkdir(parents=True, exist_ok=True)
    asyncio.run(publish_policy(database(s)))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def database(stack: Stack) -> str:
    return f"sqlite:///{stack.data_dir / 'outreach' / 'outreach.db'}"


async def publish_policy(url: str) -> None:
    """As an admin does in the studio's Remedies page."""
    engine = create_engine(url)
    try:
        await create_schema(engine)
        store = RemedyStore(session_factory(engine))
        now = datetime.now(UTC)
        version = await store.save_draft(POLICY, "e2e-admin", "ten euros for a late parcel", now)
        await store.publish(version, "e2e-admin", now)
    finally:
        await engine.dispose()


def read_orders(stack: Stack) -> float:
    """The order events outreach's outcome recorder has read (a redelivery included)."""
    return sum(
        consumed(stack, "outreach", "commerce.orders", outcome)
        for outcome in ("processed", "duplicate")
    )


def test_a_late_parcels_code_reaches_the_customer_and_the_shop_and_nothing_else(
    stack, kafka_bootstrap, topic_prefix, sendgrid_double
):
    shop = Shop(kafka_bootstrap, topic_prefix)
    messages = TopicReader(kafka_bootstrap, topic_prefix + "outreach.messages")
    actions = TopicReader(kafka_bootstrap, topic_prefix + "outreach.actions")
    try:
        shop.publish("commerce.customers", "c-ada",
                     customer("c-ada", "Ada", locale="de-DE", tz="Europe/Berlin",
                              email="ada@example.com"))  # fmt: skip
        wait_for(lambda: consumed(stack, "preferences", "commerce.customers", "processed") >= 1,
                 timeout=60, message="preferences to learn Ada")  # fmt: skip
        publish_in_time_order(shop, [
            order("o-ada", "c-ada", 0, 72), shipment("o-ada", 10),
            tracking("o-ada", 20, "in_transit"), tracking("o-ada", 74, "in_transit"),
        ])  # fmt: skip
        (email,) = wait_for(lambda: sendgrid_double.messages, timeout=90, message="the apology")

        def asked(kind: str) -> list[dict[str, Any]] | None:
            found = [e["data"] for e in actions.events() if e["data"]["action"] == kind]
            return found or None

        (code_action,) = wait_for(lambda: asked("discount_code"), timeout=60,
                                  message="the shop asked to honour the code")  # fmt: skip
        remedy = code_action["remedy"]
        assert (remedy["kind"], remedy["value"], remedy["currency"]) == ("amount", "10.00", "EUR")
        assert remedy["code"] and remedy["expires_at"]
        assert remedy["code"] in email_text(email)  # the customer's code, the same one
        assert code_action["customer_id"] == "c-ada" and code_action["order_id"] == "o-ada"
        sent = wait_for(
            lambda: [e for e in messages.events() if e["type"] == "outreach.message.sent"],
            timeout=60, message="the sent event",
        )  # fmt: skip
        assert sent[0]["data"]["decision_id"] == code_action["decision_id"]
        assert sent[0]["data"]["remedy"]["kind"] == "amount"

        # Ada orders again with the code (any letters' case), and the shop's system sends
        # the order event twice: one redemption (the outcome recorder reads
        # commerce.orders; its third order event is the redelivery).
        again = order("o-ada-2", "c-ada", 80, 150)
        again = again.with_fields(data={**again.data, "discount_codes": [remedy["code"].lower()]})
        publish_in_time_order(shop, [again])
        publish_in_time_order(shop, [again])
        wait_for(lambda: read_orders(stack) >= 3, timeout=60,
                 message="the recorder to read the order twice")  # fmt: skip
        with contextlib.closing(sqlite3.connect(stack.data_dir / "outreach" / "outreach.db")) as db:
            rows = db.execute(
                "SELECT redeemed_order_id, uses FROM remedy_grants WHERE code = ?",
                (remedy["code"],),
            ).fetchall()
        assert rows == [("o-ada-2", 1)]
        # And nothing on outreach.messages, first to last, carried the code.
        assert messages.events() and all(remedy["code"] not in str(e) for e in messages.events())
    finally:
        shop.close()
        messages.close()
        actions.close()
