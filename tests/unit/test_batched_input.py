"""common.batched_input: the records of the batched topics reach the handler a fetch at a
time (in chunks, in the scheduler's order), every other topic takes faust's own path,
and what the handler may not see (a rebalance began) is dropped without moving the read
offsets."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from common.batched_input import _BatchDrain

INPUT, TICKS, CHANGELOG = "commerce.shipments", "ticks", "orders-changelog"


class Record:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.offset, self.topic, self.acked = tp, offset, tp.topic, False


class Consumer(_BatchDrain):
    """The parts of faust's consumer the drain loop uses, fed a list of fetches."""

    batch_topics = frozenset({INPUT, TICKS})
    batch_max = 3

    def __init__(self, fetches: list[dict[TP, list[int]]], handled: list[list[Any]]) -> None:
        self.fetches = fetches
        self.delivered: list[Any] = []  # faust's per-record path
        self.handled = handled
        self._stopped = asyncio.Event()
        self.suspend_flow = asyncio.Event()
        self.flow_active = True
        self.should_stop = False
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._buffered_partitions: set[TP] = set()
        self._commit_every = 1000
        self._n_acked = 0
        self._unacked_messages: set[Any] = set()
        self._waiting_for_ack: Any = None
        self.markers: list[Any] = []
        self.acked: list[Any] = []
        self.gaps: list[tuple[TP, int, int]] = []
        self.idle = 0
        self.waits: list[float] = []
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None),
            should_stop=False,
        )
        self.transport = SimpleNamespace(app=self.app)
        self.diag = SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)
        self.scheduler = SimpleNamespace(iterate=self._round_robin)
        self.consumer_stopped_errors = (RuntimeError,)

    @staticmethod
    def _round_robin(records: dict[TP, list[Record]]) -> Any:
        iterators = {tp: iter(rs) for tp, rs in records.items()}
        while iterators:
            for tp in list(iterators):
                try:
                    yield tp, next(iterators[tp])
                except StopIteration:
                    del iterators[tp]

    async def _wait_next_records(self, seconds: float) -> Any:
        self.waits.append(seconds)
        if not self.fetches:
            self._stopped.set()
            return {}, None
        fetch = self.fetches.pop(0)
        return {tp: [Record(tp, o) for o in offsets] for tp, offsets in fetch.items()}, None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    def highwater(self, tp: TP) -> int:
        return 100

    def _to_message(self, tp: TP, record: Record) -> Record:
        return record

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))

    async def commit(self) -> None:
        return None

    def callback(self, message: Any) -> Any:
        self.delivered.append((message.topic, message.offset))
        return asyncio.sleep(0)

    async def wait_first(self, *coros: Any) -> None:
        first = asyncio.ensure_future(coros[0])
        await first
        for coro in coros[1:]:
            coro.close()

    async def perform_seek(self) -> None:
        self.seeked = True

    def ack(self, message: Any) -> None:
        if not message.acked:
            message.acked = True
            self.acked.append((message.topic, message.offset))


async def drain(consumer: Consumer) -> None:
    async def handler(batch: list[Any], in_flight: Any) -> bool:
        if batch:
            consumer.handled.append([(m.topic, m.offset) for m in batch])
            assert in_flight in consumer._unacked_messages  # a rebalance waits for it
        else:
            consumer.idle += 1
            assert in_flight is None
        for message in batch:
            consumer.ack(message)  # the handler acknowledges what it is done with
        if in_flight is not None:
            consumer.markers.append(in_flight)
            in_flight.done()
            assert in_flight not in consumer._unacked_messages
        return False

    consumer.batch_handler = handler  # type: ignore[assignment]
    await consumer._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))


async def test_a_fetch_is_handed_over_in_chunks_in_the_schedulers_order() -> None:
    a, b, log = TP(INPUT, 0), TP(INPUT, 1), TP(CHANGELOG, 0)
    consumer = Consumer([{a: [0, 1, 2], b: [5, 6], log: [7, 8]}], [])
    await drain(consumer)
    assert consumer.handled == [
        [(INPUT, 0), (INPUT, 5), (INPUT, 1)],
        [(INPUT, 6), (INPUT, 2)],
    ]
    assert consumer.delivered == [(CHANGELOG, 7), (CHANGELOG, 8)]  # faust's own path
    assert sorted(consumer.acked) == sorted(o for chunk in consumer.handled for o in chunk)
    assert consumer._read_offset[a] == 2 and consumer._read_offset[b] == 6


async def test_records_seen_before_are_skipped_and_a_jump_is_a_gap_for_faust() -> None:
    a = TP(INPUT, 0)
    consumer = Consumer([{a: [3, 4]}, {a: [4, 5, 9]}], [])
    consumer._read_offset[a] = 4
    await drain(consumer)
    assert [o for chunk in consumer.handled for _, o in chunk] == [4, 4, 5, 9]
    assert consumer.gaps == [(a, 6, 9)]


async def test_what_admission_kept_back_is_not_acknowledged() -> None:
    a = TP(INPUT, 0)
    consumer = Consumer([{a: [0, 1]}], [])

    async def handler(batch: list[Any], in_flight: Any) -> bool:
        if batch:
            batch[1].acked = True  # as InputProgress does for a record it will read again
        for message in batch:
            consumer.ack(message)
        return False

    consumer.batch_handler = handler  # type: ignore[assignment]
    await consumer._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))
    assert consumer.acked == [(INPUT, 0)]


async def test_a_fetch_a_rebalance_overtook_is_dropped_without_moving_the_read_offset() -> None:
    a = TP(INPUT, 0)
    consumer = Consumer([{a: [0, 1]}, {a: [0, 1]}], [])
    seen = 0

    def rebalance_during_the_first(tp: TP, offset: int) -> None:
        nonlocal seen
        seen += 1
        if seen == 2:
            consumer.app.consumer_generation_id = 2  # the group rebalanced meanwhile

    consumer.app.monitor.track_tp_end_offset = rebalance_during_the_first
    await drain(consumer)
    assert consumer.handled == [[(INPUT, 0), (INPUT, 1)]]  # the second fetch only
    assert len(consumer.markers) == 1
    assert consumer._read_offset[a] == 1


async def test_a_fetch_while_the_flow_is_stopped_seeks_back_to_the_commit() -> None:
    a = TP(INPUT, 0)
    consumer = Consumer([{a: [0, 1]}], [])
    consumer.flow_active = False
    await drain(consumer)
    assert consumer.handled == [] and consumer.seeked
    assert consumer._read_offset[a] is None


async def test_with_no_records_the_handler_is_called_idle_and_work_left_skips_the_wait() -> None:
    a = TP(INPUT, 0)
    consumer = Consumer([{a: [0]}, {}, {}, {a: [1]}], [])
    calls: list[int] = []

    async def handler(batch: list[Any], in_flight: Any) -> bool:
        calls.append(len(batch))
        return len(calls) == 2  # the first idle call has work left, once

    consumer.batch_handler = handler  # type: ignore[assignment]
    consumer.batch_idle_s = 0.25
    await consumer._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))
    assert calls[:4] == [1, 0, 0, 1]
    assert consumer.waits[:4] == [0.25, 0.25, 0.0, 0.25]
