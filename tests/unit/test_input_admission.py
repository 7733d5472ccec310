"""InputProgress.admit (common/streaming.py): every input record is handled once, in
offset order from the committed offset, whatever faust's fetcher hands over after a
rebalance — records from before its seek, records again, records after a gap."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP
from intervaltree import IntervalTree
from prometheus_client import REGISTRY

from common.kafka import InputMessage
from common.streaming import InputProgress

SHIPMENTS = "commerce.shipments"
TP0 = TP(SHIPMENTS, 0)


class Message:
    """A consumed record's bookkeeping, as faust keeps it (identity-hashed)."""

    def __init__(self, offset: int) -> None:
        self.offset, self.acked = offset, False


class FakeConsumer:
    """The parts of faust's consumer that admission reads and moves."""

    def __init__(self, committed: int | None) -> None:
        self._committed_offset: dict[TP, int | None] = {TP0: committed}
        self._read_offset: dict[TP, int | None] = {}
        self._gap: dict[TP, IntervalTree] = {}
        self._unacked_messages: set[Any] = set()
        self.seeks: list[tuple[TP, int]] = []

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self._read_offset[tp] = offset


class Worker:
    """A service's loop around `admit`: what it handled, in order."""

    def __init__(self, committed: int | None, *, ready: bool = True) -> None:
        self.consumer = FakeConsumer(committed)
        self.app = SimpleNamespace(
            consumer=self.consumer, tables=SimpleNamespace(actives_ready=ready)
        )
        self.progress = InputProgress(self.app, {SHIPMENTS}, service="test_admission")  # type: ignore[arg-type]
        self.progress.on_assigned([TP0])
        self.handled: list[int] = []
        self.left_unacked: list[int] = []

    async def feed(self, *offsets: int, read_offset: int | None = None) -> None:
        for offset in offsets:
            if read_offset is not None:
                self.consumer._read_offset[TP0] = read_offset
            message = Message(offset)
            self.consumer._unacked_messages.add(message)
            msg = InputMessage(topic=SHIPMENTS, partition=0, offset=offset, key=None, value=b"")
            if await self.progress.admit(message, msg):
                self.handled.append(offset)
                self.progress.handled(msg)
            else:
                assert message.acked and message not in self.consumer._unacked_messages
                self.left_unacked.append(offset)


def gaps(outcome: str) -> float:
    labels = {"service": "test_admission", "topic": SHIPMENTS, "outcome": outcome}
    return REGISTRY.get_sample_value("outreach_input_offset_gaps_total", labels) or 0.0


async def test_records_come_through_in_order_from_the_committed_offset_and_repeats_do_not() -> None:
    worker = Worker(committed=5)
    await worker.feed(3, 4, 5, 6, 7, 6, 7, 8)  # below the commit; a re-read of 6 and 7
    assert worker.handled == [5, 6, 7, 8]
    assert worker.left_unacked == [3, 4, 6, 7]
    assert worker.consumer.seeks == []


async def test_records_fetched_before_the_seek_after_a_rebalance_wait_for_it() -> None:
    # The fetcher started ahead of the group's commit (seen: 30 records past it); what
    # it read is neither handled nor acknowledged, and read again after faust's seek.
    worker = Worker(committed=41, ready=False)
    await worker.feed(71, 72)
    worker.app.tables.actives_ready = True  # faust sought to the committed offset
    await worker.feed(41, 42, 43)
    assert worker.handled == [41, 42, 43]
    assert worker.left_unacked == [71, 72]


async def test_a_gap_sends_the_consumer_back_and_records_from_before_the_seek_wait() -> None:
    worker = Worker(committed=38)
    worker.consumer._gap[TP0] = IntervalTree.from_tuples([(41, 43)])  # faust: "41, 42 done"
    before = gaps("rewound")
    await worker.feed(*range(38, 41), 42, 43, 44)  # 41 never came
    assert worker.consumer.seeks == [(TP0, 41)]
    assert [(i.begin, i.end) for i in worker.consumer._gap[TP0]] == [
        (42, 43)
    ]  # 41 holds the commit back
    await worker.feed(41, 42, 43, 44, 45)  # read again from 41
    assert worker.handled == [38, 39, 40, 41, 42, 43, 44, 45]
    assert worker.left_unacked == [42, 43, 44]
    assert gaps("rewound") == before + 1


async def test_the_seek_is_repeated_while_the_fetcher_reads_past_the_gap_again() -> None:
    worker = Worker(committed=10)
    await worker.feed(10, 13)
    assert worker.consumer.seeks == [(TP0, 11)]
    # Records fetched before the seek: faust's read offset moved past them, so it would
    # drop the re-read ones as seen. The seek is repeated until it did not.
    await worker.feed(14, 15, read_offset=15)
    await worker.feed(16, read_offset=11)
    assert worker.consumer.seeks == [(TP0, 11), (TP0, 11), (TP0, 11)]
    await worker.feed(11, 12, 13, 14, 15, 16, 17)
    assert worker.handled == list(range(10, 18))


async def test_offsets_the_broker_does_not_hold_are_accepted_after_a_second_look() -> None:
    # A transactional producer's commit markers take offsets: 6 and 7 are no records.
    worker = Worker(committed=5)
    before = gaps("absent")
    await worker.feed(5, 8)
    await worker.feed(8)  # the re-read from 6 begins at 8: once may be chance
    assert worker.consumer.seeks == [(TP0, 6), (TP0, 6)]
    await worker.feed(9, 8, 9)  # 9: fetched before the second seek; then 8 first again
    assert worker.handled == [5, 8, 9]
    assert gaps("absent") == before + 1


def test_every_gap_outcome_is_exported_at_zero_once_a_topic_is_assigned() -> None:
    worker = Worker(committed=5)
    assert worker.progress.admitted == {SHIPMENTS}
    for outcome in ("rewound", "absent", "unrecovered"):
        labels = {"service": "test_admission", "topic": SHIPMENTS, "outcome": outcome}
        assert REGISTRY.get_sample_value("outreach_input_offset_gaps_total", labels) is not None


async def test_a_partition_without_a_commit_starts_at_its_first_record() -> None:
    worker = Worker(committed=None)
    await worker.feed(0, 1, 2)
    assert worker.handled == [0, 1, 2] and worker.consumer.seeks == []


async def test_records_of_other_topics_are_not_its_business() -> None:
    worker = Worker(committed=5, ready=False)
    msg = InputMessage(topic="risk_detector-ticks", partition=0, offset=99, key=None, value=b"")
    event = SimpleNamespace(message=Message(99))
    assert await worker.progress.admit(event, msg)  # type: ignore[arg-type]
    assert not event.message.acked
