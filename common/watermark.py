"""The event clock's low watermark over many input partitions (SPEC §5, event mode).

A service on the event clock reads several partitions of several topics at once, and
the broker hands their records over in whatever order its fetches return them. Judged
in that order, a replay decides differently from one run to the next: an order's
shipment read after the clock has passed its dispatch deadline, because another
partition's records came first. The `Aligner` puts the records of every input lane (a
topic partition) back into one order, the order in which they arrived on the stream,
and releases a record only once no lane can still hold an earlier one unread:

- each record is keyed by its arrival time: the timestamp its producer gave it when it
  published it (Kafka's record timestamp), which a replay of a recorded stream keeps,
  and which the simulator sets to the moment of its story. A lane's keys never go
  back (a record stamped earlier than its predecessor on the lane counts at the
  predecessor's time);
- the records waiting are released lowest key first (ties: by lane), and the record
  at the head may go only when every other lane either has a record waiting (which,
  not being the head, is not earlier), or has already passed its key, or has been
  *confirmed* empty: the broker's end offset, asked by a request sent after the head
  record had been received, is where the consumer has read to. A record that was not
  on the broker then was published after the head was, so it comes later in the story
  too (the producer's assumption, docs/architecture.md "Time");
- a lane that cannot be confirmed (records on the broker that do not come, a broker
  that does not answer) holds the watermark for at most `idle_s` of wall time, as
  Flink's `withIdleness`: then it is passed over, and a record that comes from it later
  is handled at the time the clock has reached;
- a lane with `max_buffered` records waiting is paused (the runner stops fetching it)
  until it is down to half, so one partition far ahead costs bounded memory: Kafka
  Streams' `max.task.idle.ms` and Flink's watermark alignment do the same.

A *derived* lane carries another service's outputs (orders_watcher's incidents, read by
risk_detector and outreach). That service decides at its own clock and may publish a
record long after a later one of the shop's, so the broker's end offsets say nothing
about what is still to come on it. Its completeness comes from the service's
watermarks instead (common/marks.py): the lane's *bound* says that every record it will
carry stamped before the bound has been read. Its records are released in key order
(several instances of the upstream may interleave theirs on one partition, so its keys
may go back), each only below the bound, and it holds the head while its bound has not
passed the head's key; the idleness applies to it too, counted from the bound's last
move (an upstream that stopped publishing watermarks).

Pure: the runner feeds it records and the broker's answers and does the I/O (asking
for end offsets, pausing partitions, handling what is released).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Lane = TypeVar("Lane", bound=Hashable)


@dataclass
class _Lane(Generic[T]):
    """One input partition: its waiting records, a heap of (key, arrival number, epoch
    received, item); the key it has reached (None: nothing read since the assignment);
    the epoch in which the broker last confirmed it read to its end (-1: never); since
    when it has held the head back (wall seconds, None: it does not). A derived lane's
    bound: every record before it is read (None: none known)."""

    order: int
    derived: bool = False
    waiting: list[tuple[int, int, int, T]] = field(default_factory=list)
    last: int | None = None  # the key of the record added last
    reached: int | None = None
    confirmed: int = -1
    bound: int | None = None
    holding_since: float | None = None
    idle: bool = False

    def open_below(self, key: int) -> bool:
        """Whether the derived lane may still bring a record before `key`."""
        return self.bound is None or self.bound <= key


class Aligner(Generic[Lane, T]):
    def __init__(
        self,
        *,
        idle_s: float = 30.0,
        max_buffered: int = 5_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_buffered = max_buffered
        self._monotonic = monotonic
        self._lanes: dict[Lane, _Lane[T]] = {}
        self._epoch = 0
        self._arrivals = 0
        self._paused: set[Lane] = set()
        self.waiting = 0

    # --- the lanes ---------------------------------------------------------------------

    def assign(self, lanes: Iterable[Lane], derived: Iterable[Lane] = ()) -> list[T]:
        """A new assignment: these lanes, none read yet (`derived`: those of them that
        carry another service's outputs). Returns the records that were waiting (the
        runner leaves them unacknowledged: the partitions' owners read them again from
        the committed offsets)."""
        dropped = [entry[-1] for lane in self._lanes.values() for entry in lane.waiting]
        ordered = sorted(lanes, key=repr)
        marked = set(derived)
        self._lanes = {
            lane: _Lane(order=n, derived=lane in marked) for n, lane in enumerate(ordered)
        }
        self._paused.clear()
        self.waiting = 0
        return dropped

    @property
    def lanes(self) -> list[Lane]:
        return list(self._lanes)

    # --- records in ----------------------------------------------------------------------

    def received(self) -> int:
        """A fetch's records are about to be added: they belong to a new epoch. Returns it."""
        self._epoch += 1
        return self._epoch

    def add(self, lane: Lane, key: int, item: T) -> None:
        """A record of `lane`, in the lane's offset order, arrived at `key` (ms)."""
        state = self._lanes.get(lane)
        if state is None:
            raise KeyError(f"{lane!r} is not an assigned lane")
        if not state.derived:
            if state.last is not None:
                key = max(key, state.last)
            elif state.reached is not None:
                key = max(key, state.reached)
        state.last = key
        self._arrivals += 1
        heapq.heappush(state.waiting, (key, self._arrivals, self._epoch, item))
        if not state.derived:
            state.holding_since, state.idle = None, False
        self.waiting += 1

    # --- the broker's answers ------------------------------------------------------------

    def unconfirmed(self) -> list[Lane]:
        """The lanes that hold the head back and a broker answer could release: empty,
        behind the head's key, not confirmed since the head was received, not idle."""
        head = self._head()
        if head is None:
            return []
        key, epoch, lane = head
        return [
            name
            for name, state in self._lanes.items()
            if name != lane
            and not state.derived
            and self._holds(state, key, epoch, self._lanes[lane].order)
        ]

    def confirm(self, lanes: Iterable[Lane], epoch: int) -> None:
        """The broker says these lanes are read to their end, in answer to a request sent
        in `epoch` (after every record of that epoch and before was received)."""
        for lane in lanes:
            state = self._lanes.get(lane)
            if state is not None and epoch > state.confirmed:
                state.confirmed = epoch
                state.holding_since, state.idle = None, False

    def bound(self, lane: Lane, key: int) -> None:
        """Every record of the derived `lane` stamped before `key` has been read (the
        upstream's watermark, common/marks.py). A bound that moves ends the lane's idleness."""
        state = self._lanes.get(lane)
        if state is not None and state.derived and (state.bound is None or key > state.bound):
            state.bound = key
            state.holding_since, state.idle = None, False

    # --- records out ---------------------------------------------------------------------

    def release(self) -> Iterator[tuple[int, T]]:
        """The records that may be handled now, in order, with their keys (the moment the
        clock reaches as each is handled)."""
        while True:
            head = self._head()
            if head is None:
                return
            key, epoch, lane = head
            state = self._lanes[lane]
            if self._held(key, epoch, state.order, lane):
                return
            item = heapq.heappop(state.waiting)[-1]
            state.reached = key if state.reached is None else max(key, state.reached)
            self.waiting -= 1
            yield key, item

    def paused(self) -> tuple[list[Lane], list[Lane]]:
        """(lanes to pause, lanes to resume) since the last call: a lane with
        `max_buffered` records waiting stops being fetched until it is down to half."""
        pause, resume = [], []
        for name, state in self._lanes.items():
            count = len(state.waiting)
            if name not in self._paused and count >= self.max_buffered:
                self._paused.add(name)
                pause.append(name)
            elif name in self._paused and count <= self.max_buffered // 2:
                self._paused.discard(name)
                resume.append(name)
        return pause, resume

    def waiting_in(self, lane: Lane) -> list[T]:
        """The records of `lane` waiting, in no particular order."""
        state = self._lanes.get(lane)
        return [] if state is None else [entry[-1] for entry in state.waiting]

    def idle_lanes(self) -> list[Lane]:
        """The lanes passed over for idleness (until they yield a record again)."""
        return [name for name, state in self._lanes.items() if state.idle]

    # --- inside --------------------------------------------------------------------------

    def _head(self) -> tuple[int, int, Lane] | None:
        best: tuple[int, int, int, Lane] | None = None
        for name, state in self._lanes.items():
            if state.waiting:
                key, _, epoch, _ = state.waiting[0]
                if best is None or (key, state.order) < (best[0], best[2]):
                    best = (key, epoch, state.order, name)
        return None if best is None else (best[0], best[1], best[3])

    def _holds(self, state: _Lane[T], key: int, epoch: int, order: int) -> bool:
        """Whether a lane may still hold a record to go before the head's."""
        if state.derived:
            return state.open_below(key) and not state.idle
        if state.waiting:
            return False  # not the head, so not earlier
        if state.reached is not None and (
            state.reached > key or (state.reached == key and state.order > order)
        ):
            return False
        return state.confirmed < epoch and not state.idle

    def _held(self, key: int, epoch: int, order: int, head: Lane) -> bool:
        """Whether some lane holds the head back (and so the clock), updating idleness."""
        now = self._monotonic()
        held = False
        for name, state in self._lanes.items():
            if name == head and not state.derived:
                continue
            if not self._holds(state, key, epoch, order):
                state.holding_since = None
                continue
            if state.holding_since is None:
                state.holding_since = now
            if now - state.holding_since >= self.idle_s:
                state.idle = True  # passed over from now on, until it yields a record
                continue
            held = True
        return held


__all__ = ["Aligner"]
