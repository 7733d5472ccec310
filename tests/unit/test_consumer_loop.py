"""The plain consumer loops on the in-memory broker (common/local_broker.py, held to
aiokafka's behaviour by tests/contract/test_consumer.py): what they commit, what they
dead-letter, and how an outage holds their input — `ConsumerLoop` (a batch at a time)
and `FlowingConsumerLoop` (lanes kept fed). The same on the real broker:
tests/integration/test_consumer_outage.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from common.clock import WallClock
from common.envelope import CloudEvent, new_event
from common.flowing import FlowingConsumerLoop
from common.kafka import (
    ConsumerLoop,
    DeadLetters,
    InputMessage,
    MessageProcessor,
    RecordingProducer,
)
from common.local_broker import LocalBroker
from common.ops_http import Heartbeat
from common.outages import DependencyUnavailable

TOPIC = "commerce.customers"


def upserted(i: int) -> bytes:
    return new_event(
        type="customer.upserted",
        source="/shop/test",
        subject=f"c-{i % 7}",
        time=datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
        id=f"evt-{i}",
        data={"customer_id": f"c-{i % 7}", "n": i},
    ).to_bytes()


@dataclass
class Handler:
    """Handles what it is given; refuses with an outage while `down` is set."""

    handled: list[str] = field(default_factory=list)
    refused: int = 0
    down: bool = False
    slow: dict[str, asyncio.Event] = field(default_factory=dict)  # event id -> let it finish

    async def __call__(self, msg: InputMessage, event: CloudEvent) -> None:
        if self.down:
            self.refused += 1
            raise DependencyUnavailable("database", "connection refused")
        await asyncio.sleep(0)
        if event.id in self.slow:
            await self.slow[event.id].wait()
        self.handled.append(event.id)


@dataclass
class Run:
    broker: LocalBroker
    handler: Handler
    deadletters: RecordingProducer
    loop: ConsumerLoop

    def committed(self) -> int:
        return sum(o for (group, _), o in self.broker.committed.items() if group == "g")

    async def until_committed(self, total: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.committed() < total:
            assert time.monotonic() < deadline, f"committed {self.committed()} of {total}"
            await asyncio.sleep(0.01)


LOOPS = {
    "batches, one lane": (ConsumerLoop, 1, {}),
    "batches, four lanes": (ConsumerLoop, 4, {}),
    "flowing, one lane": (FlowingConsumerLoop, 1, {"commit_interval_s": 0.02}),
    "flowing, four lanes": (FlowingConsumerLoop, 4, {"commit_interval_s": 0.02}),
}


@pytest.fixture(params=list(LOOPS))
async def run(request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    async for started in _run(*LOOPS[request.param]):
        yield started


@pytest.fixture
async def flowing() -> AsyncIterator[Run]:
    async for started in _run(*LOOPS["flowing, four lanes"]):
        yield started


async def _run(kind: type[ConsumerLoop], lanes: int, options: dict) -> AsyncIterator[Run]:
    broker, handler, producer = LocalBroker(partitions=3), Handler(), RecordingProducer()
    broker.create_topic(TOPIC)
    processor = MessageProcessor(
        "test", handler, DeadLetters(producer, "deadletter.test", "test"), WallClock()
    )
    loop = kind(
        **options,
        bootstrap_servers="local",
        group_id="g",
        topics=[TOPIC],
        processor=processor,
        heartbeat=Heartbeat(),
        client_id="test",
        max_batch=10,
        concurrency=lanes,
        hold_first_s=0.05,
        hold_max_s=0.2,
        consumer_factory=broker.consumer,
    )
    await loop.start()
    task = asyncio.create_task(loop.run())
    try:
        yield Run(broker, handler, producer, loop)
    finally:
        await loop.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_every_record_is_handled_then_committed_and_bad_input_dead_lettered(run):
    for i in range(30):
        run.broker.produce(TOPIC, f"c-{i % 7}".encode(), upserted(i))
    run.broker.produce(TOPIC, b"c-1", b"not an event")
    await run.until_committed(31)
    assert sorted(run.handler.handled) == sorted(f"evt-{i}" for i in range(30))
    for customer in range(7):  # a customer's records keep their order, in any lane
        mine = [int(e[4:]) for e in run.handler.handled if int(e[4:]) % 7 == customer]
        assert mine == sorted(mine)
    dead = run.deadletters.records
    assert [(t, v) for t, _, v, _ in dead] == [("deadletter.test", b"not an event")]


async def test_an_outage_holds_the_input_and_loses_or_dead_letters_nothing(run):
    run.handler.down = True
    for i in range(25):
        run.broker.produce(TOPIC, f"c-{i % 7}".encode(), upserted(i))
    deadline = time.monotonic() + 5
    while run.handler.refused < 3:  # refused, held, tried again: still down
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert run.committed() == 0 and run.handler.handled == []
    run.handler.down = False
    await run.until_committed(25)
    assert sorted(set(run.handler.handled)) == sorted(f"evt-{i}" for i in range(25))
    assert len(run.handler.handled) == 25  # nothing handled before the outage was redone
    assert run.deadletters.records == []


def _keys_in_one_partition(broker: LocalBroker, count: int) -> list[bytes]:
    """`count` customer keys that Kafka's partitioner puts in one partition."""
    by_partition: dict[int, list[bytes]] = {}
    for i in range(200):
        key = f"c-{i}".encode()
        partition, _ = broker.produce("scratch", key, b"")
        by_partition.setdefault(partition, []).append(key)
    return max(by_partition.values(), key=len)[:count]


async def test_a_slow_record_holds_up_neither_the_other_lanes_nor_records_that_come_later(
    flowing,
):
    keys = _keys_in_one_partition(flowing.broker, 4)
    flowing.handler.slow["evt-0"] = release = asyncio.Event()
    flowing.broker.produce(TOPIC, keys[0], upserted(0))
    flowing.broker.produce(TOPIC, keys[1], upserted(1))
    deadline = time.monotonic() + 5
    while "evt-1" not in flowing.handler.handled:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # Records that come while the slow one is still being handled go through too...
    for i, key in enumerate(keys[2:], start=2):
        flowing.broker.produce(TOPIC, key, upserted(i))
    while len(flowing.handler.handled) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # ...but the partition's commit waits for the slow one, the first not finished.
    await asyncio.sleep(0.1)
    assert flowing.committed() == 0 and "evt-0" not in flowing.handler.handled
    release.set()
    await flowing.until_committed(4)
    assert sorted(flowing.handler.handled) == ["evt-0", "evt-1", "evt-2", "evt-3"]
