"""Decoded order states of recently handled orders, so that the next record of the same
order skips the table read and the JSON parse.

The table stays the truth: an entry is put only once its state is written there (the
batch's outputs acknowledged, its table writes done), and taken out (`take`) while a
handler works on it, so that a handler that fails half-way cannot leave a changed object
behind; the next read then parses the table's value. Only the owner of a partition
writes its orders, so the entries stay right for as long as the worker keeps its
partitions: the runtime empties the cache on every rebalance.
"""

from __future__ import annotations

from common.metrics import STATE_CACHE
from services.orders_watcher.domain.model import OrderState


class StateCache:
    """At most `capacity` states, the least recently put evicted first (0: off)."""

    def __init__(self, capacity: int, service: str) -> None:
        self.capacity = capacity
        self._states: dict[str, OrderState] = {}
        self._hits = STATE_CACHE.labels(service, "hit")
        self._misses = STATE_CACHE.labels(service, "miss")

    def __len__(self) -> int:
        return len(self._states)

    def take(self, order_id: str) -> OrderState | None:
        state = self._states.pop(order_id, None)
        (self._misses if state is None else self._hits).inc()
        return state

    def take_quietly(self, order_id: str) -> OrderState | None:
        """`take`, counted by the caller (`count`): it may find the state elsewhere in
        memory when this has none."""
        return self._states.pop(order_id, None)

    def count(self, hit: bool) -> None:
        (self._hits if hit else self._misses).inc()

    def put(self, order_id: str, state: OrderState) -> None:
        if not self.capacity:
            return
        states = self._states
        states.pop(order_id, None)
        states[order_id] = state
        if len(states) > self.capacity:
            del states[next(iter(states))]

    def discard(self, order_id: str) -> None:
        self._states.pop(order_id, None)

    def clear(self) -> None:
        self._states.clear()
