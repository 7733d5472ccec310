"""Erasure reaches the delivery ledger: after customer.erased, a customer's address,
first name, subjects and bodies — and studio test sends to their addresses — are gone,
while the decisions' skeleton stays for the audit; a message still being settled with
its provider is scrubbed once settled; the retention scrubs old bodies (real ledger on
SQLite and PostgreSQL, the official SDKs against the doubles)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from common.envelope import new_event
from tests.integration.outreach import test_delivery
from tests.integration.outreach.test_delivery import WALL
from tests.integration.outreach.test_in_doubt import crash_while_sending
from tests.outreach_requests import EMAIL, NIGHT, NOON, SMS, plan, request

outreach = test_delivery.outreach  # the fixture: the same app on SQLite and PostgreSQL
pytestmark = pytest.mark.integration


def erased(customer_id: str = "c-1"):
    return new_event(
        type="customer.erased",
        source="/shop/test",
        subject=customer_id,
        time=NOON,
        id=f"erased-{customer_id}",
        data={"customer_id": customer_id},
    )


async def everything_stored(app) -> str:
    """Every row of every outreach table, as text: what a search of the database sees."""
    async with app.engine.connect() as conn:
        tables = ["deliveries", "delivery_events", "studio_test_sends"]
        dumps = []
        for table in tables:
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            dumps.append(repr(rows))
        return "\n".join(dumps)


async def a_test_send_to(app, address: str) -> None:
    from datetime import UTC, datetime

    async with app.engine.begin() as conn:
        await conn.execute(
            text(
                'INSERT INTO studio_test_sends (send_key, at, actor, template_key, channel, "to", '
                "subject, html, text, outbox) VALUES ('k-1', :at, 'mia', 'delivery_late.sms.de', "
                "'sms', :to, NULL, NULL, 'Hallo Ada, Test', true)"
            ),
            {"at": datetime.now(UTC), "to": address},
        )


async def test_an_erased_customer_leaves_the_ledger_but_the_decisions_stay(
    outreach, twilio_double, sendgrid_double
):
    outreach.plans.plans[("c-1", "*")] = plan(SMS, EMAIL)
    await outreach.delivery.on_request(request("req-1", cause="inc-1"), NOON)  # sent
    await outreach.delivery.on_request(request("req-2", cause="inc-2", at=NIGHT), NIGHT)  # held
    await a_test_send_to(outreach, SMS.address)
    before = await everything_stored(outreach)
    assert SMS.address in before and "Ada" in before and EMAIL.address in before

    assert await outreach.delivery.on_customer_event(erased()) == 2
    after = await everything_stored(outreach)
    for personal in (SMS.address, EMAIL.address, "Ada"):
        assert personal not in after, personal
    rows = {r.request_id: r for r in await outreach.ledger.history(customer_id="c-1")}
    assert rows["req-1"].status == "sent" and rows["req-1"].provider_message_id
    assert rows["req-1"].request["intent"] == "apology" and rows["req-1"].scrubbed
    assert rows["req-2"].status == "scheduled"


async def test_a_message_settling_with_its_provider_is_scrubbed_once_settled(
    outreach, twilio_double
):
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    decision_id = await crash_while_sending(outreach, "sms", after=True)
    await outreach.delivery.on_customer_event(erased())
    assert SMS.address in await everything_stored(outreach)  # needed to ask Twilio
    outreach.wall.set(WALL + timedelta(minutes=11))
    assert await outreach.delivery.sweep(NOON) == 1  # found at Twilio: sent
    assert (await outreach.ledger.get(decision_id)).status == "sent"
    await outreach.delivery.scrub_due(timedelta(days=90))
    assert SMS.address not in await everything_stored(outreach)


async def test_the_retention_scrubs_bodies_of_old_messages_only(outreach, sendgrid_double):
    await outreach.delivery.on_request(request("req-old", cause="inc-old"), NOON)
    await outreach.delivery.on_request(request("req-new", cause="inc-new"), WALL)
    outreach.wall.set(WALL)
    assert await outreach.delivery.scrub_due(timedelta(days=90)) == 1
    rows = {r.request_id: r for r in await outreach.ledger.history(customer_id="c-1")}
    assert rows["req-old"].scrubbed and rows["req-old"].body_text is None
    assert not rows["req-new"].scrubbed and "Ada" in rows["req-new"].body_text
