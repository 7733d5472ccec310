"""The last look at the moment of sending (SPEC §6): a message held by quiet hours, a
pause or a retry is checked again before it leaves — resolution, opt-outs and consent
as of then, a newer revision (which supersedes it), quiet hours — and a provider's late,
repeated or reordered report never moves a message backwards (real ledger on SQLite and
PostgreSQL, official SDKs against the doubles)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.outreach.domain.decisions import ChannelOption
from tests.integration.outreach import test_delivery
from tests.outreach_requests import EMAIL, NIGHT, NOON, SMS, plan, request

outreach = test_delivery.outreach  # the fixture: the same app on SQLite and PostgreSQL

pytestmark = pytest.mark.integration
EIGHT = datetime(2026, 3, 5, 7, 0, tzinfo=UTC)  # 08:00 in Berlin, the morning after NIGHT
SMS_OPTED_OUT = ChannelOption("sms", SMS.address, False, "opted_out")


async def row_of(app, rid="req-1"):
    return await app.ledger.by_request(rid)


async def test_an_opt_out_during_quiet_hours_stops_the_held_sms(outreach, twilio_double):
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(request(at=NIGHT), NIGHT)
    assert (await row_of(outreach)).status == "scheduled"
    outreach.plans.plans[("c-1", "*")] = plan(SMS_OPTED_OUT)  # STOP at 02:00
    await outreach.delivery.send_due(EIGHT)
    row = await row_of(outreach)
    assert (row.status, row.reason) == ("suppressed", "opted_out")
    assert twilio_double.messages == []


async def test_a_held_sms_whose_channel_was_opted_out_goes_by_the_next_usable_one(
    outreach, twilio_double, sendgrid_double
):
    outreach.plans.plans[("c-1", "*")] = plan(SMS, EMAIL)
    await outreach.delivery.on_request(request(at=NIGHT), NIGHT)
    outreach.plans.plans[("c-1", "*")] = plan(SMS_OPTED_OUT, EMAIL)
    await outreach.delivery.send_due(EIGHT)
    row = await row_of(outreach)
    assert (row.status, row.channel) == ("sent", "email")
    assert twilio_double.messages == [] and len(sendgrid_double.messages) == 1


async def test_withdrawn_marketing_consent_stops_a_held_check_in(outreach, twilio_double):
    outreach.plans.plans[("c-1", "*")] = plan(SMS, opt_in=True)
    check_in = request("req-m", kind="churn_risk", intent="check_in", offer="standard", at=NIGHT)
    await outreach.delivery.on_request(check_in, NIGHT)
    assert (await row_of(outreach, "req-m")).status == "scheduled"
    outreach.plans.plans[("c-1", "*")] = plan(SMS, opt_in=False)
    await outreach.delivery.send_due(EIGHT)
    row = await row_of(outreach, "req-m")
    assert (row.status, row.reason) == ("suppressed", "no_consent")
    assert twilio_double.messages == []


async def test_a_retry_that_falls_due_at_night_waits_for_the_morning(outreach, twilio_double):
    evening = datetime(2026, 3, 4, 19, 59, tzinfo=UTC)  # 20:59 in Berlin
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    twilio_double.fail_next(1, status=429, retry_after=120)
    await outreach.delivery.on_request(request(at=evening), evening)
    assert (await row_of(outreach)).status == "scheduled"
    await outreach.delivery.send_due(evening + timedelta(minutes=5))  # 21:04: quiet
    row = await row_of(outreach)
    assert (row.status, row.send_at) == ("scheduled", EIGHT)
    assert twilio_double.messages == []
    await outreach.delivery.send_due(EIGHT)
    assert (await row_of(outreach)).status == "sent" and len(twilio_double.messages) == 1


async def test_of_two_held_revisions_only_the_newest_is_sent(outreach, twilio_double):
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(request("req-r1", revision=1, at=NIGHT), NIGHT)
    later = NIGHT + timedelta(hours=3)
    await outreach.delivery.on_request(request("req-r2", revision=2, at=later), later)
    first, second = await row_of(outreach, "req-r1"), await row_of(outreach, "req-r2")
    assert (first.status, first.reason) == ("suppressed", "superseded")
    assert second.status == "scheduled"
    await outreach.delivery.send_due(EIGHT)
    assert (await row_of(outreach, "req-r2")).status == "sent"
    assert len(twilio_double.messages) == 1


async def test_an_older_revision_read_after_a_newer_one_is_superseded(outreach, sendgrid_double):
    await outreach.delivery.on_request(request("req-r2", revision=2), NOON)
    await outreach.delivery.on_request(request("req-r1", revision=1), NOON)
    older = await row_of(outreach, "req-r1")
    assert (older.status, older.reason) == ("suppressed", "superseded")
    assert len(sendgrid_double.messages) == 1


async def test_a_newer_revision_replaces_held_ones_without_counting_them_against_the_cap(
    outreach, twilio_double
):
    """Paused, three revisions of one incident arrive; on resume only the newest goes,
    although two other messages already fill the cap up to the third."""
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    for i in range(2):
        await outreach.delivery.on_request(request(f"other-{i}", cause=f"inc-o{i}"), NOON)
    await outreach.controls.pause("all", actor="oncall", reason="carrier feed check")
    await outreach.controls_watcher.refresh()
    for revision in (1, 2, 3):
        await outreach.delivery.on_request(request(f"req-r{revision}", revision=revision), NOON)
    await outreach.controls.resume("all", actor="oncall", ramp_minutes=0)
    await outreach.controls_watcher.refresh()
    await outreach.delivery.send_due(NOON + timedelta(minutes=1))
    rows = {r: await row_of(outreach, f"req-r{r}") for r in (1, 2, 3)}
    assert [rows[r].status for r in (1, 2, 3)] == ["suppressed", "suppressed", "sent"]
    assert {rows[1].reason, rows[2].reason} == {"superseded"}
    assert len(twilio_double.messages) == 3


async def test_a_late_failed_report_never_moves_a_delivered_message_back(outreach, sendgrid_double):
    await outreach.delivery.on_request(request(), NOON)
    row = await row_of(outreach)
    assert await outreach.delivery.on_delivery_status(row.decision_id, "delivered", NOON)
    assert not await outreach.delivery.on_delivery_status(
        row.decision_id, "failed", NOON, reason="sendgrid_bounce"
    )
    assert not await outreach.delivery.on_delivery_status(row.decision_id, "accepted", NOON)
    assert not await outreach.delivery.on_delivery_status(row.decision_id, "delivered", NOON)
    row = await row_of(outreach)
    events = [e.status for e in await outreach.ledger.events_of(row.decision_id)]
    assert row.status == "delivered" and events == ["decided", "sending", "sent", "delivered"]


async def test_a_resolution_between_decision_and_claim_stops_the_message(outreach, sendgrid_double):
    """The incident closed after the decision was recorded and before the worker claimed
    the send (the last look reads the ledger's resolutions again)."""
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(request(at=NIGHT), NIGHT)
    await outreach.ledger.mark_resolved("inc-1", NIGHT, "delivered")
    await outreach.delivery.send_due(EIGHT)
    row = await row_of(outreach)
    assert (row.status, row.reason) == ("suppressed", "already_resolved")


async def test_a_release_without_preferences_waits_instead_of_sending_unchecked(
    outreach, twilio_double
):
    """08:00, and preferences cannot be asked: the held SMS is not sent without its last
    look, nor lost; it waits and goes once preferences answers again."""
    from services.outreach.adapters.contact_plans import PreferencesUnavailable

    fake = outreach.plans
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(request(at=NIGHT), NIGHT)
    real_get = fake.get

    async def down(*_args):
        raise PreferencesUnavailable("GetContactPlan: UNAVAILABLE")

    fake.get = down
    with pytest.raises(PreferencesUnavailable):
        await outreach.delivery.send_due(EIGHT)
    row = await row_of(outreach)
    assert row.status == "scheduled" and row.send_at > EIGHT and twilio_double.messages == []
    fake.get = real_get
    await outreach.delivery.send_due(row.send_at)
    assert (await row_of(outreach)).status == "sent" and len(twilio_double.messages) == 1
