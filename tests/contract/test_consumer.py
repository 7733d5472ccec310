"""The consumer's contract, run on both implementations of `ConsumerPort`: the in-memory
`LocalBroker`'s consumer the unit tests of the consumer loops use, and aiokafka's on the
real broker. What the loops rely on: records per partition in offset order with what
their producer gave them, a group that resumes from its committed offsets, seek, pause,
end offsets and the listener told of the assignment."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener

from common.admin import ensure_topics
from common.consumer import ConsumerPort, aiokafka_consumer
from common.kafka import AiokafkaProducer
from common.local_broker import LocalBroker
from common.topics import TopicSpec

pytestmark = pytest.mark.integration
T0_MS = 1_772_625_600_000  # 2026-03-04 12:00 UTC


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned: list[set[Any]] = []

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        self.assigned.append(set(assigned))

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        return None


@dataclass
class Side:
    topic: str
    produce: Callable[[bytes, bytes, int], Awaitable[None]]
    make: Callable[[str], ConsumerPort]
    consumers: list[ConsumerPort] = field(default_factory=list)

    async def consumer(self, group: str) -> tuple[ConsumerPort, Listener]:
        consumer, listener = self.make(group), Listener()
        await consumer.start()
        consumer.subscribe([self.topic], listener=listener)
        self.consumers.append(consumer)
        return consumer, listener


@pytest.fixture(params=["local", "kafka"])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    topic = f"c-{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        broker = LocalBroker(partitions=4)
        broker.create_topic(topic)

        async def produce_local(key: bytes, value: bytes, stamp: int) -> None:
            broker.produce(topic, key, value, headers=[("h", key)], timestamp_ms=stamp)

        made = Side(topic, produce_local, lambda g: broker.consumer("", g, "test", 500, 10.0))
        yield made
    else:
        bootstrap = str(request.getfixturevalue("kafka_bootstrap"))
        await asyncio.to_thread(ensure_topics, bootstrap, [TopicSpec(topic, 4)])
        producer = AiokafkaProducer(bootstrap, "contract")
        await producer.start()

        async def produce_kafka(key: bytes, value: bytes, stamp: int) -> None:
            await producer.send(topic, key, value, [("h", key)], timestamp_ms=stamp)

        made = Side(
            topic, produce_kafka, lambda g: aiokafka_consumer(bootstrap, g, "test", 500, 10.0)
        )
        try:
            yield made
        finally:
            await producer.stop()
    for consumer in made.consumers:
        await consumer.stop()


async def drain(consumer: ConsumerPort, count: int, timeout_s: float = 30.0) -> list[Any]:
    """Fetch until `count` records came (or the time is up)."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records += batch
    return records


async def fill(side: Side, keys: int = 5, each: int = 4) -> None:
    for n in range(each):
        for k in range(keys):
            await side.produce(f"k{k}".encode(), f"k{k}-{n}".encode(), T0_MS + n * 10 + k)


async def test_records_come_per_partition_in_offset_order_as_produced(side):
    await fill(side)
    consumer, listener = await side.consumer("g1")
    records = await drain(consumer, 20)
    assert len(records) == 20
    assert listener.assigned and {tp.topic for tp in listener.assigned[0]} == {side.topic}
    for k in range(5):
        mine = [r for r in records if r.key == f"k{k}".encode()]
        assert [r.value for r in mine] == [f"k{k}-{n}".encode() for n in range(4)]
        assert len({r.partition for r in mine}) == 1  # a key keeps its partition
        assert [r.timestamp for r in mine] == [T0_MS + n * 10 + k for n in range(4)]
        assert all(list(r.headers) == [("h", r.key)] for r in mine)
    for tp in consumer.assignment():
        offsets = [r.offset for r in records if r.partition == tp.partition]
        assert offsets == list(range(len(offsets)))
        assert consumer.highwater(tp) == await consumer.position(tp) == len(offsets)
    ends = await consumer.end_offsets(sorted(consumer.assignment()))
    assert sum(ends.values()) == 20


async def test_the_group_resumes_from_its_committed_offsets(side):
    await fill(side)
    first, _ = await side.consumer("g2")
    records = await drain(first, 20)
    used = {(r.topic, r.partition) for r in records}
    tps = [tp for tp in first.assignment() if (tp.topic, tp.partition) in used]
    await first.commit({tp: 1 for tp in tps})
    await first.stop()
    side.consumers.remove(first)
    second, _ = await side.consumer("g2")
    again = await drain(second, 20 - len(tps), timeout_s=30)
    assert len(again) == 20 - len(tps) and all(r.offset >= 1 for r in again)
    other, _ = await side.consumer("g3")  # another group: from the earliest
    assert len(await drain(other, 20)) == 20


async def test_seek_reads_a_partition_again(side):
    await fill(side)
    consumer, _ = await side.consumer("g4")
    records = await drain(consumer, 20)
    tp = next(tp for tp in consumer.assignment() if tp.partition == records[0].partition)
    count = sum(1 for r in records if r.partition == tp.partition)
    consumer.seek(tp, 1)
    again = await drain(consumer, count - 1, timeout_s=10)
    assert [r.offset for r in again] == list(range(1, count))


async def test_a_paused_partition_yields_nothing_until_resumed(side):
    await fill(side, keys=5, each=1)
    consumer, _ = await side.consumer("g5")
    first = await drain(consumer, 5)
    held = next(tp for tp in consumer.assignment() if tp.partition == first[0].partition)
    consumer.pause(held)
    await fill(side, keys=5, each=1)
    expected = sum(1 for r in first if r.partition == held.partition)
    others = await drain(consumer, 5 - expected, timeout_s=10)
    assert others and all(r.partition != held.partition for r in others)
    assert await consumer.getmany(timeout_ms=300) == {}
    consumer.resume(held)
    late = await drain(consumer, expected, timeout_s=10)
    assert len(late) == expected and {r.partition for r in late} == {held.partition}
