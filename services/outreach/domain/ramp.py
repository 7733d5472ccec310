"""The kill switch's state and the ramp after it: pure, so every worker decides alike.

While sending is paused (for everyone, or for one intent) decisions are held, not lost.
When it resumes, the held backlog is released at a rate that climbs linearly from a
floor to the full rate over the ramp, so a long pause does not end in one burst at the
providers (and at customers' phones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.outreach.domain.guards import GroupShare

GLOBAL = "all"


@dataclass(frozen=True)
class Ramp:
    started_at: datetime
    minutes: float
    full_per_s: float
    floor_share: float = 0.1

    def rate_at(self, now: datetime) -> float:
        """Messages per second allowed at `now`."""
        if self.minutes <= 0:
            return self.full_per_s
        progress = (now - self.started_at).total_seconds() / (self.minutes * 60)
        share = self.floor_share + (1 - self.floor_share) * min(max(progress, 0.0), 1.0)
        return self.full_per_s * share

    def done(self, now: datetime) -> bool:
        return (now - self.started_at).total_seconds() >= self.minutes * 60


@dataclass
class ReleaseBudget:
    """A token bucket fed at the ramp's rate: how many held messages may go now."""

    ramp: Ramp
    tokens: float = 1.0
    last: datetime | None = None
    share: GroupShare | None = None  # the ramp is the group's: this worker's part of it

    def take(self, now: datetime, wanted: int) -> int:
        if self.last is not None:
            elapsed = max((now - self.last).total_seconds(), 0.0)
            rate = self.ramp.rate_at(now)
            if self.share is not None:
                rate = self.share.of(rate)
            self.tokens = min(self.tokens + elapsed * rate, max(wanted, 1))
        self.last = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted


@dataclass
class Paused:
    """What the workers obey: global and per-intent pauses, and the ramps after them."""

    all: bool = False
    intents: set[str] = field(default_factory=set)
    ramps: dict[str, ReleaseBudget] = field(default_factory=dict)  # scope → budget

    def applies(self, intent: str) -> bool:
        return self.all or intent in self.intents

    def ramping(self, intent: str, now: datetime) -> ReleaseBudget | None:
        """The budget that limits releasing `intent` now (the global ramp first)."""
        for scope in (GLOBAL, intent):
            budget = self.ramps.get(scope)
            if budget is not None and not budget.ramp.done(now):
                return budget
        return None
