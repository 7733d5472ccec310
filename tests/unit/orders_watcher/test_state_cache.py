"""Decoded states kept between batches: right as long as the table is, never a copy a
failed handler changed, and forgotten on every rebalance."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common.metrics import STATE_CACHE
from common.pipeline import Batch
from services.orders_watcher.adapters import order_table
from services.orders_watcher.adapters.state_cache import StateCache
from services.orders_watcher.bootstrap import bootstrap
from services.orders_watcher.config import Settings
from services.orders_watcher.domain.model import OrderState, decode_state, encode_state
from services.orders_watcher.entrypoints.stream import wire
from services.orders_watcher.handlers import Outcome
from services.orders_watcher.runtime import WatcherRuntime
from tests.unit.orders_watcher.fakes import Table


def state(order_id: str) -> OrderState:
    return OrderState(order_id=order_id)


def test_take_hands_a_state_out_once_and_counts_hits_and_misses():
    cache = StateCache(10, "test_cache")
    hits = STATE_CACHE.labels("test_cache", "hit")
    misses = STATE_CACHE.labels("test_cache", "miss")
    before = (hits._value.get(), misses._value.get())
    cache.put("o-1", one := state("o-1"))
    assert cache.take("o-1") is one
    assert cache.take("o-1") is None  # taken: a second reader goes to the table
    assert (hits._value.get() - before[0], misses._value.get() - before[1]) == (1, 1)


def test_the_least_recently_put_goes_first_and_zero_capacity_keeps_nothing():
    cache = StateCache(2, "test_cache")
    for order_id in ("a", "b", "a", "c"):  # a is put again after b: b is the oldest
        cache.put(order_id, state(order_id))
    assert len(cache) == 2
    assert cache.take("b") is None
    assert cache.take("a") is not None and cache.take("c") is not None
    off = StateCache(0, "test_cache")
    off.put("a", state("a"))
    assert len(off) == 0


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> WatcherRuntime:
    monkeypatch.setenv("ORDERS_WATCHER_STORE", "memory://")
    monkeypatch.setenv("ORDERS_WATCHER_STATE_CACHE_MAX", "100")
    table = Table()
    runtime = bootstrap(Settings(), table=table)
    wire(runtime)  # rebalances reach it through the app's signals
    table.values["o-1"] = order_table.encode(encode_state(state("o-1")), None)
    return runtime


def handled(runtime: WatcherRuntime, order_id: str) -> OrderState:
    """One record's round: load, change, stage, write the batch."""
    runtime.pipeline.current = Batch()
    loaded = runtime._load(order_id, 0)
    assert loaded is not None
    loaded.remember(f"e-{len(loaded.seen_event_ids)}")
    asyncio.run(runtime._stage(order_id, 0, Outcome(state=loaded)))
    batch, runtime.pipeline.current = runtime.pipeline.current, Batch()  # the next batch is handled
    asyncio.run(runtime.write(batch))
    return loaded


def test_the_next_batch_gets_the_written_state_without_reading_the_table(runtime):
    first = handled(runtime, "o-1")
    reads = runtime.table.reads
    second = handled(runtime, "o-1")
    assert second is first and second.seen_event_ids == ("e-0", "e-1")
    assert runtime.table.reads == reads
    stored = runtime.table.values["o-1"]
    assert decode_state(order_table.state_of(stored)) == second


def test_a_state_a_handler_failed_on_is_read_again_from_the_table(runtime):
    handled(runtime, "o-1")
    runtime.pipeline.current = Batch()
    taken = runtime._load("o-1", 0)
    assert taken is not None
    taken.remember("e-half-way")  # the handler fails here: nothing is staged
    again = runtime._load("o-1", 0)
    assert again is not taken and again is not None
    assert again.seen_event_ids == ("e-0",)


