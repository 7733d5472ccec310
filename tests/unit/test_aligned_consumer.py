"""What the plain consumer loop on the event clock commits and rewinds to: each
partition's first record not handled, wherever the aligner released the others."""

from __future__ import annotations

import asyncio
from typing import Any

from common.aligned_consumer import ConsumerLanes
from common.kafka import InputMessage
from common.watermark import Aligner

INCIDENTS = ("incidents", 0)  # two upstream instances interleave their records on it
SHOP = ("orders", 0)


class Consumer:
    """The one thing ConsumerLanes asks of an aiokafka consumer on assignment."""

    async def position(self, tp: Any) -> int:
        return 10


class TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


def message(lane: tuple[str, int], offset: int) -> InputMessage:
    return InputMessage(topic=lane[0], partition=lane[1], offset=offset, key=None, value=b"")


def lanes_and_aligner() -> tuple[ConsumerLanes, Aligner[tuple[str, int], Any]]:
    lanes = ConsumerLanes()
    lanes.consumer = Consumer()
    asyncio.run(lanes.assign([TP(*INCIDENTS), TP(*SHOP)]))
    aligner: Aligner[tuple[str, int], Any] = Aligner(idle_s=30.0, monotonic=lambda: 0.0)
    aligner.assign([INCIDENTS, SHOP], derived=[INCIDENTS])
    return lanes, aligner


def take(
    lanes: ConsumerLanes,
    aligner: Aligner[tuple[str, int], Any],
    lane: tuple[str, int],
    offset: int,
    key: int,
) -> None:
    msg = message(lane, offset)
    assert asyncio.run(lanes.admit(None, msg))
    aligner.add(lane, key, (None, msg))


def test_nothing_taken_commits_the_assigned_position() -> None:
    lanes, aligner = lanes_and_aligner()
    assert lanes.first_unhandled(aligner) == {INCIDENTS: 10, SHOP: 10}


def test_a_derived_lane_handled_out_of_offset_order_commits_past_all_of_it() -> None:
    lanes, aligner = lanes_and_aligner()
    aligner.received()
    # One instance's record stamped late, then the other instance's earlier ones.
    take(lanes, aligner, INCIDENTS, 10, key=900)
    take(lanes, aligner, INCIDENTS, 11, key=100)
    take(lanes, aligner, INCIDENTS, 12, key=200)
    aligner.bound(INCIDENTS, 1_000)
    aligner.confirm([SHOP], aligner.received())
    released = [item[1].offset for _, item in aligner.release()]
    assert released == [11, 12, 10]
    for offset in released:
        lanes.handled(message(INCIDENTS, offset))
    assert lanes.first_unhandled(aligner)[INCIDENTS] == 13


def test_a_record_still_waiting_below_handled_ones_is_where_the_lane_commits() -> None:
    lanes, aligner = lanes_and_aligner()
    aligner.received()
    take(lanes, aligner, INCIDENTS, 10, key=900)
    take(lanes, aligner, INCIDENTS, 11, key=100)
    aligner.bound(INCIDENTS, 500)  # the record stamped 900 may not go yet
    aligner.confirm([SHOP], aligner.received())
    for _, (_, msg) in aligner.release():
        lanes.handled(msg)
    assert lanes.first_unhandled(aligner)[INCIDENTS] == 10
    # After an outage the lane is read again from there (offset 11 comes again; its
    # handler is idempotent), and what was taken before it counts as not taken.
    lanes.rewind(lanes.first_unhandled(aligner))
    assert asyncio.run(lanes.admit(None, message(INCIDENTS, 10)))
