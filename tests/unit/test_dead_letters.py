"""Dead letters: awaited one by one by default, or handed over with the caller's other
outputs (`acks`) so that a run of bad records costs no wait per record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import errors as aiokafka_errors
from kafka import errors as kafka_errors

from common.clock import FixedClock
from common.envelope import CloudEvent, InvalidEvent, new_event
from common.kafka import DeadLetters, Headers, InputMessage, MessageProcessor, ProducerPort
from common.outages import DependencyUnavailable

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class PipelinedProducer(ProducerPort):
    """Records what was handed over; acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.handed: list[tuple[str, bytes | None, bytes, Headers]] = []
        self.pending: list[asyncio.Future[None]] = []
        self.waited = 0

    async def send_soon(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> Awaitable[Any]:
        self.handed.append((topic, key, value, list(headers)))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(ack)
        return ack

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        ack = await self.send_soon(topic, key, value, headers)
        self.waited += 1
        self.acknowledge()
        await ack

    def acknowledge(self) -> None:
        for ack in self.pending:
            if not ack.done():
                ack.set_result(None)


def message(value: bytes, offset: int = 7) -> InputMessage:
    return InputMessage(
        topic="commerce.shipments",
        partition=1,
        offset=offset,
        key=b"o-1",
        value=value,
        headers=[("content-type", b"application/cloudevents+json")],
    )


def shipment(event_id: str = "evt-1") -> CloudEvent:
    return new_event(
        type="shipment.created",
        source="/shop/shipping",
        subject="o-1",
        time=T0,
        id=event_id,
        data={"order_id": "o-1"},
    )


def processor(producer: ProducerPort, handled: list[str]) -> MessageProcessor:
    async def handle(msg: InputMessage, event: CloudEvent) -> None:
        if event.id.startswith("bad"):
            raise InvalidEvent(f"{event.id} is not usable", code="bad_data")
        handled.append(event.id)

    deadletters = DeadLetters(producer, "deadletter.orders_watcher", "orders_watcher")
    return MessageProcessor("orders_watcher", handle, deadletters, FixedClock(T0))


async def test_a_dead_letter_with_acks_is_handed_over_and_its_acknowledgement_left_to_the_caller():
    producer = PipelinedProducer()
    letters = DeadLetters(producer, "deadletter.orders_watcher", "orders_watcher")
    acks: list[Awaitable[Any]] = []

    await letters.publish(message(b"{nope"), "value is not JSON", "not_json", acks=acks)

    assert producer.waited == 0 and len(acks) == 1 and not asyncio.ensure_future(acks[0]).done()
    topic, key, value, headers = producer.handed[0]
    assert (topic, key, value) == ("deadletter.orders_watcher", b"o-1", b"{nope")
    named = dict(headers)
    assert named["dlq.reason.code"] == b"not_json"
    assert named["dlq.original.offset"] == b"7"
    assert named["content-type"] == b"application/cloudevents+json"
    producer.acknowledge()
    await asyncio.gather(*acks)


async def test_without_acks_a_dead_letter_is_awaited():
    producer = PipelinedProducer()
    letters = DeadLetters(producer, "deadletter.orders_watcher", "orders_watcher")

    await letters.publish(message(b"{nope"), "value is not JSON", "not_json")

    assert producer.waited == 1 and all(ack.done() for ack in producer.pending)


async def test_the_processor_collects_the_dead_letters_of_a_run_of_bad_records():
    producer = PipelinedProducer()
    handled: list[str] = []
    process = processor(producer, handled).process
    acks: list[Awaitable[Any]] = []

    outcomes = [
        await process(message(b"{nope", 1), acks=acks),
        await process(message(shipment("bad-2").to_bytes(), 2), acks=acks),
        await process(message(shipment("evt-3").to_bytes(), 3), acks=acks),
        await process(message(b"", 4), acks=acks),
    ]

    assert outcomes == ["dead_lettered", "dead_lettered", "processed", "dead_lettered"]
    assert handled == ["evt-3"]
    assert producer.waited == 0 and len(acks) == 3
    codes = [dict(h)["dlq.reason.code"] for _t, _k, _v, h in producer.handed]
    assert codes == [b"not_json", b"bad_data", b"empty"]
    assert [dict(h)["dlq.original.offset"] for _t, _k, _v, h in producer.handed] == [
        b"1",
        b"2",
        b"4",
    ]
    producer.acknowledge()
    await asyncio.gather(*acks)


@pytest.mark.parametrize(
    "error",
    [
        aiokafka_errors.KafkaTimeoutError(),  # a send or metadata wait that timed out
        aiokafka_errors.KafkaUnavailableError(),
        aiokafka_errors.BrokerNotAvailableError(),
        aiokafka_errors.RequestTimedOutError(),
        kafka_errors.KafkaTimeoutError(),
        ConnectionRefusedError(),
    ],
    ids=lambda e: f"{type(e).__module__.split('.')[0]}.{type(e).__name__}",
)
async def test_a_broker_out_of_reach_holds_the_record_instead_of_dead_lettering_it(error):
    producer = PipelinedProducer()
    calls = 0

    async def handle(msg: InputMessage, event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        raise error

    deadletters = DeadLetters(producer, "deadletter.orders_watcher", "orders_watcher")
    process = MessageProcessor("orders_watcher", handle, deadletters, FixedClock(T0)).process

    with pytest.raises(DependencyUnavailable) as held:
        await process(message(shipment().to_bytes()))

    assert held.value.dependency in ("kafka", "network")
    assert calls == 1 and producer.handed == []  # not retried as a bug, not dead-lettered


@pytest.mark.parametrize(
    "error",
    [aiokafka_errors.ProducerClosed(), aiokafka_errors.RecordTooLargeError(), ValueError()],
    ids=lambda e: type(e).__name__,
)
async def test_a_fault_that_is_no_outage_is_retried_then_dead_lettered(error):
    producer = PipelinedProducer()

    async def handle(msg: InputMessage, event: CloudEvent) -> None:
        raise error

    deadletters = DeadLetters(producer, "deadletter.orders_watcher", "orders_watcher")
    processor = MessageProcessor(
        "orders_watcher", handle, deadletters, FixedClock(T0), backoff_s=0.001
    )

    assert await processor.process(message(shipment().to_bytes())) == "dead_lettered"
    assert [dict(h)["dlq.reason.code"] for _t, _k, _v, h in producer.handed] == [b"handler_error"]
