"""The worker's share of deadlines: a wave is spread over batches, partitions take turns,
and an order's own due deadline is acted on before its next record, so that holding
deadlines back never changes what the watcher tells."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from common.clock import FixedClock
from common.envelope import CloudEvent
from common.kafka import RecordingProducer
from services.orders_watcher.bootstrap import bootstrap
from services.orders_watcher.config import Settings
from services.orders_watcher.runtime import WatcherRuntime
from tests.unit.orders_watcher.fakes import Table
from tests.unit.orders_watcher.timeline import T0, Run, h, message, placed, scan, shipped

# The parcel's last scan before the gap is at 2 h: the stall is due 72 h (and the allowed
# lateness) later, at 74 h 05. The carrier's report that it went back to the sender at 73 h
# only arrives at 80 h, when the stall has been told: it is taken back (retracted).
TIMELINE = [
    placed(deliver_by=200),
    shipped(at=1),
    scan(at=2, status="in_transit"),
    scan(at=73, status="returned_to_sender", arrives=80),
]
# In the worker, another order's record at 75 h moves the clock past the stall first; the
# deadline is held back (the wave's slices) until o-1's late report comes.
MOVES_THE_CLOCK = placed("o-2", at=75, ship_by=100, deliver_by=200)
WORKER_INPUT = [*TIMELINE[:-1], MOVES_THE_CLOCK, TIMELINE[-1]]


def of_o1(events: list[CloudEvent]) -> list[CloudEvent]:
    return [e for e in events if e.data["order_id"] == "o-1"]


def worker(monkeypatch: pytest.MonkeyPatch, **env: str) -> WatcherRuntime:
    monkeypatch.setenv("ORDERS_WATCHER_STORE", "memory://")
    for name, value in env.items():
        monkeypatch.setenv(f"ORDERS_WATCHER_{name}", value)
    runtime = bootstrap(
        Settings(), clock=FixedClock(T0), table=Table(), producer=RecordingProducer()
    )
    runtime.schedule.rebuild()  # the table is recovered (empty): deadlines are known
    return runtime


def emitted_by(runtime: WatcherRuntime) -> list[CloudEvent]:
    producer = runtime.producer
    assert isinstance(producer, RecordingProducer)
    return producer.events(runtime.topics.incidents)


def kinds(events: list[CloudEvent]) -> list[tuple[str, str]]:
    return [(e.type.removeprefix("incident."), e.data["kind"]) for e in events]


def feed(runtime: WatcherRuntime, events: list[CloudEvent]) -> None:
    """Each record at its own arrival time, with no deadline acted on in between."""
    for offset, event in enumerate(events):
        runtime._before_record = runtime.clock.now().timestamp()
        runtime.clock.set(event.time)  # type: ignore[attr-defined]
        asyncio.run(runtime._on_event(message(event, offset), event))


def test_an_orders_due_deadline_is_acted_on_before_its_next_record(monkeypatch):
    live = Run().feed(*TIMELINE)
    assert kinds(live.emitted) == [
        ("opened", "shipment_stalled"),
        ("opened", "returned_to_sender"),
        ("resolved", "shipment_stalled"),
    ]
    runtime = worker(monkeypatch)
    feed(runtime, WORKER_INPUT)
    told = of_o1(emitted_by(runtime))
    assert kinds(told) == kinds(live.emitted)
    assert [e.id for e in told] == [e.id for e in live.emitted]


def test_without_acting_first_the_stall_would_never_be_told(monkeypatch):
    """What the step before the record guards against (the test above must be able to
    fail): the same records with the order's deadline forgotten tell only the return."""
    runtime = worker(monkeypatch)
    feed(runtime, WORKER_INPUT[:-1])
    runtime.schedule.index.set("o-1", 0, None)
    feed(runtime, WORKER_INPUT[-1:])
    told = of_o1(emitted_by(runtime))
    assert kinds(told) == [("opened", "returned_to_sender")]


def test_a_deadline_the_records_own_time_passes_comes_after_it(monkeypatch):
    """Only what was held back goes first: a record that itself moves the clock past its
    order's deadline is applied before the deadline is looked at (the late report then
    shows there was no stall to tell)."""
    runtime = worker(monkeypatch)
    feed(runtime, TIMELINE)
    told = of_o1(emitted_by(runtime))
    assert kinds(told) == [("opened", "returned_to_sender")]


def due_orders(runtime: WatcherRuntime, count: int, partitions: int) -> None:
    """`count` placed orders in each of `partitions`, their dispatch deadline passed."""
    for p in range(partitions):
        for i in range(count):
            event = placed(f"o-{p}-{i}", ship_by=1, deliver_by=100)
            runtime.clock.set(event.time)  # type: ignore[attr-defined]
            msg = message(event, i)
            asyncio.run(runtime._on_event(dataclasses.replace(msg, partition=p), event))
    runtime.clock.set(h(2))  # type: ignore[attr-defined]


def test_a_batch_acts_on_its_budget_of_due_orders_shared_among_partitions(monkeypatch):
    runtime = worker(monkeypatch, TICK_MAX_DUE="6")
    due_orders(runtime, count=5, partitions=3)
    handled, more = asyncio.run(runtime._handle_due(6))
    assert (handled, more) == (6, True)
    late = [e.data["order_id"] for e in emitted_by(runtime)]
    assert sorted(order.split("-")[1] for order in late) == ["0", "0", "1", "1", "2", "2"]
    while more:
        handled, more = asyncio.run(runtime._handle_due(6))
    emitted = emitted_by(runtime)
    assert sorted(e.data["order_id"] for e in emitted) == sorted(
        f"o-{p}-{i}" for p in range(3) for i in range(5)
    )
    assert {e.data["kind"] for e in emitted} == {"dispatch_late"}


def test_a_small_budget_still_goes_round_the_partitions(monkeypatch):
    runtime = worker(monkeypatch)
    due_orders(runtime, count=3, partitions=3)
    for _ in range(3):
        assert asyncio.run(runtime._handle_due(1)) == (1, True)
    emitted = emitted_by(runtime)
    assert sorted(e.data["order_id"].split("-")[1] for e in emitted) == ["0", "1", "2"]
