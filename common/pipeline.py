"""The stream services' batch runner: batches handled one after another, each finished
behind the next.

A batch of input records (common/batched_input.py hands them over a fetch at a time) is
handled in memory: its outputs go to the producer (their acknowledgements join
`Batch.acks`), the state it changed waits in `Batch.touched`. Finishing it means, in
this order:

1. every output acknowledged (one wait for all of them; one the producer gave up on ends
   the worker: `fatal`), then `Finisher.delivered` (say how far outputs are complete);
2. the batch before it finished (batches finish in the order they were handled);
3. `Finisher.write`: its state written;
4. its records acknowledged (faust commits what is acknowledged), its marker released.

A crash anywhere before (4) reads the batch again from the last commit and emits the
same outputs again under the same ids (downstream dedupes by id): nothing is recorded as
handled that did not reach the broker.

With `depth` > 0 a batch is finished in the background while the next ones are handled,
at most `depth` of them at a time; handling the next batch then reads the state of the
ones being finished from `finishing`, not from the store. With `depth` 0 each batch is
finished before `hand_over` returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from common.batched_input import InFlight, fatal, outputs_delivered
from common.kafka import ProducerPort

T = TypeVar("T")


@dataclass(eq=False)
class Batch(Generic[T]):
    """A batch of records and what it decided, held until its outputs are delivered:
    its number (increasing), its marker, its records (acknowledged once it is written),
    its outputs' acknowledgements, the state it changed by key, the event clock when it
    was handed over (ms) and its finishing, once begun."""

    number: int = 0
    in_flight: InFlight | None = None
    records: list[Any] = field(default_factory=list)
    acks: list[Awaitable[Any]] = field(default_factory=list)
    touched: dict[str, T] = field(default_factory=dict)
    clock_ms: int = 0
    finished: asyncio.Future[None] | None = None

    @property
    def empty(self) -> bool:
        return not (self.records or self.touched or self.acks)


class Finisher(Protocol[T]):
    """The service's part in finishing a batch."""

    async def delivered(self, batch: Batch[T], results: list[Any]) -> None:
        """The batch's outputs are acknowledged (`results`: their metadata), the batches
        before it may still be finishing."""

    async def write(self, batch: Batch[T]) -> None:
        """Write the state the batch changed; every batch before it is finished."""

    async def idle(self, batch: Batch[T]) -> None:
        """An empty batch was handed over while no other is finishing."""


class BatchPipeline(Generic[T]):
    def __init__(
        self,
        producer: ProducerPort,
        acknowledge: Callable[[list[Any]], None],
        finisher: Finisher[T],
        depth: int,
    ) -> None:
        self.producer = producer
        self.acknowledge = acknowledge
        self.finisher = finisher
        self.depth = depth
        self.current: Batch[T] = Batch()
        # The batches handed over and not finished yet, oldest first.
        self.finishing: list[Batch[T]] = []

    def begin(self, in_flight: InFlight | None, records: list[Any] | None = None) -> Batch[T]:
        """Start the next batch (`records`: those it handles, if known already)."""
        self.current = Batch(self.current.number + 1, in_flight, records or [])
        return self.current

    async def hand_over(self, clock_ms: int) -> None:
        """The batch in hand is handled: finish it (in the background, with `depth` > 0)."""
        batch = self.current
        batch.clock_ms = clock_ms
        if batch.empty:
            if batch.in_flight is not None:
                batch.in_flight.done()
            if not self.finishing:
                await self.finisher.idle(batch)
            return
        if self.depth == 0:
            self.finishing.append(batch)
            self.current = Batch(batch.number)
            await self._finish(batch, None)
            return
        # The oldest must be done before another joins them.
        while len(self.finishing) >= self.depth:
            oldest = self.finishing[0].finished
            assert oldest is not None
            await asyncio.wait([oldest])
        previous = self.finishing[-1].finished if self.finishing else None
        self.finishing.append(batch)
        self.current = Batch(batch.number)
        batch.finished = asyncio.ensure_future(self._finish(batch, previous))

    def latest_finishing(self, key: str) -> T | None:
        """What the latest batch being finished that changed `key` holds for it."""
        for earlier in reversed(self.finishing):
            touched = earlier.touched.get(key)
            if touched is not None:
                return touched
        return None

    def changed_later(self, batch: Batch[T], key: str) -> bool:
        """Whether a batch handled after `batch` changed `key` (it writes it then)."""
        if key in self.current.touched:
            return True
        return any(key in b.touched for b in self.finishing if b.number > batch.number)

    async def _finish(self, batch: Batch[T], previous: asyncio.Future[None] | None) -> None:
        try:
            results = await outputs_delivered(self.producer, batch.acks)
            await self.finisher.delivered(batch, results)
            if previous is not None:
                # A failure there ends the process before this one writes.
                await previous
            await self.finisher.write(batch)
        except Exception as exc:
            fatal("batch_failed", exc)
        finally:
            self.finishing.remove(batch)
        self.acknowledge(batch.records)
        if batch.in_flight is not None:
            batch.in_flight.done()


def faust_acknowledge(app: Any) -> Callable[[list[Any]], None]:
    """Acknowledge records to the faust app's consumer (not those marked acked already:
    records `InputProgress` will read again)."""

    def acknowledge(records: list[Any]) -> None:
        ack = app.consumer.ack
        for message in records:
            ack(message)

    return acknowledge


__all__ = ["Batch", "BatchPipeline", "Finisher", "faust_acknowledge"]
