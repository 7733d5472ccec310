"""`FlowingConsumerLoop` on the real broker through a rebalance: a second member joins
the group while the first has records in its lanes; every record is handled (at least
once) and the group's committed offsets reach the end of every partition."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from common.admin import ensure_topics
from common.clock import WallClock
from common.envelope import CloudEvent, new_event
from common.flowing import FlowingConsumerLoop
from common.kafka import AiokafkaProducer, DeadLetters, InputMessage, MessageProcessor
from common.ops_http import Heartbeat
from common.topics import TopicSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
RECORDS = 400


class Slowish:
    """Takes 40 ms a record (four lanes: ~4 s for all on one member), noting who."""

    def __init__(self) -> None:
        self.handled: list[str] = []
        self.by: dict[str, int] = {}
        self.under_way = asyncio.Event()
        self.all_seen = asyncio.Event()

    def for_member(self, name: str) -> Any:
        async def handle(msg: InputMessage, event: CloudEvent) -> None:
            await asyncio.sleep(0.04)
            self.handled.append(event.id)
            self.by[name] = self.by.get(name, 0) + 1
            if len(self.handled) >= 40:
                self.under_way.set()
            if len(set(self.handled)) >= RECORDS:
                self.all_seen.set()

        return handle


def member(kafka_bootstrap: str, topic: str, handler: Slowish, name: str) -> FlowingConsumerLoop:
    processor = MessageProcessor(
        "test", handler.for_member(name), DeadLetters(_Unused(), "dl", "test"), WallClock()
    )
    return FlowingConsumerLoop(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{topic}",
        topics=[topic],
        processor=processor,
        heartbeat=Heartbeat(),
        client_id=name,
        max_batch=50,
        concurrency=4,
        commit_interval_s=0.2,
        session_timeout_s=10.0,
    )


class _Unused(AiokafkaProducer):
    def __init__(self) -> None:  # no dead letters here: every record is valid
        pass


async def committed(kafka_bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(4)]
        offsets = [await consumer.committed(tp) for tp in tps]
        return sum(o or 0 for o in offsets)
    finally:
        await consumer.stop()


async def test_a_member_joining_takes_over_partitions_and_nothing_is_lost(kafka_bootstrap):
    topic = f"flow-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 4)])
    producer = AiokafkaProducer(kafka_bootstrap, "test")
    await producer.start()
    for i in range(RECORDS):
        event = new_event(
            type="customer.upserted", source="/shop/test", subject=f"c-{i}",
            time=datetime(2026, 3, 2, 8, 0, tzinfo=UTC), id=f"evt-{i}", data={"n": i},
        )  # fmt: skip
        await producer.send(topic, f"c-{i % 40}".encode(), event.to_bytes(), [])
    await producer.stop()
    handler = Slowish()
    first, second = (member(kafka_bootstrap, topic, handler, n) for n in ("one", "two"))
    await first.start()
    tasks = [asyncio.create_task(first.run())]
    try:
        await asyncio.wait_for(handler.under_way.wait(), timeout=30)
        await second.start()
        tasks.append(asyncio.create_task(second.run()))
        await asyncio.wait_for(handler.all_seen.wait(), timeout=60)
        assert set(handler.handled) == {f"evt-{i}" for i in range(RECORDS)}
        for _ in range(50):  # the last commits come within a commit interval
            if await committed(kafka_bootstrap, topic) == RECORDS:
                break
            await asyncio.sleep(0.2)
        assert await committed(kafka_bootstrap, topic) == RECORDS
        assert handler.by.get("two", 0) > 0  # it took partitions over midway
    finally:
        for loop in (first, second):
            await loop.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
