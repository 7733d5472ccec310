"""Falling order rhythm from the *absence* of orders: when to look at a customer again.

A customer who simply stops ordering sends no event that could trigger a re-score, so the
profile names the moments at which their score changes because of the silence alone: the
first moment the absence counts (just past twice the usual gap, SPEC §6), and each further
usual gap while the signal still grows (+5 points per gap up to its cap). The service keeps
the next of these moments in its deadline index and re-scores the customer *as of that
moment* when event time passes it — so a replay decides exactly as the live run did, no
matter when the tick happened to be handled.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from services.risk_detector.domain.profile import Profile
from services.risk_detector.domain.scoring import Weights

DEFAULT_WEIGHTS = Weights()

# "More than twice the usual gap": the first whole second after it.
RESOLUTION = timedelta(seconds=1)


def rhythm_checks(profile: Profile, w: Weights = DEFAULT_WEIGHTS) -> list[datetime]:
    """Every moment at which the silence since the last order changes the score."""
    gap = profile.usual_gap()
    last = profile.last_order_at()
    if gap is None or last is None or gap <= timedelta(0):
        return []
    growth = 0
    if w.falling_rhythm_extra_per_gap > 0 and w.falling_rhythm_max > w.falling_rhythm:
        growth = math.ceil(
            (w.falling_rhythm_max - w.falling_rhythm) / w.falling_rhythm_extra_per_gap
        )
    return [last + (2 + k) * gap + RESOLUTION for k in range(growth + 1)]


def next_rhythm_check(profile: Profile, w: Weights = DEFAULT_WEIGHTS) -> datetime | None:
    """The first of those moments not yet looked at (None: nothing to wait for)."""
    done = profile.rhythm_checked_at
    return next((t for t in rhythm_checks(profile, w) if done is None or t > done), None)


def due_rhythm_checks(
    profile: Profile, until: datetime, w: Weights = DEFAULT_WEIGHTS
) -> list[datetime]:
    """The moments not yet looked at that are at or before `until`, oldest first."""
    done = profile.rhythm_checked_at
    return [t for t in rhythm_checks(profile, w) if t <= until and (done is None or t > done)]
