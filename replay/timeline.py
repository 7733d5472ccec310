"""The one order of a replay: every input record at its stamp, every record a stage
decides at the moment it was decided, and every deadline at its moment.

The event clock's rule (common/aligned.py) holds across all of them: a deadline before a
record's moment is acted on before the record, one at the record's moment after it;
records stamped alike go in the order they were read, a decided record after the input
of its moment that was already there (it was decided when that input, or an earlier
one, was handled). Deadlines are kept lazily: a key rescheduled leaves its old entry,
which is skipped when it comes (`Deadlines`)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

RECORD, DEADLINE = 0, 1

#: What comes next: (moment in seconds, RECORD or DEADLINE, a tie-breaker, whose, what).
Entry = tuple[float, int, int, Any, Any]


class Deadlines:
    """One stage's deadlines: each key's current moment; entries the timeline holds for
    moments no longer current are stale."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def is_current(self, key: str, at: float) -> bool:
        return self.current.get(key) == at


class Timeline:
    def __init__(self) -> None:
        self._inputs: Sequence[tuple[float, Any, Any]] = ()
        self._next_input = 0
        self._heap: list[Entry] = []
        self._order = itertools.count()
        self._until: float | None = None

    def load(self, inputs: Sequence[tuple[float, Any, Any]], *, until: float | None = None) -> None:
        """The input: (moment, whose, what) each, in the order they are to go (stamp,
        then the order read), before anything is decided. Time ends at `until` (a part
        of a replay's input: the whole's last moment), or with the last input."""
        assert not self._heap and self._next_input == 0
        self._inputs = inputs
        self._order = itertools.count(len(inputs))  # decided after every input of a moment
        self._until = until

    def record(self, at: float, whose: Any, what: Any) -> None:
        """A record decided at `at` for `whose` to handle."""
        heapq.heappush(self._heap, (at, RECORD, next(self._order), whose, what))

    def schedule(self, deadlines: Deadlines, key: str, at: float | None, whose: Any) -> None:
        """Set (None: clear) `key`'s deadline of `whose` stage."""
        if at is None:
            deadlines.current.pop(key, None)
            return
        if deadlines.current.get(key) == at:
            return
        deadlines.current[key] = at
        heapq.heappush(self._heap, (at, DEADLINE, next(self._order), whose, key))

    def __iter__(self) -> Iterator[Entry]:
        """Until the last input's moment (what is decided or due at it included): time
        ends with the input, as it does for the services, whose clocks stop at their
        last record."""
        inputs, heap, pop = self._inputs, self._heap, heapq.heappop
        n = len(inputs)
        end = self._until if self._until is not None else self.last_input
        if end is None:
            end = float("-inf")
        while True:
            if self._next_input < n:
                at, whose, what = inputs[self._next_input]
                head = (at, RECORD, self._next_input, whose, what)
                if not heap or head[:3] < heap[0][:3]:
                    self._next_input += 1
                    yield head
                    continue
            if not heap or heap[0][0] > end:
                return
            yield pop(heap)

    @property
    def last_input(self) -> float | None:
        return self._inputs[-1][0] if self._inputs else None


__all__ = ["DEADLINE", "RECORD", "Deadlines", "Timeline"]
