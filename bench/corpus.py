"""The benchmark's input: the simulated shop's order, shipment and return events.

One complete simulated story (every order played out to its end) is generated once and
cached. Longer loads repeat it in *laps*: lap k renames every id (`ord-99-0002001` →
`ord-99-0002001.k`) and shifts every timestamp by k times the story's span, so that each
lap is a new set of orders that continues the previous one in event time (the watcher's
event clock moves forward, no event is a duplicate of an earlier lap's).

With a `period` (the `continuous` story) lap k starts k periods after the first instead,
while the laps before it still play out: the laps overlap and their records are merged in
event time, each lap's own order kept. A period as long as the story's placements makes
a stream without seams, as a shop in steady state sends: orders placed at one rate and
each lap's tail (deliveries, returns, refunds: weeks of event time in a few records) run
alongside the next lap's placements, not between laps.
"""

from __future__ import annotations

import heapq
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

INPUTS = ("commerce.orders", "commerce.shipments", "commerce.returns")
SEED = 99
_ID = re.compile(rb"\b([a-z]+-%d-\d{7})\b" % SEED)
_TIME = re.compile(rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)"')


@dataclass(frozen=True, slots=True)
class Record:
    topic: str  # without the run's prefix
    key: bytes
    value: bytes
    event_id: str
    order_id: str
    time: float  # the event's `time`, Unix seconds


def _record(topic: str, key: bytes, value: bytes) -> Record:
    event = orjson.loads(value)
    moment = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
    return Record(topic, key, value, event["id"], event["data"]["order_id"], moment)


# Stories (hours of orders, orders an hour): the same 1,800 orders placed in a burst of
# 3 hours (the default, and every run up to J), or spread evenly over three weeks, as a
# shop in steady state places them. A burst lap's tail passes three weeks of event time in
# few events, so many orders' deadlines come due between two records: waves of deadline
# work that a steady lap spreads out. The continuous story is the steady one with laps
# starting every three weeks (as its placements end), overlapping: no seams between laps.
STORIES = {
    "burst": (3.0, 600.0),
    "steady": (504.0, 600.0 * 3 / 504),
    "continuous": (504.0, 600.0 * 3 / 504),
}
OVERLAPPING = frozenset({"continuous"})


def corpus_for(story: str, base: list[Record]) -> Corpus:
    """The stream of laps the story is played as."""
    hours = STORIES[story][0]
    return Corpus(base, period=timedelta(hours=hours) if story in OVERLAPPING else None)


def base_story(cache_dir: Path, story: str = "burst") -> list[Record]:
    """The simulated story (~12k input events: 1,800 orders, each played out to its end
    over about three weeks of event time), cached as a pickle."""
    hours, per_hour = STORIES[story]
    path = cache_dir / f"bench-story-seed{SEED}-{hours:g}h.pickle"
    if path.exists():
        with path.open("rb") as handle:
            cached: list[Record] = pickle.load(handle)
        return cached
    from simulator.shop import Config, Shop

    config = Config(
        seed=SEED, customers=2000, orders_per_hour=per_hour, duration=timedelta(hours=hours)
    )
    records = [
        _record(e.topic, e.key.encode(), e.value())
        for e in Shop(config).events()
        if e.topic in INPUTS and e.event is not None
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as handle:
        pickle.dump(records, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.rename(path)
    return records


class Corpus:
    """An endless, deterministic stream of laps of the base story."""

    def __init__(self, base: list[Record], period: timedelta | None = None) -> None:
        self.base = base
        first = min(r.time for r in base)
        last = max(r.time for r in base)
        self.first = first
        self.span = timedelta(seconds=last - first + 3600)
        self.period = period
        # Lap k is moved by k shifts in event time: one after another, or overlapping.
        self.shift = period or self.span
        self._lap = 0
        self._pos = 0
        self._merged = self._overlapping(0) if period is not None else None

    def _transform(self, record: Record, lap: int) -> Record:
        if lap == 0:
            return record
        suffix = b".%d" % lap
        shift = self.shift * lap

        def rename(match: re.Match[bytes]) -> bytes:
            return match.group(1) + suffix

        def move(match: re.Match[bytes]) -> bytes:
            zone = match.group(2)
            moment = datetime.fromisoformat(match.group(1).decode()).replace(tzinfo=UTC) + shift
            text = moment.replace(tzinfo=None).isoformat(timespec="microseconds")
            return b'"' + text.encode() + zone + b'"'

        value = _TIME.sub(move, _ID.sub(rename, record.value))
        return Record(
            record.topic,
            _ID.sub(rename, record.key),
            value,
            record.event_id + f".{lap}",
            record.order_id + f".{lap}",
            record.time + shift.total_seconds(),
        )

    def _overlapping(self, lap: int) -> Iterator[Record]:
        """Every lap from `lap` on, each started one period after the one before, merged
        by event time (a lap's own records stay in their order, late ones included)."""
        base, step, start = self.base, self.shift.total_seconds(), self.first
        heads: list[tuple[float, int, int]] = []  # (event time, lap, position in base)
        while True:
            while not heads or start + lap * step <= heads[0][0]:
                heapq.heappush(heads, (base[0].time + lap * step, lap, 0))
                self._lap = lap = lap + 1
            _, k, pos = heapq.heappop(heads)
            yield self._transform(base[pos], k)
            if pos + 1 < len(base):
                heapq.heappush(heads, (base[pos + 1].time + k * step, k, pos + 1))

    def take(self, count: int) -> list[Record]:
        """The next `count` records of the stream."""
        if self._merged is not None:
            return [next(self._merged) for _ in range(count)]
        out: list[Record] = []
        while len(out) < count:
            chunk = self.base[self._pos : self._pos + count - len(out)]
            out += [self._transform(r, self._lap) for r in chunk]
            self._pos += len(chunk)
            if self._pos >= len(self.base):
                self._pos = 0
                self._lap += 1
        return out

    def restart(self) -> None:
        """Begin again with a lap no record was taken from, nothing of an earlier lap
        after it: for a consumer that starts afresh (its first records are no order's
        later events)."""
        if self._merged is not None:
            self._merged = self._overlapping(self._lap)
        elif self._pos:
            self._pos = 0
            self._lap += 1

    def laps_for(self, count: float) -> int:
        """How many whole laps come closest to `count` records (at least one)."""
        return max(1, round(count / len(self.base)))

    def take_laps(self, laps: int) -> list[Record]:
        """The next `laps` whole laps, starting at a lap boundary (the rest of a lap
        already begun is skipped). A lap holds every event of every order of the story,
        so whole laps carry the event mix of a shop in steady state; a slice of one does
        not (a lap begins with placements and ends with deliveries and refunds). Overlapping
        laps have no boundaries: as many records as `laps` laps hold."""
        if self._merged is None:
            self.restart()
        return self.take(laps * len(self.base))
        return self.take(laps * len(self.base))

    def __iter__(self) -> Iterator[Record]:
        while True:
            yield from self.take(1000)