def test_within_a_batch_a_failed_handler_leaves_the_staged_value_not_its_changes(runtime):
    runtime.pipeline.current = Batch()
    loaded = runtime._load("o-1", 0)
    assert loaded is not None
    loaded.remember("e-0")
    asyncio.run(runtime._stage("o-1", 0, Outcome(state=loaded)))
    taken = runtime._load("o-1", 0)
    assert taken is loaded  # the batch's own state, no parse
    taken.remember("e-half-way")  # fails: not staged
    again = runtime._load("o-1", 0)
    assert again is not None and again.seen_event_ids == ("e-0",)


def test_a_rebalance_forgets_every_state(runtime):
    handled(runtime, "o-1")
    assert len(runtime.states) == 1
    asyncio.run(runtime.app.on_partitions_revoked.send(revoked=set()))
    assert len(runtime.states) == 0
    reads = runtime.table.reads
    runtime.pipeline.current = Batch()
    assert runtime._load("o-1", 0) is not None
    assert runtime.table.reads == reads + 1


def change(runtime: WatcherRuntime, event_id: str) -> OrderState:
    """The batch in hand loads o-1, remembers `event_id` in it and stages it."""
    loaded = runtime._load("o-1", 0)
    assert loaded is not None
    loaded.remember(event_id)
    asyncio.run(runtime._stage("o-1", 0, Outcome(state=loaded)))
    return loaded


def finish_later(runtime: WatcherRuntime) -> Batch[Any]:
    """The batch in hand goes to be finished (its outputs not acknowledged yet, so not
    written), and the next one is handled."""
    batch = runtime.pipeline.current
    runtime.pipeline.finishing.append(batch)
    runtime.pipeline.current = Batch(batch.number + 1)
    return batch


def seen_in_table(runtime: WatcherRuntime) -> tuple[str, ...]:
    return decode_state(order_table.state_of(runtime.table.values["o-1"])).seen_event_ids


def test_the_batch_being_finished_lends_its_states_to_the_next_one_once(runtime):
    # Batch 1 waits for its outputs while batch 2 is handled: batch 2 takes the order's
    # state from batch 1 (not the table), and batch 1's write then leaves it to batch 2.
    runtime.pipeline.current = Batch(1)
    loaded = change(runtime, "e-0")
    first = finish_later(runtime)
    reads = runtime.table.reads
    again = change(runtime, "e-1")
    assert again is loaded and runtime.table.reads == reads
    asyncio.run(runtime.write(first))
    assert runtime.states.take("o-1") is None  # batch 2 will put its own
    assert seen_in_table(runtime) == ("e-0",)
    assert runtime._load("o-1", 0) is again  # batch 2's own


def test_of_batches_being_finished_the_next_one_takes_the_latest_state(runtime):
    # Batches 1 and 2 both changed the order and wait for their outputs while batch 3 is
    # handled (ORDERS_WATCHER_BATCHES_IN_FLIGHT=3): batch 3 takes batch 2's state; the
    # writes, in order, leave the cache alone until the last batch that changed it.
    runtime.pipeline.current = Batch(1)
    loaded = change(runtime, "e-0")
    first = finish_later(runtime)
    again = change(runtime, "e-1")
    assert again is loaded
    second = finish_later(runtime)
    assert again.seen_event_ids == ("e-0", "e-1")
    reads = runtime.table.reads
    latest = change(runtime, "e-2")
    assert latest is again and latest.seen_event_ids == ("e-0", "e-1", "e-2")
    assert runtime.table.reads == reads
    third = finish_later(runtime)

    asyncio.run(runtime.write(first))
    assert runtime.states.take("o-1") is None and seen_in_table(runtime) == ("e-0",)
    asyncio.run(runtime.write(second))
    assert runtime.states.take("o-1") is None and seen_in_table(runtime) == ("e-0", "e-1")
    runtime.pipeline.finishing = [third]
    asyncio.run(runtime.write(third))
    assert seen_in_table(runtime) == ("e-0", "e-1", "e-2")
    assert runtime.states.take("o-1") is latest  # handed over once no later batch has it
