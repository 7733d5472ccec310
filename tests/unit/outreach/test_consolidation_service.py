"""Consolidation in the delivery service over the in-memory ledger: nothing carried is
lost when the carrier does not leave (expired, suppressed at its last look, refused by
the provider), and what a message carried before stays named when another carries it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from common.clock import FixedClock
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.memory_ledger import InMemoryLedger
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import RecordingSender, TransientProviderError
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from tests.outreach_requests import NIGHT, SMS, plan, request

WAKE = datetime(2026, 3, 5, 7, 0, tzinfo=UTC)  # 08:00 in Berlin: quiet hours over


async def build(tmp_path, gather: float = 0.0):
    sms = RecordingSender("sms")
    app = bootstrap(
        Settings(data_dir=tmp_path, public_base_url="http://127.0.0.1:9", consolidate_s=gather),
        plans=StaticContactPlans({("c-1", "*"): plan(SMS)}),
        senders={"email": sms, "sms": sms, "whatsapp": sms},
        wall=FixedClock(datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
        renderer=InlineRenderer(),
        optouts=RecordingOptOuts(),
        ledger=InMemoryLedger(),
    )
    await app.start()
    return app, sms


async def status(app, rid):
    row = await app.ledger.by_request(rid)
    return row.status, row.reason


async def test_an_expired_message_carries_nothing(tmp_path):
    app, sms = await build(tmp_path, gather=60)
    try:
        await app.delivery.on_request(request("req-1", severity="critical", cause="inc-1",
                                              at=NIGHT), NIGHT)  # fmt: skip
        later = NIGHT + timedelta(days=2, hours=12)  # past its two days: expired
        await app.delivery.on_request(request("req-2", cause="inc-2", at=later), later)
        await app.delivery.send_due(later + timedelta(seconds=60))
        assert await status(app, "req-2") == ("sent", None)
        assert await status(app, "req-1") == ("suppressed", "quiet_hours_expired")
        assert len(sms.sent) == 1
    finally:
        await app.stop()


async def test_a_carrier_stopped_at_its_last_look_leaves_the_carried_to_go_alone(tmp_path):
    app, sms = await build(tmp_path)
    try:
        await app.delivery.on_request(request("req-1", severity="critical", cause="inc-1",
                                              at=NIGHT), NIGHT)  # fmt: skip
        await app.delivery.on_request(request("req-2", cause="inc-2", at=NIGHT), NIGHT)
        await app.ledger.mark_resolved("inc-1", NIGHT, "delivered")  # seen at the last look
        await app.delivery.send_due(WAKE)
        assert await status(app, "req-1") == ("suppressed", "already_resolved")
        assert sms.sent == [] and (await status(app, "req-2"))[0] == "scheduled"
        await app.delivery.send_due(WAKE + timedelta(minutes=6))
        assert await status(app, "req-2") == ("sent", None) and len(sms.sent) == 1
    finally:
        await app.stop()


async def test_what_a_refused_carrier_carried_stays_named(tmp_path):
    app, sms = await build(tmp_path, gather=60)
    try:
        for n in (1, 2):
            await app.delivery.on_request(request(f"req-{n}", cause=f"inc-{n}", at=NIGHT), NIGHT)
        sms.errors.append(TransientProviderError("429", retry_after=30, throttled=True))
        await app.delivery.send_due(WAKE)  # req-1 carries req-2 and is refused
        assert await status(app, "req-1") == ("scheduled", None)
        await app.delivery.send_due(WAKE + timedelta(minutes=1))  # its retry leaves
        (carrier,) = sms.sent  # both requests are about order o-1 here
        assert carrier.text.endswith("Außerdem: Bestellung o-1 ist verspätet.")
        await app.delivery.send_due(WAKE + timedelta(minutes=6))  # the carried one's turn
        assert await status(app, "req-2") == ("suppressed", "consolidated")
        assert len(sms.sent) == 1
    finally:
        await app.stop()


async def test_an_incident_named_in_another_message_is_corrected_alone(tmp_path):
    from common.envelope import new_event

    app, sms = await build(tmp_path)
    try:
        await app.delivery.on_request(request("req-1", severity="critical", cause="inc-1",
                                              at=NIGHT), NIGHT)  # fmt: skip
        other = request("req-2", cause="inc-2", at=NIGHT)
        other.data["order_id"] = other.data["context"]["order"]["order_id"] = "o-2"
        await app.delivery.on_request(other, NIGHT)
        await app.delivery.send_due(WAKE)
        (carrier,) = sms.sent
        assert "Bestellung o-2 ist verspätet" in carrier.text
        later = WAKE + timedelta(hours=2)
        retracted = new_event(
            type="incident.resolved", source="/t", subject="inc-2", time=later, id="res-2",
            data={"incident_id": "inc-2", "revision": 2, "kind": "delivery_late",
                  "severity": "info", "customer_id": "c-1", "order_id": "o-2",
                  "status": "resolved", "detected_at": later.isoformat(),
                  "explanation": "it was not late", "resolution": "retracted"},
        )  # fmt: skip
        await app.delivery.on_incident(retracted, later)
        await app.delivery.on_incident(retracted, later)  # again: still one
        assert len(sms.sent) == 2
        correction = sms.sent[1].text
        assert "o-2" in correction and "o-1" not in correction and "Außerdem" not in correction
        row = await app.ledger.by_request("correction-" + (await app.ledger.by_request(
            "req-2")).decision_id)  # fmt: skip
        told = row.request["context"]["correction"]
        assert told["decision_id"] == (await app.ledger.by_request("req-1")).decision_id
    finally:
        await app.stop()
