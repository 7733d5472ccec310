"""Sends left in doubt — the process died between the provider call and recording its
answer — are settled by asking the provider, never by sending blindly again (real
ledger on SQLite and PostgreSQL, official SDKs against the doubles)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.outreach.adapters.providers import MessageSender, OutboundMessage, SendResult
from tests.integration.outreach import test_delivery
from tests.integration.outreach.test_delivery import EMAIL, NOON, SMS, plan, request

outreach = test_delivery.outreach  # the fixture: the same app on SQLite and PostgreSQL

pytestmark = pytest.mark.integration
LATER = NOON + timedelta(minutes=11)  # past OUTREACH_IN_DOUBT_AFTER_S (10 minutes)


class Crash(BaseException):
    """What the handler sees of a SIGKILL: nothing after this point runs."""


class CrashingSender(MessageSender):
    """Dies before (or, with `after`, right after) handing the message over."""

    def __init__(self, inner: MessageSender, *, after: bool) -> None:
        self.inner, self.after, self.provider = inner, after, inner.provider

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.after:
            await self.inner.send(message)
        raise Crash


async def crash_while_sending(outreach, channel: str, *, after: bool) -> str:
    real = outreach.delivery.senders[channel]
    outreach.delivery.senders[channel] = CrashingSender(real, after=after)
    with pytest.raises(Crash):
        await outreach.delivery.on_request(request(), NOON)
    outreach.delivery.senders[channel] = real  # "the restarted process"
    row = await outreach.ledger.by_request("req-1")
    assert row.status == "sending"
    return row.decision_id


async def history(outreach, decision_id):
    return [e.status for e in await outreach.ledger.events_of(decision_id)]


async def test_found_at_twilio_is_recorded_as_sent_and_not_sent_again(outreach, twilio_double):
    outreach.plans_fake.plans[("c-1", "*")] = plan(SMS)
    decision_id = await crash_while_sending(outreach, "sms", after=True)
    assert len(twilio_double.messages) == 1

    assert await outreach.delivery.reconcile_in_doubt(NOON + timedelta(minutes=5)) == 0
    await outreach.delivery.on_request(request(), NOON)  # the redelivered request
    assert await outreach.delivery.reconcile_in_doubt(LATER) == 1
    row = await outreach.ledger.get(decision_id)
    assert row.status == "sent" and row.provider_message_id == twilio_double.messages[0]["sid"]
    assert len(twilio_double.messages) == 1
    assert await history(outreach, decision_id) == ["decided", "sending", "sent"]
    assert await outreach.delivery.reconcile_in_doubt(LATER) == 0


async def test_absent_at_twilio_is_sent_once_now(outreach, twilio_double):
    outreach.plans_fake.plans[("c-1", "*")] = plan(SMS)
    # Another message to the same number must not be taken for ours.
    other = OutboundMessage("d-other", "sms", SMS.address, None, None, "Ihr Gutschein", "x", "y")
    await outreach.delivery.senders["sms"].send(other)
    decision_id = await crash_while_sending(outreach, "sms", after=False)
    assert len(twilio_double.messages) == 1
    assert await outreach.delivery.reconcile_in_doubt(LATER) == 1
    row = await outreach.ledger.get(decision_id)
    assert row.status == "sent" and row.attempts == 2
    assert len(twilio_double.messages) == 2
    assert row.provider_message_id == twilio_double.messages[1]["sid"]
    assert await outreach.delivery.reconcile_in_doubt(LATER + timedelta(minutes=11)) == 0
    assert len(twilio_double.messages) == 2


async def test_email_without_signed_events_is_failed_for_a_person_not_resent(
    outreach, sendgrid_double
):
    outreach.plans_fake.plans[("c-1", "*")] = plan(EMAIL)
    decision_id = await crash_while_sending(outreach, "email", after=True)
    assert await outreach.delivery.reconcile_in_doubt(LATER) == 1
    row = await outreach.ledger.get(decision_id)
    assert row.status == "failed" and row.reason.startswith("in_doubt")
    assert len(sendgrid_double.messages) == 1


async def test_email_with_signed_events_and_none_came_is_sent_again(outreach, sendgrid_double):
    outreach.plans_fake.plans[("c-1", "*")] = plan(EMAIL)
    outreach.delivery.sending.confirmed_by_events = frozenset({"email"})
    decision_id = await crash_while_sending(outreach, "email", after=False)
    assert await outreach.delivery.reconcile_in_doubt(LATER) == 1
    assert (await outreach.ledger.get(decision_id)).status == "sent"
    assert len(sendgrid_double.messages) == 1


async def test_a_provider_event_settles_the_doubt_before_anyone_asks(outreach, sendgrid_double):
    outreach.plans_fake.plans[("c-1", "*")] = plan(EMAIL)
    decision_id = await crash_while_sending(outreach, "email", after=True)
    assert await outreach.delivery.on_delivery_status(
        decision_id, "accepted", NOON, provider_message_id="sg-1"
    )
    row = await outreach.ledger.get(decision_id)
    assert row.status == "sent" and row.provider_message_id == "sg-1" and row.sent_at
    assert await outreach.delivery.reconcile_in_doubt(LATER) == 0
    assert await outreach.delivery.on_delivery_status(decision_id, "delivered", NOON)
    assert len(sendgrid_double.messages) == 1
