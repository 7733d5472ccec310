"""Sends in doubt — the process died between the provider call and recording its answer,
or the answer was lost — are settled by asking the provider, never by sending blindly
again; claims are fenced, so two sweepers or a stalled worker cannot both act on one
(real ledger on SQLite and PostgreSQL, official SDKs against the doubles)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from services.outreach.adapters.providers import (
    MessageSender,
    OutboundMessage,
    SendResult,
    TransientProviderError,
)
from tests.integration.outreach import test_delivery
from tests.integration.outreach.test_delivery import WALL
from tests.outreach_requests import EMAIL, NOON, SMS, plan, request

outreach = test_delivery.outreach  # the fixture: the same app on SQLite and PostgreSQL

pytestmark = pytest.mark.integration
LEASE = timedelta(minutes=10)  # OUTREACH_IN_DOUBT_AFTER_S
SETTLE = timedelta(seconds=30)  # OUTREACH_IN_DOUBT_SETTLE_S


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


class LostAnswer(MessageSender):
    """The provider takes the message, and the answer never comes back (a read timeout,
    a 5xx or a reset after the request left)."""

    def __init__(self, inner: MessageSender) -> None:
        self.inner, self.provider = inner, inner.provider

    async def send(self, message: OutboundMessage) -> SendResult:
        await self.inner.send(message)
        raise TransientProviderError("twilio unreachable: ReadTimeout", maybe_sent=True)


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
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    decision_id = await crash_while_sending(outreach, "sms", after=True)
    assert len(twilio_double.messages) == 1

    outreach.wall.set(WALL + LEASE / 2)
    assert await outreach.delivery.sweep(NOON) == 0  # the lease still runs
    await outreach.delivery.on_request(request(), NOON)  # the redelivered request
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 1
    row = await outreach.ledger.get(decision_id)
    assert row.status == "sent" and row.provider_message_id == twilio_double.messages[0]["sid"]
    assert len(twilio_double.messages) == 1
    assert await history(outreach, decision_id) == ["decided", "sending", "sent"]
    assert await outreach.delivery.sweep(NOON) == 0


async def test_absent_at_twilio_is_sent_once_now(outreach, twilio_double):
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    # Another message to the same number must not be taken for ours.
    other = OutboundMessage("d-other", "sms", SMS.address, None, None, "Ihr Gutschein", "x", "y")
    await outreach.delivery.senders["sms"].send(other)
    decision_id = await crash_while_sending(outreach, "sms", after=False)
    assert len(twilio_double.messages) == 1
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 1
    row = await outreach.ledger.get(decision_id)
    assert row.status == "sent" and row.attempts == 2
    assert len(twilio_double.messages) == 2
    assert row.provider_message_id == twilio_double.messages[1]["sid"]
    outreach.wall.set(WALL + 3 * LEASE)
    assert await outreach.delivery.sweep(NOON) == 0
    assert len(twilio_double.messages) == 2


async def test_a_lost_answer_is_never_retried_blindly_but_asked_about(outreach, twilio_double):
    """The Twilio call timed out after Twilio took the message: before, the row went back
    to `scheduled` and the retry sent the same SMS twice."""
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    real = outreach.delivery.senders["sms"]
    outreach.delivery.senders["sms"] = LostAnswer(real)
    await outreach.delivery.on_request(request(), NOON)
    outreach.delivery.senders["sms"] = real
    row = await outreach.ledger.by_request("req-1")
    assert row.status == "in_doubt" and len(twilio_double.messages) == 1
    assert await outreach.delivery.send_due(NOON + timedelta(hours=1)) == 0  # not a retry

    outreach.wall.set(WALL + SETTLE / 2)
    assert await outreach.delivery.sweep(NOON) == 0  # a request still on its way may land
    outreach.wall.set(WALL + SETTLE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 1
    row = await outreach.ledger.get(row.decision_id)
    assert row.status == "sent" and row.provider_message_id == twilio_double.messages[0]["sid"]
    assert len(twilio_double.messages) == 1


async def test_two_sweepers_at_once_send_at_most_once(outreach, twilio_double):
    """Two workers' sweepers find the same row in doubt at the same moment: the look is
    fenced by the claim's attempt number, so only one of them acts on it."""
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    decision_id = await crash_while_sending(outreach, "sms", after=False)
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    settled = await asyncio.gather(*(outreach.delivery.sweep(NOON) for _ in range(3)))
    assert sum(settled) == 1
    assert len(twilio_double.messages) == 1
    assert (await outreach.ledger.get(decision_id)).status == "sent"


async def test_a_stalled_worker_cannot_record_over_a_newer_claim(outreach, twilio_double):
    """A worker stalled past its lease; the sweeper took the row over and sent it under
    attempt 2. The stalled worker's late answer for attempt 1 changes nothing."""
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    decision_id = await crash_while_sending(outreach, "sms", after=False)
    stale = await outreach.ledger.get(decision_id)
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 1
    assert not await outreach.ledger.transition(
        decision_id, ("sending",), None, fence=stale.attempts, status="scheduled"
    )
    row = await outreach.ledger.get(decision_id)
    assert (row.status, row.attempts) == ("sent", 2)


