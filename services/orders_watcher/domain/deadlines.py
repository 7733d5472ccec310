"""An index of the next moment each order needs attention, ordered by time.

A tick pops only the orders whose moment has come: the cost of a tick is the number
of due orders (times log n), never the number of open orders.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator


class DeadlineIndex:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._current: dict[str, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._current)

    def set(self, order_id: str, partition: int, at: float | None) -> None:
        """Schedule (or reschedule, or with None cancel) the order's next moment."""
        if at is None:
            self._current.pop(order_id, None)
            return
        if self._current.get(order_id) == (at, partition):
            return
        self._current[order_id] = (at, partition)
        heapq.heappush(self._heaps.setdefault(partition, []), (at, order_id))

    def earliest(self, partition: int) -> float | None:
        heap = self._heaps.get(partition)
        while heap:
            at, order_id = heap[0]
            if self._current.get(order_id) == (at, partition):
                return at
            heapq.heappop(heap)  # stale entry: rescheduled or cancelled since
        return None

    def partitions_due(self, now: float) -> list[int]:
        due = []
        for partition in list(self._heaps):
            at = self.earliest(partition)
            if at is not None and at <= now:
                due.append(partition)
        return due

    def pop_due(self, partition: int, now: float, limit: int = 10_000) -> Iterator[str]:
        """Yield (and unschedule) up to `limit` orders of `partition` due by `now`."""
        count = 0
        while count < limit:
            at = self.earliest(partition)
            if at is None or at > now:
                return
            _, order_id = heapq.heappop(self._heaps[partition])
            del self._current[order_id]
            count += 1
            yield order_id

    def drop_partitions(self, keep: frozenset[int]) -> None:
        for partition in list(self._heaps):
            if partition not in keep:
                del self._heaps[partition]
        self._current = {k: v for k, v in self._current.items() if v[1] in keep}

    def clear(self) -> None:
        self._heaps.clear()
        self._current.clear()
