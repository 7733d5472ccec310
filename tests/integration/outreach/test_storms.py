"""Storms through the official SDKs against the provider doubles, on SQLite and
PostgreSQL: a hub outage's incidents counted in the database make a storm; above the
approval size its messages wait until an operator approves (then each customer gets one
message naming each of their orders, with the operator's note in their language), holds
or cancels it; below it they flow. Only what the doubles accepted and what the ledger
and the storm tables hold are checked."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from common.envelope import new_event
from services.outreach.domain.decisions import ChannelOption
from services.outreach.domain.storms import Action, StormPolicy
from tests.integration.outreach import test_delivery
from tests.outreach_requests import NOON, plan, request

outreach = test_delivery.outreach  # a real outreach build, on SQLite and PostgreSQL

pytestmark = pytest.mark.integration
LEIPZIG = "hub:dhl@Leipzig hub"
NOTES = {
    "en": "DHL's Leipzig hub was closed by a power cut; DHL expects to catch up by Friday.",
    "de": "Das DHL-Zentrum Leipzig war wegen eines Stromausfalls geschlossen.",
}


def opened(cause: str, customer: str, order: str, at, location: str = "Leipzig hub"):
    """outreach.incidents: a parcel held up at `location` (a carrier exception)."""
    return new_event(
        type="incident.opened", source="/t", subject=cause, time=at, id=f"open-{cause}",
        data={
            "incident_id": cause, "revision": 1, "kind": "carrier_exception",
            "severity": "warning", "customer_id": customer, "order_id": order,
            "status": "open", "detected_at": at.isoformat(), "explanation": "held up",
            "facts": {"carrier": "DHL", "location": location, "substatus": "carrier_delay"},
        },
    )  # fmt: skip


def about(cause: str, customer: str, order: str, at):
    event = request(f"req-{cause}", kind="carrier_exception", cause=cause, customer=customer, at=at)
    event.data["order_id"] = order
    event.data["context"]["order"]["order_id"] = order
    return event


def customers(app, *specs: tuple[str, str, str]) -> None:
    """(customer, channel, locale): each with their own address."""
    for customer, channel, locale in specs:
        address = f"{customer}@example.com" if channel == "email" else f"+49151000{customer[-2:]}"
        app.plans.plans[(customer, "*")] = dataclasses.replace(
            plan(), customer_id=customer, locale=locale,
            channels=(ChannelOption(channel, address, True, "ok"),),
        )  # fmt: skip


def storms(app, approval_size: int, gather_s: float = 60) -> None:
    app.storms.policy = StormPolicy(3, timedelta(minutes=10), approval_size, timedelta(minutes=30))
    app.delivery.policy = dataclasses.replace(
        app.delivery.policy, gather=timedelta(seconds=gather_s)
    )


async def outage(app, parcels: list[tuple[str, str]], start=NOON) -> None:
    """Each (customer, order) has a parcel held up at the hub, a second apart."""
    for n, (customer, order) in enumerate(parcels):
        at = start + timedelta(seconds=n)
        await app.delivery.on_incident(opened(f"inc-{order}", customer, order, at), at)
        await app.delivery.on_request(about(f"inc-{order}", customer, order, at), at)


def texts(sendgrid_double, twilio_double) -> dict[str, str]:
    """What each address received (it must be one message each)."""
    out: dict[str, str] = {}
    for mail in sendgrid_double.messages:
        (to,) = [p["to"][0]["email"] for p in mail["json"]["personalizations"]]
        assert to not in out, f"{to} got two messages"
        out[to] = " ".join(c["value"] for c in mail["json"]["content"])
    for sms in twilio_double.messages:
        assert sms["To"] not in out, f"{sms['To']} got two messages"
        out[sms["To"]] = sms["Body"]
    return out


PARCELS = [("c-01", "o-1"), ("c-01", "o-2"), ("c-02", "o-3"), ("c-03", "o-4"), ("c-04", "o-5")]


async def test_a_big_storm_waits_for_approval_then_each_customer_gets_one_message(
    outreach, sendgrid_double, twilio_double
):
    storms(outreach, approval_size=4)
    customers(outreach, ("c-01", "email", "de-DE"), ("c-02", "email", "en-GB"),
              ("c-03", "sms", "en-GB"), ("c-04", "sms", "fr-FR"))  # fmt: skip
    await outreach.delivery.on_incident(opened("inc-x", "c-09", "o-9", NOON, "Kassel hub"), NOON)
    await outage(outreach, PARCELS)
    (storm,) = [s for s in await outreach.storms.recent() if s.scope == LEIPZIG]
    assert (storm.state, storm.size) == ("awaiting", 5)
    assert (await outreach.storms.storms_of(["inc-x"])) == {}  # another hub: alone

    await outreach.delivery.send_due(NOON + timedelta(minutes=5))
    assert sendgrid_double.messages == [] and twilio_double.messages == []
    held = await outreach.ledger.storm_held()
    assert held == {storm.storm_id: 5}
    await outreach.delivery.send_due(NOON + timedelta(hours=2))  # nothing leaves by itself
    assert sendgrid_double.messages == [] and twilio_double.messages == []

    approved_at = NOON + timedelta(hours=2, minutes=1)
    await outreach.storms.act(storm.storm_id, Action.APPROVE, "oncall", approved_at, notes=NOTES)
    await outreach.delivery.send_due(approved_at)
    await outreach.delivery.send_due(approved_at + timedelta(minutes=2))  # after the gathering
    got = texts(sendgrid_double, twilio_double)
    assert set(got) == {"c-01@example.com", "c-02@example.com", "+4915100003", "+4915100004"}
    assert "o-1" in got["c-01@example.com"] and "o-2" in got["c-01@example.com"]
    assert NOTES["de"] in got["c-01@example.com"] and NOTES["en"] in got["c-02@example.com"]
    assert NOTES["en"] in got["+4915100003"]
    assert NOTES["en"] not in got["+4915100004"]  # no note in French: none at all
    rows = {r.order_id: r for c in ("c-01", "c-02") for r in await outreach.ledger.history(c)}
    assert {rows["o-1"].reason, rows["o-2"].reason} == {None, "consolidated"}
    assert {r.storm_id for r in rows.values()} == {storm.storm_id}
    assert await outreach.ledger.storm_held() == {}
    await outreach.delivery.send_due(approved_at + timedelta(hours=1))
    assert len(texts(sendgrid_double, twilio_double)) == 4  # nothing goes twice
    (entry,) = await outreach.storms.log(storm.storm_id)
    assert (entry.actor, entry.action, entry.after, entry.notes) == (
        "oncall", "approve", "approved", NOTES,
    )  # fmt: skip


async def test_a_small_storm_flows_and_a_cancelled_one_sends_nothing_more(
    outreach, sendgrid_double, twilio_double
):
    storms(outreach, approval_size=0, gather_s=0)
    customers(outreach, ("c-01", "email", "en-GB"), ("c-02", "email", "en-GB"),
              ("c-03", "email", "en-GB"), ("c-04", "email", "en-GB"))  # fmt: skip
    await outage(outreach, PARCELS[2:])  # three: a storm, which flows
    (storm,) = await outreach.storms.recent()
    assert (storm.state, storm.size) == ("flowing", 3)
    assert len(texts(sendgrid_double, twilio_double)) == 3
    named = [r.storm_id for c in ("c-02", "c-03", "c-04") for r in await outreach.ledger.history(c)]
    assert named[-1] == storm.storm_id  # the one that made the storm and after are named

    # An operator cancels it (the carrier writes to everyone itself): what comes next of
    # the storm ends, named; the reason is on the row.
    later = NOON + timedelta(minutes=3)
    await outreach.storms.act(storm.storm_id, Action.CANCEL, "oncall", later, reason="DHL writes")
    await outage(outreach, PARCELS[:2], start=later)
    assert len(texts(sendgrid_double, twilio_double)) == 3
    rows = await outreach.ledger.history("c-01")
    assert {(r.status, r.reason) for r in rows} == {("suppressed", "storm_cancelled")}
    assert all("oncall" in r.rule for r in rows)

    # An erased customer's incidents leave the counts; the storm keeps its size.
    erased = new_event(type="customer.erased", source="/t", subject="c-02", time=later,
                       id="erase-c-02", data={"customer_id": "c-02"})  # fmt: skip
    await outreach.delivery.on_customer_event(erased)
    assert await outreach.storms.storms_of(["inc-o-3"]) == {}
    assert {m.customer_id for m in await outreach.storms.members(storm)} == {"c-01", "c-03", "c-04"}
    assert (await outreach.storms.get(storm.storm_id)).size == 5


async def test_an_operator_holds_a_small_storm_and_releases_it(
    outreach, sendgrid_double, twilio_double
):
    storms(outreach, approval_size=0)
    customers(outreach, ("c-01", "email", "en-GB"), ("c-02", "email", "en-GB"),
              ("c-03", "email", "en-GB"), ("c-04", "email", "en-GB"))  # fmt: skip
    await outage(outreach, PARCELS[2:])
    (storm,) = await outreach.storms.recent()
    await outreach.storms.act(storm.storm_id, Action.HOLD, "oncall", NOON + timedelta(seconds=30))
    await outreach.delivery.send_due(NOON + timedelta(minutes=2))
    assert sendgrid_double.messages == []
    assert await outreach.ledger.storm_held() == {storm.storm_id: 3}
    await outreach.storms.act(storm.storm_id, Action.APPROVE, "lead", NOON + timedelta(minutes=3))
    await outreach.delivery.send_due(NOON + timedelta(minutes=3))
    await outreach.delivery.send_due(NOON + timedelta(minutes=5))
    assert len(texts(sendgrid_double, twilio_double)) == 3
    assert [e.action for e in await outreach.storms.log(storm.storm_id)] == ["hold", "approve"]


async def test_a_customers_held_messages_are_released_together_however_long_it_takes(
    outreach, sendgrid_double, twilio_double
):
    """A release of thousands takes many rounds, longer than the gathering window: a
    customer's messages are still released in one round, and merge."""
    storms(outreach, approval_size=4)
    customers(outreach, ("c-01", "email", "en-GB"), ("c-02", "email", "en-GB"),
              ("c-03", "email", "en-GB"), ("c-04", "email", "en-GB"))  # fmt: skip
    await outage(outreach, [PARCELS[0], *PARCELS[2:], PARCELS[1]])  # c-01's first and last
    (storm,) = await outreach.storms.recent()
    await outreach.delivery.send_due(NOON + timedelta(minutes=2))
    await outreach.storms.act(storm.storm_id, Action.APPROVE, "oncall", NOON + timedelta(hours=1))
    outreach.delivery.release_batch = 1  # one customer a round, rounds minutes apart
    for n in range(8):
        await outreach.delivery.send_due(NOON + timedelta(hours=1, minutes=2 * n))
    got = texts(sendgrid_double, twilio_double)
    assert len(got) == 4 and "o-1" in got["c-01@example.com"] and "o-2" in got["c-01@example.com"]


