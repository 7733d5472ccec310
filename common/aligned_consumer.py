"""The plain consumer loop on the event clock: records in arrival order, as the stream
services' (common/aligned.py), for a service with no stream tables (outreach).

`AlignedConsumerLoop` is `ConsumerLoop` with the records of a fetch handed to an
`AlignedInput` instead of straight to the handler: they are handled one at a time in the
order they arrived on the stream, across partitions, each after the deadlines its
arrival passes (`act_on_due`: for outreach, the messages scheduled before it). Offsets
are committed up to the first record of each partition not handled yet (one waiting in
the aligner is not). An outage (`DependencyUnavailable`) rewinds every partition to its
first record not handled and holds the input, as `ConsumerLoop` does; the clock stays
where it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from common.aligned import ActOnDue, AlignedInput
from common.kafka import ConsumerLoop, InputMessage, record_message
from common.logs import get_logger
from common.outages import DependencyUnavailable, as_outage
from common.watermark import Aligner

log = get_logger(__name__)

Lane = tuple[str, int]


class ConsumerLanes:
    """What the aligner needs of an aiokafka consumer (common.aligned.LaneProgress): the
    offsets taken and handled per lane, the broker's end offsets, pausing."""

    def __init__(self) -> None:
        self.consumer: Any = None
        self._taken: dict[Lane, int] = {}  # the next offset to take, per lane
        self._handled: dict[Lane, int] = {}  # the offset after the last handled

    async def assign(self, tps: list[Any]) -> None:
        """A new assignment: reading starts at each partition's position."""
        self._taken, self._handled = {}, {}
        for tp in tps:
            position = await self.consumer.position(tp)
            self._taken[(tp.topic, tp.partition)] = position
            self._handled[(tp.topic, tp.partition)] = position

    async def admit(self, record: Any, msg: InputMessage) -> bool:
        lane = (msg.topic, msg.partition)
        taken = self._taken.get(lane)
        if taken is not None and msg.offset < taken:
            return False  # taken already (read again after a rewind)
        self._taken[lane] = msg.offset + 1
        return True

    def handled(self, msg: InputMessage) -> None:
        # A derived lane's records go in time order, which need not be offset order
        # (two upstream instances interleave theirs): the furthest handled counts, the
        # ones still waiting below it are the aligner's to name (`AlignedConsumerLoop`).
        lane = (msg.topic, msg.partition)
        self._handled[lane] = max(self._handled.get(lane, 0), msg.offset + 1)

    def admitted_to(self, lane: Lane) -> int | None:
        return self._taken.get(lane)

    def first_unhandled(self, aligner: Aligner[Lane, tuple[Any, InputMessage]]) -> dict[Lane, int]:
        """Per partition: its first record not handled. One waiting in `aligner` is not;
        on a derived lane it may lie below records handled already."""
        offsets: dict[Lane, int] = {}
        for lane in aligner.lanes:
            waiting = [msg.offset for _, msg in aligner.waiting_in(lane)]
            handled = self._handled.get(lane)
            offset = min(waiting) if waiting else handled
            if offset is not None:
                offsets[lane] = offset
        return offsets

    def rewind(self, offsets: dict[Lane, int]) -> None:
        """Take again from `offsets` (each lane's first record not handled)."""
        self._taken.update(offsets)
        self._handled.update(offsets)

    async def end_offsets(self, lanes: list[Lane]) -> dict[Lane, int]:
        from aiokafka import TopicPartition

        tps = [TopicPartition(topic, partition) for topic, partition in lanes]
        try:
            ends = await asyncio.wait_for(self.consumer.end_offsets(tps), 5.0)
        except Exception as exc:  # asked again on the next batch; idleness bounds the wait
            log.warning("input_end_offsets_unknown", lanes=len(tps), error=repr(exc))
            return {}
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def fetching(self, lanes: list[Lane], paused: bool) -> None:
        from aiokafka import TopicPartition

        tps = [TopicPartition(topic, partition) for topic, partition in lanes]
        owned = set(self.consumer.assignment())
        tps = [tp for tp in tps if tp in owned]
        if tps:
            (self.consumer.pause if paused else self.consumer.resume)(*tps)


class AlignedConsumerLoop(ConsumerLoop):
    def __init__(
        self, *, aligned: AlignedInput, lanes: ConsumerLanes, act_on_due: ActOnDue, **kwargs: Any
    ) -> None:
        kwargs["concurrency"] = 1  # one order: records are handled one at a time
        super().__init__(**kwargs)
        self.aligned = aligned
        self.lanes = lanes
        self.act_on_due = act_on_due
        self._handled_since_commit = 0

    async def start(self) -> None:
        await super().start()
        self.lanes.consumer = self._consumer

    async def stop(self) -> None:
        await self.aligned.stop()
        await super().stop()

    async def _on_assigned(self, assigned: Any) -> None:
        await self.lanes.assign(list(assigned))
        self.aligned.assign(assigned)

    async def _on_revoked(self, revoked: Any) -> None:
        await self._commit(self._consumer, self._committable())
        self.aligned.revoke()

    async def _handle_batch(
        self, consumer: Any, batches: dict[Any, list[Any]]
    ) -> tuple[DependencyUnavailable, dict[Any, int]] | None:
        records = [(record, record_message(record)) for rs in batches.values() for record in rs]
        aligned = self.aligned
        await aligned.take_records(records)
        acks: list[Awaitable[Any]] = []

        async def handle(record: Any, msg: InputMessage, before: float) -> None:
            await self.processor.process(msg, acks=acks)
            self._handled_since_commit += 1
            self.heartbeat.beat()

        try:
            await aligned.step(bool(records), self.act_on_due, handle)
            if acks:
                await asyncio.gather(*acks)
        except Exception as exc:
            outage = as_outage(exc)
            if outage is None:
                raise  # nothing committed past what was handled: it comes again
            if acks:
                await asyncio.gather(*acks, return_exceptions=True)
            return outage, self._rewind()
        return None

    def _rewind(self) -> dict[Any, int]:
        from aiokafka import TopicPartition

        offsets = self._first_unhandled()
        self.aligned.rewind()
        self.lanes.rewind(offsets)
        return {TopicPartition(*lane): offset for lane, offset in offsets.items()}

    def _committable(self) -> dict[Any, int]:
        from aiokafka import TopicPartition

        return {TopicPartition(*lane): offset for lane, offset in self._first_unhandled().items()}

    def _first_unhandled(self) -> dict[Lane, int]:
        return self.lanes.first_unhandled(self.aligned.aligner)

    def _should_commit(self, batches: dict[Any, list[Any]]) -> bool:
        return self._handled_since_commit > 0

    async def _commit_handled(self, consumer: Any) -> None:
        self._handled_since_commit = 0
        await self._commit(consumer, self._committable())


__all__ = ["AlignedConsumerLoop", "ConsumerLanes"]
