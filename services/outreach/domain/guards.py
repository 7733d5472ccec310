"""Protection around a provider: a circuit breaker and a token-bucket rate limit.

Pure state machines: the caller passes the (monotonic) time, nothing here sleeps.
"""

from __future__ import annotations

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
class TokenBucket:
    """At most `rate` calls per second on average, bursts up to `burst`."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> float:
        """Take a token; returns 0 when granted, else the seconds to wait for one."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
