"""Circuit breaker and rate limit around a provider."""

from __future__ import annotations

import pytest

from services.outreach.adapters.providers import (
    GuardedSender,
    OutboundMessage,
    RecordingSender,
    TransientProviderError,
)
from services.outreach.domain.guards import CircuitBreaker, GroupShare, TokenBucket


def test_breaker_opens_after_consecutive_failures_and_lets_one_trial_through_later():
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10)
    for t in range(3):
        assert breaker.allow(t)
        breaker.failure(t)
    assert breaker.state == "open" and not breaker.allow(5)
    assert breaker.retry_in(5) == pytest.approx(7)  # opened at t=2, closes at 12
    assert breaker.allow(12) and not breaker.allow(12.1)  # one trial at a time
    breaker.failure(12.2)
    assert breaker.state == "open" and not breaker.allow(13)
    assert breaker.allow(23)
    breaker.success()
    assert breaker.state == "closed" and breaker.allow(23.1)


def test_token_bucket_allows_bursts_then_paces():
    bucket = TokenBucket(rate=2, burst=2)
    assert bucket.take(0) == 0 and bucket.take(0) == 0
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(1.5) == 0  # the waiter's token came at 0.5; this one at 1.0


def test_callers_at_once_are_spaced_a_token_apart_and_one_that_will_not_wait_takes_none():
    bucket = TokenBucket(rate=10, burst=1)
    waits = [bucket.take(0, max_wait=0.35) for _ in range(5)]
    assert waits == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    # the fifth would wait 0.4 s: it reserved nothing, so the next is due at 0.4 too
    assert bucket.take(0) == pytest.approx(0.4)
    sent = sum(1 for w in waits if w <= 0.35)
    assert sent == 4  # at most rate x time + burst by 0.3 s: 10 x 0.3 + 1


def test_a_group_share_divides_the_rate_and_the_burst_among_the_live_workers():
    share = GroupShare(workers=1)
    bucket = TokenBucket(rate=10, burst=10, share=share)
    share.workers = 4  # four workers split the provider's 10/s: 2.5/s and a burst of 2.5
    assert [bucket.take(0) for _ in range(2)] == [0, 0]
    assert bucket.take(0) == pytest.approx(0.2)  # (1 - 0.5) / 2.5
    assert GroupShare(workers=0).of(10) == 10  # never divided by nought


MESSAGE = OutboundMessage(
    decision_id="d",
    channel="email",
    to="a@example.com",
    subject="s",
    html="<p>x</p>",
    text="x",
    message_kind="delivery_late",
    intent="apology",
)


async def test_a_5xx_storm_opens_the_breaker_and_it_recovers():
    inner = RecordingSender(errors=[TransientProviderError("503", status=503)] * 3)
    guarded = GuardedSender(inner, failure_threshold=3, reset_after_s=0.05, rate_per_s=1000)
    for _ in range(3):
        with pytest.raises(TransientProviderError):
            await guarded.send(MESSAGE)
    with pytest.raises(TransientProviderError, match="circuit open"):
        await guarded.send(MESSAGE)
    assert inner.sent == []
    import asyncio

    await asyncio.sleep(0.06)
    assert (await guarded.send(MESSAGE)).provider_message_id == "rec-1"
    assert guarded.breaker.state == "closed"
