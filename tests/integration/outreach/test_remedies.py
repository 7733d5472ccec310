"""Remedies on a real ledger (SQLite and PostgreSQL), sending through the official
SendGrid SDK to its double: a published policy gives apologies their remedies within a
monthly cap — the next remedy when the first does not fit, none with the reasons when
nothing does — the code reaches the customer and the shop's systems but not
outreach.messages, the cap holds under concurrent workers, and codes used with orders
are tracked. Only outside effects are read: the provider double, the ledger's events
(outreach.messages and outreach.actions as the relay publishes them) and the stores."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from common.clock import FixedClock
from common.envelope import new_event
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import OutboxSender, SendGridEmailSender
from services.outreach.adapters.remedies import RemedyGrant, RemedyStore
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption
from services.outreach.domain.remedies import Facts
from services.outreach.entrypoints.http import _explain
from services.outreach.handlers import action_events, message_event
from tests.outreach_requests import NOON, plan, request

pytestmark = pytest.mark.integration
WALL = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CUSTOMERS = ["c-1", "c-2", "c-3"]
POLICY = {
    "currency": "EUR",
    "budget": {"period": "month", "cap": "30"},
    "rules": [{"intents": ["apology"], "offer": ["credit:20", "amount:10", "percent:10"]}],
}


@pytest.fixture
async def outreach(database_url, tmp_path, sendgrid_double):
    settings = Settings(
        database_url=database_url, data_dir=tmp_path, public_base_url="http://127.0.0.1:9"
    )
    email = SendGridEmailSender(
        sendgrid_double.api_key, "care@shop.example", base_url=sendgrid_double.base_url
    )
    plans = {}
    for cid in CUSTOMERS:
        address = ChannelOption("email", f"{cid}@example.com", True, "ok")
        plans[(cid, "*")] = replace(plan(address), customer_id=cid)
    app = bootstrap(
        settings,
        plans=StaticContactPlans(plans),
        senders={"email": email, "sms": OutboxSender(), "whatsapp": OutboxSender()},
        wall=FixedClock(WALL),
        optouts=RecordingOptOuts(),
    )
    await app.start()
    version = await app.remedies.save_draft(POLICY, "admin-1", "apologies get credit", WALL)
    await app.remedies.publish(version, "admin-1", WALL)
    yield app
    await app.stop()


def texts(sendgrid_double) -> dict[str, str]:
    return {
        p["to"][0]["email"].split("@")[0]: " ".join(c["value"] for c in mail["json"]["content"])
        for mail in sendgrid_double.messages
        for p in mail["json"]["personalizations"]
    }


async def test_remedies_within_the_budget_fall_back_and_say_why(outreach, sendgrid_double):
    for cid in CUSTOMERS:
        await outreach.delivery.on_request(
            request(f"r-{cid}", customer=cid, cause=f"i-{cid}"), NOON
        )
    got = texts(sendgrid_double)
    assert set(got) == set(CUSTOMERS)  # every apology went, remedy or not
    assert "20,00\xa0€ Guthaben gutgeschrieben" in got["c-1"]  # credit, in German
    first, second, third = [await _grant_of(outreach, cid) for cid in CUSTOMERS]
    assert (first.kind, first.cost) == ("credit", Decimal("20"))
    assert (second.kind, second.value, second.cost) == ("amount", "10.00", Decimal("10"))
    assert second.code and second.code in got["c-2"]  # 20 + 20 > 30: the next one fitted
    assert "credit:20: 20.00 EUR would exceed the budget" in second.why
    assert third.kind is None and "SORRY-" not in got["c-3"]
    assert third.why.count("would exceed the budget") == 3 and third.why.endswith("no remedy")
    assert await outreach.remedies.spent("2026-03") == Decimal("30")  # never past the cap
    (explained,) = await _explain(outreach, customer_id="c-3")  # what explain answers
    assert explained["remedy"]["kind"] is None and "no remedy" in explained["remedy"]["why"]
    (second_explained,) = await _explain(outreach, customer_id="c-2")
    assert "code" not in second_explained["remedy"]  # the code is the customer's

    sent = [e for e in await outreach.ledger.events_of(second.decision_id) if e.status == "sent"]
    (event,) = sent
    assert event.payload["remedy"]["code"] == second.code
    assert "code" not in message_event(event).data["remedy"]  # outreach.messages: no code
    actions = {a.data["action"]: a.data for a in action_events(event)}
    assert actions["discount_code"]["remedy"]["code"] == second.code  # the shop's systems
    (credit_sent,) = [
        e for e in await outreach.ledger.events_of(first.decision_id) if e.status == "sent"
    ]
    assert "store_credit" in {a.data["action"] for a in action_events(credit_sent)}


async def _grant_of(outreach, cid):
    row = await outreach.ledger.by_request(f"r-{cid}")
    return await outreach.remedies.get(row.decision_id)


async def test_a_code_used_with_orders_is_tracked_once_redeemed(outreach, sendgrid_double):
    await outreach.delivery.on_request(request("r-c-1", customer="c-1", cause="i-1"), NOON)
    await outreach.delivery.on_request(request("r-c-2", customer="c-2", cause="i-2"), NOON)
    grant = await _grant_of(outreach, "c-2")
    at = NOON + timedelta(days=3)
    assert await outreach.remedies.redeem([grant.code.lower(), "SOMEONE-ELSES"], "o-9", at) == 1
    assert await outreach.remedies.redeem([grant.code], "o-10", at + timedelta(days=1)) == 1
    async with session_factory(outreach.engine)() as s:
        row = await s.get(RemedyGrant, grant.decision_id)
    assert (row.uses, row.redeemed_order_id, row.redeemed_at) == (2, "o-9", at)
    erased = new_event(
        type="customer.erased", source="/shop", subject="c-2", id="er-1", time=at,
        data={"customer_id": "c-2"},
    )  # fmt: skip
    await outreach.delivery.on_customer_event(erased)
    async with session_factory(outreach.engine)() as s:
        row = await s.get(RemedyGrant, grant.decision_id)
    assert row.customer_id.startswith("erased-")  # the spending record stays, pseudonymous


async def test_the_cap_holds_for_workers_granting_at_once(database_url, tmp_path):
    """Two workers (two stores, two connection pools) grant 40 decisions at once against
    a cap of 100 at 10 each: exactly ten are granted, and the budget says 100."""
    engines = [create_engine(database_url) for _ in range(2)]
    await create_schema(engines[0])
    stores = [RemedyStore(session_factory(e)) for e in engines]
    policy = {"currency": "EUR", "budget": {"period": "day", "cap": "100"},
              "rules": [{"offer": ["amount:10"]}]}  # fmt: skip
    version = await stores[0].save_draft(policy, "admin-1", "", WALL)
    await stores[0].publish(version, "admin-1", WALL)
    facts = Facts("delivery_late", "apology", "warning", "standard", None, Decimal("50"), "EUR")
    try:
        grants = await asyncio.gather(
            *(
                stores[n % 2].grant(f"dec-{n}", f"c-{n}", None, facts, WALL, "secret")
                for n in range(40)
            )
        )
        again = await stores[1].grant("dec-0", "c-0", None, facts, WALL, "secret")
        spent = await stores[0].spent("2026-11-01")
    finally:
        for engine in engines:
            await engine.dispose()
    granted = [g for g in grants if g is not None and g.kind == "amount"]
    assert len(granted) == 10 and spent == Decimal("100")
    assert len({g.code for g in granted}) == 10  # one single-use code each
    assert again == grants[0]  # a decision is granted once


async def test_a_send_a_providers_report_settles_still_asks_for_its_remedy(
    outreach, sendgrid_double
):
    """The provider took the message but its answer was lost (in doubt); its delivery
    report settles it: the shop's systems are asked to honour the remedy all the same."""
    from tests.doubles.base import Fault

    sendgrid_double.inject(Fault(kind="accept_then_status", status=500))
    await outreach.delivery.on_request(request("r-c-1", customer="c-1", cause="i-1"), NOON)
    row = await outreach.ledger.by_request("r-c-1")
    assert row.status == "in_doubt"
    assert await outreach.delivery.on_delivery_status(
        row.decision_id, "delivered", NOON, provider_message_id="sg-1"
    )
    (delivered,) = [e for e in await outreach.ledger.events_of(row.decision_id)
                    if e.status == "delivered"]  # fmt: skip
    assert delivered.payload["remedy"]["kind"] == "credit"
    assert [a.data["action"] for a in action_events(delivered)] == [
        "carrier_inquiry",
        "store_credit",
    ]
