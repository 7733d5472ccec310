"""The pieces a batched stream agent relies on: acknowledgements collected instead of
awaited one by one, faust's current event named per record, and a hard stop when a batch
cannot be completed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import current_event

from common import batched_input
from common.envelope import new_event
from common.kafka import Headers, Outgoing, ProducerPort, RecordingProducer
from common.streaming import as_current

MOMENT = datetime(2026, 3, 1, tzinfo=UTC)


class Record:
    """Stands in for a faust event (faust keeps a weak reference to it)."""


def outgoing(n: int) -> Outgoing:
    event = new_event(
        type="incident.opened", source="/test", subject=None, data={"n": n}, time=MOMENT, id=f"e{n}"
    )
    return Outgoing(topic="out", key=f"k{n}", event=event)


class PipeliningProducer(ProducerPort):
    """Hands records over at once and acknowledges them only when told to."""

    def __init__(self) -> None:
        self.handed: list[bytes] = []
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        raise AssertionError("a batched emit must not wait record by record")

    async def send_soon(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> Any:
        self.handed.append(value)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(ack)
        return ack


async def test_emit_with_acks_hands_every_record_over_before_any_is_acknowledged() -> None:
    producer = PipeliningProducer()
    acks: list[Any] = []
    await producer.emit("svc", [outgoing(1), outgoing(2), outgoing(3)], acks=acks)
    assert len(producer.handed) == 3 and len(acks) == 3
    assert not any(a.done() for a in acks)
    for ack in producer.pending:
        ack.set_result(None)
    await asyncio.gather(*acks)


async def test_emit_without_acks_waits_for_each_record_and_the_default_send_soon_too() -> None:
    producer = RecordingProducer()
    await producer.emit("svc", [outgoing(1)])
    acks: list[Any] = []
    await producer.emit("svc", [outgoing(2)], acks=acks)
    assert [e.id for e in producer.events()] == ["e1", "e2"]
    assert all(a.done() for a in acks)  # the default sends at once: nothing left to wait for


def test_as_current_names_the_event_for_the_block_only() -> None:
    first, second = Record(), Record()
    assert current_event() is None
    with as_current(first):  # type: ignore[arg-type]
        assert current_event() is first
        with as_current(second):  # type: ignore[arg-type]
            assert current_event() is second
        assert current_event() is first
    assert current_event() is None


def test_a_batch_that_cannot_complete_exits_before_faust_can_ack_it(monkeypatch) -> None:
    codes: list[int] = []

    def exit_(code: int) -> None:
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(batched_input.os, "_exit", exit_)
    with pytest.raises(SystemExit):
        batched_input.fatal("outputs_undelivered", RuntimeError("broker gone"), count=2)
    assert codes == [batched_input.EXIT_FATAL]


class Accumulator:
    def __init__(self) -> None:
        self.flushed = 0

    async def flush_for_commit(self) -> None:
        self.flushed += 1


async def test_send_now_closes_the_lingering_batches_of_the_apps_producer() -> None:
    from common.streaming import FaustProducer

    accumulator = Accumulator()
    app = SimpleNamespace(
        producer=SimpleNamespace(_producer=SimpleNamespace(_message_accumulator=accumulator))
    )
    FaustProducer(app).send_now()  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert accumulator.flushed == 1
    FaustProducer(SimpleNamespace(producer=SimpleNamespace(_producer=None))).send_now()  # type: ignore[arg-type]


async def test_the_producer_internals_send_now_relies_on_are_there() -> None:
    # send_now degrades to waiting out the linger if these move: pin them.
    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers.aiokafka import Producer

    assert "_producer" in Producer.__annotations__
    client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    assert callable(client._message_accumulator.flush_for_commit)
