"""The one source of time for every decision (SPEC §5, `OUTREACH_CLOCK`).

`wall` is the machine's UTC clock. `event` is the watermark of the `time` of the events
a service has consumed: replaying a week of events takes seconds and decides exactly as
live operation would, because every rule asks this clock, never `datetime.now()`.

The event watermark never runs ahead of an input partition that still holds unread,
possibly older events: a burst on one topic must not make another topic's events late.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """What rules may ask of time. `now()` is timezone-aware UTC and never goes backwards."""

    def now(self) -> datetime: ...

    def observe(self, partition: Hashable, event_time: datetime, *, caught_up: bool) -> None:
        """Tell the clock an event of `partition` was consumed; `caught_up` says whether
        that partition holds no more unread events."""


def wall_now() -> datetime:
    """The machine's time, in UTC: what runs in real time whatever the clock (leases,
    operators' pauses, audit stamps), and the default of the stores that stamp rows."""
    return datetime.now(UTC)


class WallClock:
    def now(self) -> datetime:
        return wall_now()

    def observe(self, partition: Hashable, event_time: datetime, *, caught_up: bool) -> None:
        return None


class EventClock:
    """Event-time watermark over the partitions a consumer reads.

    Observed for every record: the watermark is the earliest latest-time of the
    partitions still holding unread events, or, with none, the latest time of all. Kept
    without a pass over the partitions per record (only a change of what is pending, or
    of a pending partition's time, recomputes the minimum)."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self._latest: dict[Hashable, datetime] = {}
        self._pending: set[Hashable] = set()
        self._now = start
        self._max: datetime | None = None  # the latest time of all partitions

    def observe(self, partition: Hashable, event_time: datetime, *, caught_up: bool) -> None:
        if event_time.tzinfo is not UTC:
            event_time = event_time.astimezone(UTC)
        latest = self._latest.get(partition)
        moved = latest is None or event_time > latest
        if moved:
            self._latest[partition] = event_time
            if self._max is None or event_time > self._max:
                self._max = event_time
        pending = self._pending
        if caught_up:
            if partition in pending:
                pending.discard(partition)
                self._recompute()
                return
        elif partition not in pending:
            pending.add(partition)
            self._recompute()
            return
        if moved and (not pending or partition in pending):
            self._recompute()

    def hold(self, partition: Hashable) -> None:
        """A partition is known to hold unread events (e.g. just assigned with lag)."""
        self._pending.add(partition)

    def release(self, partition: Hashable) -> None:
        """A partition was revoked or found empty: it no longer holds the watermark back."""
        self._pending.discard(partition)
        self._recompute()

    def advance_to(self, moment: datetime) -> None:
        """Explicitly move time forward (tests, end-of-replay flush). Never moves back."""
        moment = moment.astimezone(UTC)
        if moment > self._now:
            self._now = moment

    def _recompute(self) -> None:
        if self._max is None:
            return
        if self._pending:
            latest, now = self._latest, self._now
            candidate = min(latest.get(p, now) for p in self._pending)
        else:
            candidate = self._max
        if candidate > self._now:
            self._now = candidate

    def now(self) -> datetime:
        return self._now


class WatermarkClock:
    """The event clock of a service whose input records are released in one order by
    common.watermark.Aligner: the arrival time of the last record released (or of the
    last deadline acted on), moved by the runner only (`observe` is the Aligner's work)."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def observe(self, partition: Hashable, event_time: datetime, *, caught_up: bool) -> None:
        return None

    def advance_to(self, moment: datetime) -> None:
        if moment > self._now:
            self._now = moment

    def reset(self, start: datetime = EPOCH) -> None:
        """A new assignment: the partitions are read again from their committed offsets,
        which the clock of the ones read before may have passed. Time starts over from
        their first record (every state and deadline is per partition, so what another
        partition's records decided stands)."""
        self._now = start


class FixedClock:
    """A clock tests set by hand."""

    def __init__(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)

    def observe(self, partition: Hashable, event_time: datetime, *, caught_up: bool) -> None:
        return None


def clock_from_mode(mode: str) -> Clock:
    if mode == "wall":
        return WallClock()
    if mode == "event":
        return EventClock()
    raise ValueError(f"OUTREACH_CLOCK must be 'wall' or 'event', not {mode!r}")
