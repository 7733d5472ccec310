"""Circuit breaker and rate limit around a provider."""

from __future__ import annotations

import pytest

from services.outreach.adapters.providers import (
    GuardedSender,
    OutboundMessage,
    RecordingSender,
    TransientProviderError,
)
from services.outreach.domain.guards import CircuitBreaker, TokenBucket


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
    assert bucket.take(0.5) == 0


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