async def test_email_without_signed_events_is_failed_for_a_person_not_resent(
    outreach, sendgrid_double
):
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL)
    decision_id = await crash_while_sending(outreach, "email", after=True)
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 1
    row = await outreach.ledger.get(decision_id)
    assert row.status == "failed" and row.reason.startswith("in_doubt")
    assert len(sendgrid_double.messages) == 1


async def worker_up(outreach, since, until):
    """A worker (the webhooks) recorded as up from `since` to `until`, without a break."""
    await outreach.ledger.worker_seen("w-other", since, since)
    await outreach.ledger.worker_seen("w-other", since, until)


async def test_email_with_signed_events_and_none_came_is_sent_again(outreach, sendgrid_double):
    """Another worker's webhooks were up from before the claim until now: SendGrid's
    event would have reached them, so no event means no message."""
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL)
    outreach.delivery.sending.confirmed_by_events = frozenset({"email"})
    decision_id = await crash_while_sending(outreach, "email", after=False)
    later = WALL + LEASE + timedelta(seconds=1)
    await worker_up(outreach, WALL - timedelta(minutes=1), later)
    outreach.wall.set(later)
    assert await outreach.delivery.sweep(NOON) == 1
    assert (await outreach.ledger.get(decision_id)).status == "sent"
    assert len(sendgrid_double.messages) == 1


async def test_email_in_doubt_waits_for_retried_events_when_the_webhooks_were_down(
    outreach, sendgrid_double
):
    """The only worker died after SendGrid took the email: its event could not be
    delivered then. The restarted worker waits for SendGrid's retry of the event
    (OUTREACH_EVENT_RETRY_S) rather than send again; the retried event settles it."""
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL)
    outreach.delivery.sending.confirmed_by_events = frozenset({"email"})
    decision_id = await crash_while_sending(outreach, "email", after=True)
    restarted = WALL + LEASE
    await worker_up(outreach, restarted, restarted + timedelta(minutes=5))
    outreach.wall.set(restarted + timedelta(minutes=5))
    assert await outreach.delivery.sweep(NOON) == 0  # still in doubt, not sent again
    assert (await outreach.ledger.get(decision_id)).status == "in_doubt"
    assert await outreach.delivery.on_delivery_status(decision_id, "accepted", NOON)
    assert (await outreach.ledger.get(decision_id)).status == "sent"
    assert len(sendgrid_double.messages) == 1


async def test_email_in_doubt_is_sent_again_once_no_retried_event_can_come(
    outreach, sendgrid_double
):
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL)
    outreach.delivery.sending.confirmed_by_events = frozenset({"email"})
    decision_id = await crash_while_sending(outreach, "email", after=False)
    restarted = WALL + LEASE
    retried = restarted + outreach.delivery.sending.events_retried_within
    await worker_up(outreach, restarted, retried)
    outreach.wall.set(retried)
    assert await outreach.delivery.sweep(NOON) == 1
    assert (await outreach.ledger.get(decision_id)).status == "sent"
    assert len(sendgrid_double.messages) == 1


async def test_a_provider_event_settles_the_doubt_before_anyone_asks(outreach, sendgrid_double):
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL)
    decision_id = await crash_while_sending(outreach, "email", after=True)
    assert await outreach.delivery.on_delivery_status(
        decision_id, "accepted", NOON, provider_message_id="sg-1"
    )
    row = await outreach.ledger.get(decision_id)
    assert row.status == "sent" and row.provider_message_id == "sg-1" and row.sent_at
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 0
    assert await outreach.delivery.on_delivery_status(decision_id, "delivered", NOON)
    assert len(sendgrid_double.messages) == 1


async def test_a_decision_whose_worker_died_before_the_claim_is_swept_and_sent(
    outreach, sendgrid_double
):
    """Recorded as decided, then the process died before it claimed the send (and the
    request's offset was committed by someone): the sweeper delivers it once."""
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL)
    real = outreach.delivery._deliver

    async def die(*_args, **_kwargs):
        raise Crash

    outreach.delivery._deliver = die
    with pytest.raises(Crash):
        await outreach.delivery.on_request(request(), NOON)
    outreach.delivery._deliver = real
    row = await outreach.ledger.by_request("req-1")
    assert row.status == "decided"
    outreach.wall.set(WALL + LEASE + timedelta(seconds=1))
    assert await outreach.delivery.sweep(NOON) == 1
    assert (await outreach.ledger.get(row.decision_id)).status == "sent"
    assert len(sendgrid_double.messages) == 1
    assert await outreach.delivery.sweep(NOON) == 0