async def test_a_storm_approved_days_later_still_sends_and_a_pause_is_not_starved(
    outreach, sendgrid_double, twilio_double
):
    """Held for days (the expiry starts again at the release, as after a resume); a
    storm's held messages never crowd out those a pause held."""
    customers(outreach, *((f"c-0{n}", "email", "en-GB") for n in range(1, 6)))
    storms(outreach, approval_size=3, gather_s=0)
    # Sent at once: the first two leave, from the third (a storm by then) they are held.
    await outage(outreach, [*PARCELS[2:4], PARCELS[0], PARCELS[1], PARCELS[4]])
    (storm,) = await outreach.storms.recent()
    sent_before = len(sendgrid_double.messages)
    assert sent_before == 2 and await outreach.ledger.storm_held() == {storm.storm_id: 3}

    outreach.controls.now = outreach.wall.now
    await outreach.controls.pause("all", actor="oncall", reason="provider trouble")
    await outreach.controls_watcher.refresh()
    later = NOON + timedelta(hours=1)
    await outreach.delivery.on_request(about("inc-o-9", "c-05", "o-9", later), later)
    await outreach.controls.resume("all", actor="oncall", ramp_minutes=0)
    await outreach.controls_watcher.refresh()
    outreach.delivery.release_batch = 1  # the storm's held would fill every round
    await outreach.delivery.send_due(later + timedelta(minutes=1))
    assert [m for m in texts(sendgrid_double, twilio_double) if "c-05" in m] == ["c-05@example.com"]

    days = NOON + timedelta(days=4)
    await outreach.storms.act(storm.storm_id, Action.APPROVE, "oncall", days)
    for n in range(4):
        await outreach.delivery.send_due(days + timedelta(minutes=n))
    assert len(texts(sendgrid_double, twilio_double)) == 5  # c-01 … c-05, one each
    assert await outreach.ledger.storm_held() == {}


@pytest.mark.postgres
async def test_two_workers_counting_one_burst_make_one_storm(postgres_database_url):
    """Two workers count the incidents of one burst at the same time (PostgreSQL): the
    burst of exactly the rate makes its storm, once, with every incident in it."""
    from services.outreach.adapters.db import create_engine, create_schema, session_factory
    from services.outreach.adapters.storms import StormStore

    engine = create_engine(postgres_database_url)
    await create_schema(engine)
    policy = StormPolicy(20, timedelta(minutes=10), 0, timedelta(minutes=30))
    workers = [StormStore(session_factory(engine), policy) for _ in range(2)]

    async def count(n: int) -> None:
        await workers[n % 2].record(LEIPZIG, incident_id=f"inc-{n}", customer_id=f"c-{n}",
                                    order_id=f"o-{n}", kind="carrier_exception",
                                    at=NOON + timedelta(seconds=n))  # fmt: skip

    await asyncio.gather(*(count(n) for n in range(20)))
    (storm,) = await workers[0].recent()
    assert (storm.size, storm.started_at) == (20, NOON)
    assert len(await workers[1].storms_of(f"inc-{n}" for n in range(20))) == 20
    await engine.dispose()
