"""The plain consumer loop on the in-memory broker (common/local_broker.py, held to
aiokafka's behaviour by tests/contract/test_consumer.py): what it commits, what it
dead-letters, and how an outage holds its input. The same on the real broker:
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

    async def __call__(self, msg: InputMessage, event: CloudEvent) -> None:
        if self.down:
            self.refused += 1
            raise DependencyUnavailable("database", "connection refused")
        await asyncio.sleep(0)
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


@pytest.fixture(params=[1, 4], ids=["one lane", "four lanes"])
async def run(request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    broker, handler, producer = LocalBroker(partitions=3), Handler(), RecordingProducer()
    broker.create_topic(TOPIC)
    processor = MessageProcessor(
        "test", handler, DeadLetters(producer, "deadletter.test", "test"), WallClock()
    )
    loop = ConsumerLoop(
        bootstrap_servers="local",
        group_id="g",
        topics=[TOPIC],
        processor=processor,
        heartbeat=Heartbeat(),
        client_id="test",
        max_batch=10,
        concurrency=request.param,
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
