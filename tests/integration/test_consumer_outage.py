"""A dependency outage holds a consumer's input instead of dead-lettering it: the loop
commits what it finished, rewinds and pauses its partitions, tries again with backoff,
and handles every record once the dependency is back (real broker)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from common.clock import WallClock
from common.envelope import CloudEvent, new_event
from common.flowing import FlowingConsumerLoop
from common.kafka import AiokafkaProducer, ConsumerLoop, DeadLetters, InputMessage, MessageProcessor
from common.ops_http import Heartbeat
from common.outages import DependencyUnavailable
from tests.e2e.stack import TopicReader

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def record(i: int) -> CloudEvent:
    return new_event(
        type="customer.upserted",
        source="/shop/test",
        subject=f"c-{i}",
        time=datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
        id=f"evt-{i}",
        data={"customer_id": f"c-{i}"},
    )


class FlakyDependency:
    """Down for the first `down_s` seconds after the first call, then up."""

    def __init__(self, down_s: float) -> None:
        self.down_s = down_s
        self.first: float | None = None
        self.handled: list[str] = []
        self.refused = 0
        self.all_seen = asyncio.Event()

    async def handle(self, msg: InputMessage, event: CloudEvent) -> None:
        now = time.monotonic()
        self.first = self.first or now
        if now - self.first < self.down_s:
            self.refused += 1
            raise DependencyUnavailable("database", "connection refused")
        await asyncio.sleep(0.001)
        self.handled.append(event.id)
        if len(set(self.handled)) >= 60:
            self.all_seen.set()


@pytest.mark.parametrize("kind", [ConsumerLoop, FlowingConsumerLoop], ids=["batches", "flowing"])
@pytest.mark.parametrize("concurrency", [1, 4])
async def test_an_outage_holds_the_input_and_nothing_is_dead_lettered(
    kafka_bootstrap, concurrency, kind
):
    topic, deadletter = f"t-{uuid.uuid4().hex[:8]}", f"dl-{uuid.uuid4().hex[:8]}"
    producer = AiokafkaProducer(kafka_bootstrap, "test")
    await producer.start()
    for i in range(60):
        await producer.send(topic, f"c-{i}".encode(), record(i).to_bytes(), [])
    dependency = FlakyDependency(down_s=3.0)
    processor = MessageProcessor(
        "test", dependency.handle, DeadLetters(producer, deadletter, "test"), WallClock()
    )
    loop = kind(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{topic}",
        topics=[topic],
        processor=processor,
        heartbeat=Heartbeat(),
        client_id="test",
        max_batch=20,
        concurrency=concurrency,
        hold_first_s=0.2,
        hold_max_s=1.0,
    )
    await loop.start()
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(dependency.all_seen.wait(), timeout=60)
        assert sorted(set(dependency.handled)) == sorted(f"evt-{i}" for i in range(60))
        assert dependency.refused > 0
        assert len(dependency.handled) - 60 < 20  # at most a batch's worth handled twice
    finally:
        await loop.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
    reader = TopicReader(kafka_bootstrap, deadletter)
    try:
        assert reader.poll() == []
    finally:
        reader.close()
