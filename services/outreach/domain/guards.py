"""Protection around a provider: a circuit breaker and a token-bucket rate limit.

Pure state machines: the caller passes the (monotonic) time, nothing here sleeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class CircuitBreaker:
    """closed → (threshold consecutive failures) → open → (after `reset_after_s`) →
    half-open: one trial call; success closes, failure opens again."""

    failure_threshold: int = 5
    reset_after_s: float = 30.0
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = field(default=False)

    def allow(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.reset_after_s:
            self.state = "half_open"
            self.trial_in_flight = False
        if self.state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        return max(0.0, self.reset_after_s - (now - self.opened_at))

    def success(self) -> None:
        self.state, self.failures, self.trial_in_flight = "closed", 0, False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.state, self.opened_at, self.trial_in_flight = "open", now, False


@dataclass
class GroupShare:
    """This worker's part of a limit set for the whole group of workers (a provider's
    rate, the resume ramp): an even share among the workers live now, which every worker
    counts in the ledger (`live_workers`)."""

    workers: int = 1

    def of(self, limit: float) -> float:
        return limit / max(1, self.workers)


@dataclass
class TokenBucket:
    """At most `rate` calls per second on average, bursts up to `burst` (of the group,
    with `share`: this worker's part of both)."""

    rate: float
    burst: float
    share: GroupShare | None = None
    tokens: float | None = None
    updated: float = 0.0

    def take(self, now: float, max_wait: float = math.inf) -> float:
        """Take a token: 0 when one is there, else the seconds until the one reserved for
        the caller comes. Callers that take at once are spaced a token apart, not all
        sent when the first one is due. A wait longer than `max_wait` reserves nothing."""
        rate, burst = self.rate, self.burst
        if self.share is not None:
            rate, burst = self.share.of(rate), max(1.0, self.share.of(burst))
        if self.tokens is None:
            self.tokens, self.updated = burst, now
        self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        wait = (1 - self.tokens) / rate
        if wait <= max_wait:
            self.tokens -= 1  # reserved: it may go negative, the next caller waits longer
        return wait
