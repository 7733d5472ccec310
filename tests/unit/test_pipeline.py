"""The batch runner: batches finish in the order they were handled, a few at a time,
each written only after its outputs are acknowledged and the batch before it is done,
its records acknowledged last."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common import pipeline
from common.pipeline import Batch, BatchPipeline


class Producer:
    def __init__(self) -> None:
        self.flushes = 0

    def send_now(self) -> None:
        self.flushes += 1


class Journal:
    """A finisher that writes down what happened, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int]] = []
        self.acked: list[Any] = []

    async def delivered(self, batch: Batch[str], results: list[Any]) -> None:
        self.steps.append(("delivered", batch.number))

    async def write(self, batch: Batch[str]) -> None:
        self.steps.append(("write", batch.number))

    async def idle(self, batch: Batch[str]) -> None:
        self.steps.append(("idle", batch.clock_ms))

    def acknowledge(self, records: list[Any]) -> None:
        self.acked.extend(records)
        self.steps.append(("acked", records[0] if records else -1))


def runner(depth: int) -> tuple[BatchPipeline[str], Journal]:
    journal = Journal()
    return BatchPipeline(Producer(), journal.acknowledge, journal, depth), journal


async def handle(p: BatchPipeline[str], number: int, output: asyncio.Future[Any]) -> None:
    batch = p.begin(None, [number])
    batch.acks.append(output)
    batch.touched[f"k{number}"] = f"v{number}"
    await p.hand_over(number * 1000)


async def all_finished(p: BatchPipeline[str]) -> None:
    pending = [b.finished for b in p.finishing if b.finished is not None]
    if pending:
        await asyncio.wait(pending, timeout=1)
    assert not p.finishing


def test_a_later_batch_acknowledged_first_still_writes_after_the_earlier_one():
    async def scenario() -> Journal:
        p, journal = runner(depth=3)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        await handle(p, 1, first)
        await handle(p, 2, second)
        assert [b.number for b in p.finishing] == [1, 2]
        second.set_result("meta-2")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ("write", 2) not in journal.steps  # batch 1 is not done yet
        first.set_result("meta-1")
        await all_finished(p)
        return journal

    journal = asyncio.run(scenario())
    assert journal.steps.index(("write", 1)) < journal.steps.index(("acked", 1))
    assert journal.steps.index(("acked", 1)) < journal.steps.index(("write", 2))
    assert journal.acked == [1, 2]


def test_at_most_depth_batches_are_finishing_and_the_next_waits_for_the_oldest():
    async def scenario() -> None:
        p, journal = runner(depth=2)
        loop = asyncio.get_running_loop()
        outputs = [loop.create_future() for _ in range(3)]
        await handle(p, 1, outputs[0])
        await handle(p, 2, outputs[1])
        third = asyncio.ensure_future(handle(p, 3, outputs[2]))
        await asyncio.sleep(0.01)
        assert not third.done() and len(p.finishing) == 2
        outputs[0].set_result(None)
        await asyncio.wait_for(third, 1)
        assert [b.number for b in p.finishing] == [2, 3]
        for output in outputs[1:]:
            output.set_result(None)
        await all_finished(p)
        assert journal.acked == [1, 2, 3]

    asyncio.run(scenario())


def test_the_next_batch_finds_what_a_batch_being_finished_changed():
    async def scenario() -> None:
        p, journal = runner(depth=3)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        await handle(p, 1, first)
        assert p.latest_finishing("k1") == "v1"
        batch = p.begin(None, [2])
        batch.touched["k1"] = "v1 again"
        earlier = p.finishing[0]
        assert p.changed_later(earlier, "k1") and not p.changed_later(earlier, "k9")
        batch.acks.append(second)
        await p.hand_over(2000)
        assert p.latest_finishing("k1") == "v1 again"
        first.set_result(None)
        second.set_result(None)
        await all_finished(p)
        assert p.latest_finishing("k1") is None

    asyncio.run(scenario())


def test_depth_zero_finishes_before_hand_over_returns_and_idle_only_when_nothing_waits():
    async def scenario() -> Journal:
        p, journal = runner(depth=0)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        await handle(p, 1, done)
        assert journal.acked == [1] and not p.finishing
        p.begin(None)
        await p.hand_over(5000)  # nothing handled: the finisher hears the clock
        assert p.current.acks == []  # a fresh batch collects the next outputs
        return journal

    journal = asyncio.run(scenario())
    assert journal.steps == [("delivered", 1), ("write", 1), ("acked", 1), ("idle", 5000)]


def test_an_output_the_producer_gave_up_on_ends_the_worker_before_anything_is_written(
    monkeypatch: pytest.MonkeyPatch,
):
    ended: list[str] = []

    def fatal(what: str, error: BaseException, **_: Any) -> None:
        ended.append(what)
        raise SystemExit(70)

    monkeypatch.setattr(pipeline, "fatal", fatal)
    monkeypatch.setattr("common.batched_input.fatal", fatal)

    async def scenario() -> Journal:
        p, journal = runner(depth=0)
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(TimeoutError("broker gone"))
        with pytest.raises(SystemExit):
            await handle(p, 1, failed)
        return journal

    journal = asyncio.run(scenario())
    assert ended == ["outputs_undelivered"]
    assert journal.steps == [] and journal.acked == []
