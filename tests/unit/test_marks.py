"""Watermarks between services: a downstream lane is complete below the lowest moment
every source partition of its upstream vouched for, once the offsets named are read."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.types import TP

from common.marks import AppliedFront, Mark, MarkPublisher, UpstreamMarks

INPUTS = {"orders": 2}
LANE = ("incidents", 0)


def mark(instance: str, sources: list[int], at: int, offset: int | None = None) -> Mark:
    outputs = {} if offset is None else {LANE: offset}
    return Mark("watcher", instance, INPUTS, tuple(("orders", p) for p in sources), at, outputs)


def bounds(marks: UpstreamMarks, read: int | None) -> dict[tuple[str, int], int]:
    return marks.bounds([LANE, ("other", 0)], lambda lane: read)


def test_a_mark_survives_its_bytes() -> None:
    original = mark("w1", [0, 1], 1234, offset=7)
    assert Mark.from_bytes(original.to_bytes()) == original
    with pytest.raises(ValueError):
        Mark.from_bytes(b"{}")


def test_the_bound_waits_for_every_source_partition() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.add(mark("w1", [0], 100))
    assert bounds(marks, 0) == {}  # partition 1's reader has said nothing yet
    marks.add(mark("w2", [1], 80))
    assert bounds(marks, 0) == {LANE: 80}


def test_the_bound_waits_until_the_offsets_named_are_read() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.add(mark("w1", [0, 1], 100, offset=5))
    assert bounds(marks, 4) == {}
    assert bounds(marks, None) == {}
    assert bounds(marks, 5) == {LANE: 100}


def test_an_earlier_mark_counts_while_a_later_one_is_not_yet_read() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.add(mark("w1", [0, 1], 100, offset=5))
    marks.add(mark("w1", [0, 1], 200, offset=9))
    assert bounds(marks, 6) == {LANE: 100}
    assert bounds(marks, 9) == {LANE: 200}


def test_a_partition_moved_keeps_what_its_earlier_owner_vouched_for() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.add(mark("w1", [0, 1], 300))
    assert bounds(marks, 0) == {LANE: 300}
    marks.add(mark("w2", [1], 50))  # a new owner starts behind: replays, emits duplicates
    assert bounds(marks, 0) == {LANE: 300}


def test_a_new_assignment_settles_again_from_the_newest_marks() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.add(mark("w1", [0, 1], 100, offset=5))
    assert bounds(marks, 5) == {LANE: 100}
    marks.forget_lanes()
    assert bounds(marks, 2) == {}  # read again from an earlier offset
    assert bounds(marks, 5) == {LANE: 100}


def test_marks_of_services_not_read_are_ignored() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.add(Mark("risk", "r1", INPUTS, (("orders", 0), ("orders", 1)), 100, {}))
    assert bounds(marks, 0) == {}


async def test_the_publisher_names_the_offset_after_each_partitions_last_output() -> None:
    sent: list[tuple[str, bytes, bytes]] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, key, value))

    publisher = MarkPublisher("watcher", "w1", INPUTS, "marks", send)
    publisher.acknowledged(
        [
            SimpleNamespace(topic="incidents", partition=0, offset=4),
            SimpleNamespace(topic="incidents", partition=0, offset=2),
            None,  # a dead letter's acknowledgement through another producer
        ]
    )
    await publisher.publish(500, [("orders", 1), ("orders", 0)])
    topic, key, value = sent[0]
    assert (topic, key) == ("marks", b"w1")
    assert Mark.from_bytes(value) == Mark(
        "watcher", "w1", INPUTS, (("orders", 0), ("orders", 1)), 500, {LANE: 5}
    )


def test_sources_read_locally_hold_nothing_back_until_the_next_assignment() -> None:
    marks = UpstreamMarks({"incidents": "watcher"})
    marks.vouch_locally("watcher", INPUTS, [("orders", 0)])
    assert bounds(marks, 0) == {}  # partition 1 is read elsewhere: no word from it
    marks.add(mark("w2", [1], 70))
    assert bounds(marks, 0) == {LANE: 70}
    marks.vouch_locally("watcher", INPUTS, [("orders", 0), ("orders", 1)])
    assert bounds(marks, 0)[LANE] > 10**15
    marks.forget_lanes()
    marks.add(mark("w2", [1], 80))
    assert bounds(marks, 0) == {}  # partition 0 vouched for by no one now


class FakeConsumer:
    """What AppliedFront reads of an aiokafka consumer."""

    def __init__(self, ends: dict[int, int], positions: dict[int, int]) -> None:
        self.ends, self.positions = ends, positions

    def assignment(self) -> set[TP]:
        return {TP("customers", p) for p in self.ends}

    async def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    async def position(self, tp: TP) -> int:
        return self.positions[tp.partition]


def records(partition: int, *stamps: int) -> tuple[TP, list[SimpleNamespace]]:
    return TP("customers", partition), [SimpleNamespace(timestamp=s) for s in stamps]


async def test_applied_front_vouches_past_the_latest_stamp_once_every_partition_is_read() -> None:
    sent: list[Mark] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append(Mark.from_bytes(value))

    publisher = MarkPublisher("preferences", "p1", {"customers": 2}, "marks", send, outputs=())
    front = AppliedFront(publisher, ["customers"])
    consumer = FakeConsumer(ends={0: 2, 1: 5}, positions={0: 2, 1: 3})
    await front.after_batch(consumer, dict([records(0, 10, 40), records(1, 20, 30)]))
    assert sent[-1].at_ms == 30  # partition 1 has more to read: up to its last applied
    consumer.positions[1] = 5
    await front.after_batch(consumer, dict([records(1, 50)]))
    assert sent[-1].at_ms == 51  # all read: just past the latest stamp applied
    assert sent[-1].sources == (("customers", 0), ("customers", 1)) and sent[-1].outputs == {}
    await front.after_batch(consumer, {})  # idle: not again so soon
    assert len(sent) == 2


async def test_applied_front_vouches_past_the_front_of_the_whole_stream() -> None:
    sent: list[Mark] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append(Mark.from_bytes(value))

    class Front:
        async def latest(self) -> int:
            return 900  # an order stamped later than every customer record

    publisher = MarkPublisher("preferences", "p1", {"customers": 2}, "marks", send, outputs=())
    front = AppliedFront(publisher, ["customers"], Front())
    consumer = FakeConsumer(ends={0: 1, 1: 0}, positions={0: 1, 1: 0})
    await front.after_batch(consumer, dict([records(0, 10)]))
    assert sent[-1].at_ms == 901
