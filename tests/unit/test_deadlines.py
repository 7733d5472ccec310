"""The deadline index and schedule (common/deadlines.py) and the input-progress gate
(common/streaming.InputProgress) that keeps absence from being judged on a backlog."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from common.deadlines import DeadlineIndex, DeadlineSchedule
from common.kafka import InputMessage
from common.streaming import InputProgress


class TP(NamedTuple):
    topic: str
    partition: int


def test_the_index_yields_due_keys_by_partition_in_time_order_and_forgets_stale_entries():
    index = DeadlineIndex()
    index.set("a", 0, 30.0)
    index.set("b", 0, 10.0)
    index.set("c", 1, 20.0)
    index.set("a", 0, 5.0)  # rescheduled earlier: the 30.0 entry is stale
    index.set("b", 0, None)  # cancelled
    assert index.partitions_due(15.0) == [0]
    assert list(index.pop_due(0, 100.0)) == ["a"]
    assert index.partitions_due(100.0) == [1]
    assert len(index) == 1


def test_overdue_counts_the_keys_due_by_now_and_the_earliest_of_them_across_partitions():
    index = DeadlineIndex()
    for n in range(50):
        index.set(f"k-{n}", n % 3, 100.0 + n)
    index.set("k-0", 0, 500.0)  # rescheduled later: its 100.0 entry is stale, not due
    index.set("k-1", 1, None)  # cancelled
    assert index.overdue(99.0) == (0, None)
    assert index.overdue(110.0) == (9, 102.0)  # k-2 .. k-10
    assert index.overdue(1000.0) == (49, 102.0)  # all but the cancelled one
    assert index.overdue(1000.0, limit=5) == (5, 102.0)  # counted up to the limit
    list(index.pop_due(2, 1000.0))  # partition 2 (k-2, k-5, .. k-47) handled
    assert index.overdue(1000.0) == (49 - 16, 103.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcdefgh"),
            st.integers(0, 2),
            st.one_of(st.none(), st.integers(0, 40).map(float)),
        ),
        max_size=60,
    ),
    st.integers(0, 45).map(float),
)
def test_the_index_agrees_with_a_plain_dict_of_the_latest_moments(ops, now):
    index, model = DeadlineIndex(), {}
    for key, partition, at in ops:
        index.set(key, partition, at)
        if at is None:
            model.pop(key, None)
        else:
            model[key] = (at, partition)
    bulk = DeadlineIndex()
    bulk.replace((k, p, at) for k, (at, p) in model.items())
    due = {k: v for k, v in model.items() if v[0] <= now}
    expected = (len(due), min((v[0] for v in due.values()), default=None))
    for candidate in (index, bulk):
        assert len(candidate) == len(model)
        assert candidate.overdue(now) == expected
        assert sorted(candidate.partitions_due(now)) == sorted({p for _, p in due.values()})
        for partition in range(3):
            mine = sorted((at, k) for k, (at, p) in model.items() if p == partition)
            assert candidate.earliest(partition) == (mine[0][0] if mine else None)
            popped = list(candidate.pop_due(partition, now))
            assert popped == [k for at, k in mine if at <= now]
        assert len(candidate) == len(model) - len(due)


def test_only_the_latest_moment_of_a_key_rescheduled_many_times_counts():
    index = DeadlineIndex()
    for n in range(1000):
        index.set("k", 0, float(n % 7))
    assert index.overdue(10.0) == (1, 5.0)  # 999 % 7
    assert list(index.pop_due(0, 10.0)) == ["k"]
    assert index.earliest(0) is None


def test_the_schedule_reports_overdue_deadlines_in_its_metrics():
    from prometheus_client import REGISTRY

    clock = {"now": 0.0}
    schedule = DeadlineSchedule(FakeApp(), FakeTable(), "ticks")
    schedule.export_metrics("test_service", lambda: clock["now"])
    schedule.rebuild()
    schedule.schedule("o-1", 0, 10.0)
    schedule.schedule("o-2", 1, 25.0)

    def read(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"service": "test_service"})

    assert (read("outreach_deadlines_overdue"), read("outreach_deadline_lag_seconds")) == (0, 0)
    clock["now"] = 30.0
    assert (read("outreach_deadlines_overdue"), read("outreach_deadline_lag_seconds")) == (2, 20)
    schedule.due(0, 30.0)
    assert (read("outreach_deadlines_overdue"), read("outreach_deadline_lag_seconds")) == (1, 5)


class FakeTable(dict[str, Any]):
    name = "deadlines"

    def on_recover(self, callback: Any) -> None:
        self.recover = callback


@dataclass
class FakeProducer:
    sent: list[int] = field(default_factory=list)

    fail: bool = False

    async def send(self, topic: str, key: Any, value: bytes, **kw: Any) -> asyncio.Future[None]:
        self.sent.append(kw["partition"])
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            ack.set_exception(ConnectionError("broker gone"))
        else:
            ack.set_result(None)
        return ack


@dataclass
class FakeApp:
    producer: FakeProducer = field(default_factory=FakeProducer)


@dataclass
class FakeGate:
    lagging: set[int] = field(default_factory=set)
    stale: set[int] = field(default_factory=set)  # looks read, the broker says otherwise

    def caught_up(self, partition: int) -> bool:
        return partition not in self.lagging

    async def confirm(self, partition: int) -> bool:
        if partition in self.stale:
            self.lagging.add(partition)
        return self.caught_up(partition)

    def lag(self, partition: int) -> object:
        return {}


async def test_a_partition_with_unread_input_gets_no_tick_and_no_due_keys():
    app, gate = FakeApp(), FakeGate(lagging={1}, stale={2})
    schedule = DeadlineSchedule(app, FakeTable(), "ticks", gate=gate)
    schedule.rebuild()
    for partition in (0, 1, 2):
        schedule.schedule(f"o-{partition}", partition, 10.0)
    await schedule.request_ticks(20.0)
    assert app.producer.sent == [0]
    assert schedule.due(1, 20.0) == []  # a tick that arrives anyway acts on nothing
    assert schedule.due(0, 20.0) == ["o-0"]
    gate.lagging.clear()  # the backlog has been read: the deadlines are still there
    gate.stale.clear()
    await schedule.request_ticks(20.0)
    assert app.producer.sent == [0, 1, 2]
    assert schedule.due(1, 20.0) == ["o-1"]


async def test_one_tick_per_partition_is_in_flight_and_a_failed_one_is_sent_again():
    app = FakeApp()
    schedule = DeadlineSchedule(app, FakeTable(), "ticks")
    schedule.rebuild()
    schedule.schedule("o-0", 0, 10.0)
    await schedule.request_ticks(20.0)
    await schedule.request_ticks(20.0)  # the first is on its way: no second one
    assert app.producer.sent == [0]
    assert schedule.due(0, 20.0) == ["o-0"]  # it arrived
    schedule.schedule("o-0", 0, 30.0)
    app.producer.fail = True
    await schedule.request_ticks(40.0)
    await asyncio.sleep(0)  # the failed acknowledgement's callback
    app.producer.fail = False
    await schedule.request_ticks(40.0)
    assert app.producer.sent == [0, 0, 0]


async def test_a_wave_of_deadlines_is_handled_in_slices_one_tick_each():
    app = FakeApp()
    schedule = DeadlineSchedule(app, FakeTable(), "ticks")
    schedule.rebuild()
    for n in range(7):
        schedule.schedule(f"o-{n}", 0, 10.0 + n)
    await schedule.request_ticks(20.0)
    assert schedule.due(0, 20.0, limit=3) == ["o-0", "o-1", "o-2"]  # earliest first
    await schedule.request_ticks(20.0)  # still due: another tick
    assert schedule.due(0, 20.0, limit=3) == ["o-3", "o-4", "o-5"]
    await schedule.request_ticks(20.0)
    assert schedule.due(0, 20.0, limit=3) == ["o-6"]
    await schedule.request_ticks(20.0)  # nothing due any more: no tick
    assert app.producer.sent == [0, 0, 0]


def test_a_rebuild_while_planned_deadlines_wait_for_their_table_write_keeps_them():
    # The watcher plans an order's deadline as it decides, and writes the order's table
    # value (which carries it) only once the batch's outputs are acknowledged; a timer's
    # rebuild in between used to take the old value from the table: a check-in lost.
    table = FakeTable({"o-1": {"at": 10.0, "p": 0}})
    schedule = DeadlineSchedule(FakeApp(), table, "ticks", entry=lambda v: (v["at"], v["p"]))
    schedule.rebuild()
    schedule.plan("o-1", 0, 50.0)  # decided, not written
    schedule.plan("o-2", 1, 60.0)
    schedule.rebuild()
    assert (schedule.index.get("o-1"), schedule.index.get("o-2")) == (50.0, 60.0)
    table["o-1"] = {"at": 50.0, "p": 0}
    table["o-2"] = {"at": 60.0, "p": 1}
    schedule.written()
    table["o-2"] = {"at": 70.0, "p": 1}  # a later batch's, already written
    schedule.rebuild()
    assert (schedule.index.get("o-1"), schedule.index.get("o-2")) == (50.0, 70.0)


class FakeConsumer:
    def __init__(self, committed: dict[TP, int], highwaters: dict[TP, int | None]) -> None:
        self._committed_offset, self.fetched = committed, highwaters
        self.broker_ends: dict[TP, int] = {}

    def highwater(self, tp: TP) -> int | None:
        return self.fetched.get(tp)

    async def highwaters(self, *tps: TP) -> dict[TP, int | None]:
        return {tp: self.broker_ends.get(tp, self.fetched.get(tp)) for tp in tps}


def message(topic: str, partition: int, offset: int) -> InputMessage:
    return InputMessage(topic=topic, partition=partition, offset=offset, key=None, value=b"")


async def test_input_progress_is_caught_up_once_every_topic_of_the_partition_is_read():
    orders, shipments, returns = TP("orders", 0), TP("shipments", 0), TP("returns", 0)
    consumer = FakeConsumer({orders: 5}, {orders: 8, shipments: None, returns: 0})
    app = SimpleNamespace(consumer=consumer)
    progress = InputProgress(app, {"orders", "shipments", "returns"})  # type: ignore[arg-type]
    progress.on_assigned([orders, shipments, returns, TP("ticks", 0)])
    assert not progress.caught_up(0)  # orders: committed 5, 8 on the broker
    for offset in (5, 6, 7):
        progress.handled(message("orders", 0, offset))
    assert not progress.caught_up(0)  # shipments: not fetched yet
    consumer.fetched[shipments] = 3
    consumer._committed_offset[shipments] = 3  # read to its end by the previous owner
    assert progress.caught_up(0)  # and returns is empty
    consumer.fetched[orders] = 9  # a new record arrived
    assert not progress.caught_up(0)
    progress.handled(message("orders", 0, 8))
    assert progress.caught_up(0)
    assert await progress.confirm(0)
    consumer.broker_ends[orders] = 12  # the fetch is stale: the broker holds more
    assert progress.caught_up(0)
    assert not await progress.confirm(0)
    assert not progress.caught_up(0)  # and it stays known
    progress.on_revoked()
    assert progress.caught_up(0)  # nothing assigned: nothing to wait for


def test_a_lagging_partition_is_judged_at_the_time_its_lagging_inputs_reached():
    orders, shipments = TP("orders", 0), TP("shipments", 0)
    consumer = FakeConsumer({orders: 0, shipments: 0}, {orders: 2, shipments: 10})
    app = SimpleNamespace(consumer=consumer)
    progress = InputProgress(app, {"orders", "shipments"})  # type: ignore[arg-type]
    progress.on_assigned([orders, shipments])
    wall = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    for offset, minutes in ((0, 10), (1, 50)):
        progress.observe(message("orders", 0, offset), wall - timedelta(minutes=minutes))
        progress.handled(message("orders", 0, offset))
    # orders is read to its end (its older record does not pull the time back);
    # shipments is not, and has reached 09:00.
    progress.observe(message("shipments", 0, 0), wall - timedelta(hours=3))
    assert progress.time_of(0, wall) == wall - timedelta(hours=3)
    # ... yet the record being handled counts at its own time
    at_two = wall - timedelta(hours=2)
    assert progress.time_of(0, wall, at_least=at_two) == at_two
    assert progress.time_of(0, wall, at_least=wall + timedelta(hours=1)) == wall
    for offset in range(10):
        progress.handled(message("shipments", 0, offset))
    assert progress.time_of(0, wall) == wall


async def test_upstream_topics_count_for_every_partition():
    """risk_detector: a customer partition also waits for the order partitions this worker
    reads, whose facts are repartitioned to every customer partition."""
    facts0, facts1, orders3 = TP("facts", 0), TP("facts", 1), TP("orders", 3)
    consumer = FakeConsumer({facts0: 4, facts1: 2, orders3: 7}, {facts0: 4, facts1: 2, orders3: 9})
    app = SimpleNamespace(consumer=consumer)
    progress = InputProgress(app, {"facts"}, upstream=frozenset({"orders"}))  # type: ignore[arg-type]
    progress.on_assigned([facts0, facts1, orders3])
    assert not progress.caught_up(0) and not progress.caught_up(1)
    progress.handled(message("orders", 3, 8))
    assert progress.caught_up(0) and progress.caught_up(1)
    assert set(progress.lag(1)) == {"facts:1", "orders:3"}


async def test_input_confirmed_asks_the_broker_at_most_once_per_interval():
    class CountingGate(FakeGate):
        asked = 0

        async def confirm(self, partition: int) -> bool:
            self.asked += 1
            return await super().confirm(partition)

    gate = CountingGate(lagging={1}, stale={2})
    schedule = DeadlineSchedule(FakeApp(), FakeTable(), None, gate=gate)
    schedule.confirm_interval_s = 60.0
    assert await schedule.input_confirmed(0) and await schedule.input_confirmed(0)
    assert gate.asked == 1  # the broker's answer holds for the interval
    assert not await schedule.input_confirmed(1)  # unread locally: the broker is not asked
    assert gate.asked == 1
    assert not await schedule.input_confirmed(2)  # looked read, the broker says otherwise
    schedule.on_assigned()  # a rebalance forgets every answer
    gate.lagging.clear()
    gate.stale.clear()
    assert await schedule.input_confirmed(2)
    assert gate.asked == 3
    assert await DeadlineSchedule(FakeApp(), FakeTable(), None).input_confirmed(5)  # no gate


async def test_without_a_ticks_topic_no_tick_is_sent():
    app = FakeApp()
    schedule = DeadlineSchedule(app, FakeTable(), None)
    schedule.rebuild()
    schedule.schedule("o-0", 0, 10.0)
    await schedule.request_ticks(20.0)
    assert app.producer.sent == []
    assert schedule.partitions_due(20.0) == [0]
    assert schedule.due(0, 20.0) == ["o-0"]


def test_pop_earliest_takes_the_earliest_over_every_partition_in_one_order():
    index = DeadlineIndex()
    index.set("b", 1, 20.0)
    index.set("a", 0, 30.0)
    index.set("c", 2, 20.0)
    index.set("d", 0, 40.0)
    assert index.pop_earliest(20.0, inclusive=False) is None
    assert index.pop_earliest(20.0, inclusive=True) == ("b", 1, 20.0)  # a tie: by partition
    assert index.pop_earliest(35.0, inclusive=False) == ("c", 2, 20.0)
    assert index.pop_earliest(35.0, inclusive=False) == ("a", 0, 30.0)
    assert index.pop_earliest(35.0, inclusive=False) is None
    assert index.get("d") == 40.0 and len(index) == 1
