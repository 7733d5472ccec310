"""Corrections through the official SDKs against the provider doubles, on SQLite and
PostgreSQL: "your parcel is lost" and then it is delivered — one apology and one
correction, on the same channel, in the customer's language, however often the closing
arrives; a late parcel delivered needs none; a message that never went out needs none;
the cap does not hold a correction back, and a channel the customer left does. Only what
the doubles accepted and what the ledger holds are checked."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.envelope import new_event
from services.outreach.entrypoints.http import _explain
from tests.integration.outreach import test_delivery
from tests.outreach_requests import EMAIL, NIGHT, NOON, SMS, plan, request

outreach = test_delivery.outreach  # a real outreach build, on SQLite and PostgreSQL

pytestmark = pytest.mark.integration
LATER = NOON + timedelta(hours=5)


def lost(rid: str, cause: str, at=NOON):
    event = request(rid, kind="carrier_exception", severity="critical", cause=cause, at=at)
    event.data["context"]["incident"]["facts"] = {"status": "exception", "substatus": "lost"}
    return event


def closed(cause: str, kind: str, resolution: str, at=LATER, n: int = 1):
    return new_event(
        type="incident.resolved", source="/t", subject=cause, time=at, id=f"res-{cause}-{n}",
        data={
            "incident_id": cause, "revision": 2, "kind": kind, "severity": "info",
            "customer_id": "c-1", "order_id": "o-1", "status": "resolved",
            "detected_at": at.isoformat(), "explanation": resolution, "resolution": resolution,
        },
    )  # fmt: skip


def bodies(double) -> list[str]:
    return [" ".join(c["value"] for c in m["json"]["content"]) for m in double.messages]


async def test_a_lost_parcel_delivered_after_all_gets_one_correction(outreach, sendgrid_double):
    await outreach.delivery.on_incident(closed("inc-late", "delivery_late", "delivered"), NOON)
    await outreach.delivery.on_request(lost("req-lost", "inc-lost"), NOON)
    apology = await outreach.ledger.by_request("req-lost")
    assert apology.status == "sent" and apology.channel == "email"
    assert "verloren" in bodies(sendgrid_double)[0]
    for n in (1, 2, 3):  # the closing delivered again (a redelivery, a replay)
        await outreach.delivery.on_incident(
            closed("inc-lost", "carrier_exception", "delivered", n=n), LATER
        )
    assert len(sendgrid_double.messages) == 2
    mail = sendgrid_double.messages[1]["json"]
    assert mail["subject"] == "Gute Nachricht zu Ihrer Bestellung o-1"
    text = bodies(sendgrid_double)[1]
    assert "wurde doch zugestellt" in text and "Problem mit dem Paket gemeldet" in text
    assert "Hallo Ada" in text
    # The pair, as explain and the ledger show it.
    rows = await outreach.ledger.history(customer_id="c-1")
    (correction,) = [r for r in rows if r.message_kind == "incident_corrected"]
    assert (correction.status, correction.channel, correction.intent) == (
        "sent", "email", "status_update",
    )  # fmt: skip
    told = correction.request["context"]["correction"]
    assert (told["decision_id"], told["resolution"]) == (apology.decision_id, "delivered")
    assert correction.cause_type == "correction" and correction.cause_kind == "carrier_exception"
    assert mail["custom_args"]["decision_id"] == correction.decision_id
    explained = {d["decision_id"]: d for d in await _explain(outreach, customer_id="c-1")}
    assert explained[correction.decision_id]["corrects"] == apology.decision_id
    assert explained[apology.decision_id]["corrects"] is None


async def test_closings_that_contradict_nothing_are_not_corrected(outreach, sendgrid_double):
    # A late parcel that arrives: the apology stands.
    await outreach.delivery.on_request(request("req-late", cause="inc-late"), NOON)
    await outreach.delivery.on_incident(closed("inc-late", "delivery_late", "delivered"), LATER)
    # A "lost" message held by quiet hours (SMS only), retracted before it went out.
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(lost("req-night", "inc-night", at=NIGHT), NIGHT)
    held = await outreach.ledger.by_request("req-night")
    assert held.status == "scheduled"
    night_over = NIGHT + timedelta(minutes=30)
    await outreach.delivery.on_incident(
        closed("inc-night", "carrier_exception", "retracted", at=night_over), night_over
    )
    rows = await outreach.ledger.history(customer_id="c-1")
    assert [r.message_kind for r in rows if r.message_kind == "incident_corrected"] == []
    assert (await outreach.ledger.by_request("req-night")).reason == "already_resolved"
    assert len(sendgrid_double.messages) == 1


async def test_the_cap_does_not_hold_a_correction_back_a_channel_left_does(
    outreach, sendgrid_double, twilio_double
):
    # Three messages reach the cap (3 in the window); the correction still goes.
    for n in (1, 2):
        await outreach.delivery.on_request(request(f"req-{n}", cause=f"inc-{n}"), NOON)
    await outreach.delivery.on_request(lost("req-lost", "inc-lost"), NOON)
    await outreach.delivery.on_request(request("req-4", cause="inc-4"), NOON)
    assert (await outreach.ledger.by_request("req-4")).reason == "frequency_cap"
    await outreach.delivery.on_incident(closed("inc-lost", "shipment_stalled", "retracted"), LATER)
    assert len(sendgrid_double.messages) == 4
    assert "gegenstandslos" in bodies(sendgrid_double)[-1]

    # Told by email; the customer then withdrew email: no correction by SMS instead.
    await outreach.delivery.on_request(lost("req-gone", "inc-gone"), NOON)
    outreach.plans.plans[("c-1", "*")] = plan(
        EMAIL.__class__("email", EMAIL.address, False, "opted_out"), SMS
    )
    await outreach.delivery.on_incident(closed("inc-gone", "carrier_exception", "delivered"), LATER)
    rows = await outreach.ledger.history(customer_id="c-1")
    (gone,) = [r for r in rows if r.cause_id == "inc-gone:corrected"]
    assert (gone.status, gone.reason) == ("suppressed", "no_contact")
    assert "not usable" in gone.rule and twilio_double.messages == []
