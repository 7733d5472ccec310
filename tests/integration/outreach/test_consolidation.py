"""Consolidation through the official SDKs against the provider doubles, on SQLite and
PostgreSQL: what leaves for one customer at one moment leaves as one message that names
each order — released together at the end of quiet hours or by a resume, or gathered
for OUTREACH_CONSOLIDATE_S after the first; two notices for one parcel minutes apart are
one message; what comes after the message left goes on its own. Only what the doubles
accepted and what the ledger holds are checked."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from tests.integration.outreach import test_delivery
from tests.outreach_requests import NIGHT, NOON, SMS, plan, request

outreach = test_delivery.outreach  # a real outreach build, on SQLite and PostgreSQL

pytestmark = pytest.mark.integration
MORNING = NIGHT + timedelta(hours=10)  # 09:30 in Berlin: the quiet hours are over


def about(order_id: str, rid: str, **kwargs):
    """A request about the customer's order `order_id` (its own incident)."""
    event = request(rid, cause=f"inc-{order_id}", **kwargs)
    event.data["order_id"] = order_id
    event.data["context"]["order"]["order_id"] = order_id
    return event


def gathering(app, seconds: float) -> None:
    app.delivery.policy = dataclasses.replace(
        app.delivery.policy, gather=timedelta(seconds=seconds)
    )


async def by_request(app) -> dict:
    return {r.request_id: r for r in await app.ledger.history(customer_id="c-1")}


async def test_two_orders_held_by_quiet_hours_leave_as_one_sms(outreach, twilio_double):
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(about("o-1", "req-1"), NIGHT)
    await outreach.delivery.on_request(
        about("o-2", "req-2", severity="critical"), NIGHT + timedelta(minutes=5)
    )
    assert {r.status for r in (await by_request(outreach)).values()} == {"scheduled"}
    await outreach.delivery.send_due(MORNING)
    (sms,) = twilio_double.messages
    body = sms["Body"]
    assert "o-2" in body and "Außerdem: Bestellung o-1 ist verspätet." in body
    rows = await by_request(outreach)
    # The critical one carries the other, which ends named in it.
    assert rows["req-2"].status == "sent" and rows["req-2"].body_text == body
    assert (rows["req-1"].status, rows["req-1"].reason) == ("suppressed", "consolidated")
    assert rows["req-2"].decision_id in rows["req-1"].rule
    also = rows["req-2"].request["context"]["also"]
    assert [(a["order_id"], a["decision_id"]) for a in also] == [("o-1", rows["req-1"].decision_id)]
    await outreach.delivery.send_due(MORNING + timedelta(minutes=1))
    assert len(twilio_double.messages) == 1  # nothing goes twice


async def test_messages_gathered_for_the_window_become_one_email(outreach, sendgrid_double):
    gathering(outreach, 60)
    await outreach.delivery.on_request(about("o-1", "req-1"), NOON)
    await outreach.delivery.on_request(about("o-2", "req-2"), NOON + timedelta(seconds=20))
    await outreach.delivery.on_request(about("o-3", "req-3"), NOON + timedelta(seconds=40))
    rows = await by_request(outreach)
    assert all(r.status == "scheduled" and r.rule.startswith("gathering") for r in rows.values())
    await outreach.delivery.send_due(NOON + timedelta(seconds=30))
    assert sendgrid_double.messages == []  # the first waits its 60 s
    await outreach.delivery.send_due(NOON + timedelta(seconds=60))
    (mail,) = sendgrid_double.messages
    text = " ".join(c["value"] for c in mail["json"]["content"])
    assert "Diese Nachricht betrifft auch Ihre weiteren Bestellungen:" in text
    assert "- Bestellung o-2 ist verspätet" in text and "- Bestellung o-3 ist verspätet" in text
    assert "<li>Bestellung o-3 ist verspätet</li>" in text  # the HTML part names them too
    rows = await by_request(outreach)
    assert [rows[r].status for r in ("req-1", "req-2", "req-3")] == [
        "sent", "suppressed", "suppressed",
    ]  # fmt: skip

    # What comes after the message left goes on its own, gathered again.
    later = NOON + timedelta(minutes=5)
    await outreach.delivery.on_request(about("o-4", "req-4"), later)
    await outreach.delivery.send_due(later + timedelta(seconds=60))
    assert len(sendgrid_double.messages) == 2
    text = " ".join(c["value"] for c in sendgrid_double.messages[1]["json"]["content"])
    assert "o-4" in text and "weiteren Bestellungen" not in text


async def test_two_notices_for_one_parcel_minutes_apart_are_one_message(outreach, sendgrid_double):
    gathering(outreach, 300)
    first = request("req-p1", kind="awaiting_pickup", intent="status_update", cause="inc-p")
    second = request(
        "req-p2", kind="awaiting_pickup", intent="status_update", cause="inc-p", revision=2,
        at=NOON + timedelta(minutes=3),
    )  # fmt: skip
    await outreach.delivery.on_request(first, NOON)
    await outreach.delivery.on_request(second, NOON + timedelta(minutes=3))
    await outreach.delivery.send_due(NOON + timedelta(minutes=10))
    assert len(sendgrid_double.messages) == 1
    rows = await by_request(outreach)
    assert (rows["req-p1"].status, rows["req-p1"].reason) == ("suppressed", "superseded")
    assert rows["req-p2"].status == "sent"


async def test_messages_held_by_a_pause_are_merged_at_the_resume(outreach, sendgrid_double):
    outreach.controls.now = outreach.wall.now
    await outreach.controls.pause("all", actor="oncall", reason="carrier hub outage")
    await outreach.controls_watcher.refresh()
    for n in (1, 2, 3):
        await outreach.delivery.on_request(about(f"o-{n}", f"req-{n}"), NOON + timedelta(minutes=n))
    await outreach.controls.resume("all", actor="oncall", ramp_minutes=0)
    await outreach.controls_watcher.refresh()
    await outreach.delivery.send_due(NOON + timedelta(minutes=10))
    (mail,) = sendgrid_double.messages
    text = " ".join(c["value"] for c in mail["json"]["content"])
    assert all(f"o-{n}" in text for n in (1, 2, 3))
    statuses = sorted(r.status for r in (await by_request(outreach)).values())
    assert statuses == ["sent", "suppressed", "suppressed"]
