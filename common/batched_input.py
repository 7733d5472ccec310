"""Input records handed to a stream service a fetch at a time, not one by one.

Faust delivers each record through its consumer's drain loop (two tasks per record),
the conductor, a channel queue, a stream and an event object: about 90 µs a record on
the benchmark's machine, most of what a faust agent costs however little it does
(docs/performance.md). A service that handles records in batches anyway (orders_watcher)
needs none of that. `deliver_in_batches` gives the app a consumer whose drain loop
hands the records of the named topics to one coroutine, a fetched batch at a time;
records of every other topic (table changelogs during recovery, other agents' topics)
take faust's usual path.

The handler is also called with no records when a fetch brings none (at least every
`idle_s`), so that it can act on the passing of time; it returns whether it has such
work left, and then the next fetch does not wait for records.

What stays faust's: the consumer group and its rebalances, the assignment of table
partitions with their input partitions, recovery, flow control, offset commits. The
handler acknowledges each record (`consumer.ack`) once it is done with it, which may be
after it returned: a handler can finish a batch in the background while the next one is
handled. Until it says the batch is done (`InFlight.done`), a marker of the batch sits
among the consumer's unacknowledged messages, so a rebalance waits for it
(`stream_wait_empty`); one marker per batch rather than each record (faust's weak set
of messages costs a few microseconds a record).
A record the handler marked acked itself is not acknowledged, so that its offset is not
committed (common.streaming.InputProgress leaves records it will read again that way).
A batch fetched while the flow stopped or the generation changed is dropped whole, as
faust drops the rest of such a fetch: the partitions' owners read those records again
from the committed offsets. Faust's commit timer commits what is acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from common import faust_private
from common.logs import get_logger

log = get_logger(__name__)
EXIT_FATAL = 70  # EX_SOFTWARE: the worker must not go on


class InFlight:
    """A batch its handler has not finished: held among the consumer's unacknowledged
    messages until `done`, so that a rebalance waits for it. The handler must keep a
    reference to it until then (the consumer's set is a weak one)."""

    __slots__ = ("__weakref__", "_consumer", "acked", "refcount")

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self.acked = False
        self.refcount = 1
        faust_private.hold_commit(consumer, self)

    def done(self) -> None:
        """Every record of the batch is acknowledged (or left for a later read)."""
        if not self.acked:
            self.acked = True
            self.refcount = 0
            faust_private.release_commit(self._consumer, self)

    def __repr__(self) -> str:
        return "<batch in flight>"


#: The handler of a batch: faust's consumer messages, in offset order per partition (none
#: when idle), and the batch's marker (None when idle). Returns whether it has work left
#: that should not wait for records.
BatchHandler = Callable[[list[Any], InFlight | None], Awaitable[bool]]


def deliver_in_batches(
    app: faust.App,
    topic: faust.TopicT,
    handler: BatchHandler,
    *,
    max_records: int = 500,
    idle_s: float = 1.0,
    fetch_min_bytes: int = 1,
    fetch_max_wait_s: float = 1.5,
) -> None:
    """Subscribe the app to `topic` and hand its records to `handler` a fetch at a time,
    in batches of at most `max_records`. Call before the app's consumer is created (at
    wiring, before the worker starts).

    A fetch is split into batches after faust's scheduler has put it in order (round
    robin over the partitions), not limited when fetched: a fetch limited in records
    comes from one partition first, and an event clock holding back for the others
    would judge a whole batch at a standstill.

    `fetch_min_bytes` and `fetch_max_wait_s` shape the fetches (the broker answers once it
    has that many bytes, or that time has passed): by default a fetch returns as soon as
    there is a record, so at a moderate rate batches are small and what a batch costs
    beyond its records (the fetch round trip, the batch's writes and produce requests)
    is paid many times a second. Waiting for a few tens of kilobytes, or a few tens of
    milliseconds, makes batches larger at the cost of that wait (docs/performance.md,
    run R)."""
    topics = frozenset(topic.topics)
    base: Any = app.transport.Consumer
    fetch_max_wait_ms = max(1, round(fetch_max_wait_s * 1000))

    class ShapedFetches(AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # aiokafka reads these when it starts its fetcher; faust passes no way in.
            if not hasattr(consumer, "_fetch_min_bytes"):
                raise RuntimeError("aiokafka's consumer has no _fetch_min_bytes to set")
            consumer._fetch_min_bytes = fetch_min_bytes
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class BatchingConsumer(_BatchDrain, base):  # type: ignore[misc]
        batch_topics = topics
        batch_handler = staticmethod(handler)
        batch_max = max_records
        batch_idle_s = idle_s

        def _new_consumer_thread(self) -> Any:
            return ShapedFetches(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = BatchingConsumer  # type: ignore[misc]
    app.topics.add(topic)


class _BatchDrain:
    """The drain loop of faust's consumer (faust.transport.consumer.Consumer), with the
    records of `batch_topics` collected per fetch and handed over at once."""

    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler
    batch_max: int = 500
    batch_idle_s: float = 1.0
    _pending = False  # the handler has work left that should not wait for records

    async def _drain_messages(self: Any, fetcher: Any) -> None:
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        batch_topics = self.batch_topics
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                wait = 0.0 if self._pending else self.batch_idle_s
                records, active = await self._wait_next_records(wait)
                await self.sleep(0)
                if self.should_stop:
                    continue
                if not records:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    if self.flow_active:
                        self._pending = await self.batch_handler([], None)
                    continue
                if not self.flow_active:
                    # As faust's getmany: what was fetched while the flow stopped is read
                    # again from the committed offsets.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        log.warning("seek_when_flow_stopped_failed", error=repr(exc))
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                generation = self.app.consumer_generation_id
                buffered = self._buffered_partitions
                mine: dict[TP, list[Any]] = {}
                others: dict[TP, list[Any]] = {}
                for tp, fetched in records.items():
                    if active is not None and tp not in active and tp not in buffered:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    (mine if tp.topic in batch_topics else others)[tp] = fetched
                if others:
                    await self._drain_one_by_one(others, generation)
                if mine:
                    await self._drain_in_batches(mine, generation)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("consumer_stopped")
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _drain_in_batches(self: Any, records: dict[TP, list[Any]], generation: int) -> None:
        """The batched topics' records, in turns over their partitions (a record from
        each in turn: one partition's backlog does not hold the others back), handed
        over in batches of at most `batch_max`."""
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        to_message = self._to_message
        batch: list[Any] = []
        reached: dict[TP, int] = {}
        for tp, record in _in_turns(records):
            offset = record.offset
            r_offset = reached.get(tp, read_offset[tp])
            if r_offset is not None and offset < r_offset:
                continue  # faust's rule: an offset before the read one is seen
            if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            batch.append(to_message(tp, record))
            reached[tp] = offset
            if len(batch) >= self.batch_max:
                if not self._current(generation):
                    return
                await self._deliver(batch, reached)
                batch, reached = [], {}
        if batch and self._current(generation):
            await self._deliver(batch, reached)

    async def _drain_one_by_one(self: Any, records: dict[TP, list[Any]], generation: int) -> None:
        """Faust's own path, record by record, as its drain loop does it (table
        changelogs during recovery, other agents' topics)."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, record in self.scheduler.iterate(records):
            if not self._current(generation):
                return
            message = self._to_message(tp, record)
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                await self._maybe_commit()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                read_offset[tp] = offset

    def _current(self: Any, generation: int) -> bool:
        """Whether records fetched in `generation` may still be handled."""
        return bool(self.flow_active) and self.app.consumer_generation_id == generation

    async def _deliver(self: Any, batch: list[Any], reached: dict[TP, int]) -> None:
        self._read_offset.update(reached)
        # Instead of faust's track_message per record (a weak set entry and a sensor
        # call each): one marker for the batch.
        self._pending = await self.batch_handler(batch, InFlight(self))
        # No commit here: faust's commit timer (broker_commit_interval) commits what is
        # acknowledged; a commit in this loop would hold the next batch for a flush of the
        # producer and a round trip to the broker.

    async def _maybe_commit(self: Any) -> None:
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()


async def set_fetching(app: faust.App, tps: list[TP], *, paused: bool) -> None:
    """Stop (or resume) fetching these partitions, at the aiokafka consumer (in faust's
    consumer thread): aiokafka keeps a paused partition's position at its first record
    not yet handed over, and reads on from there once resumed. (Faust's own
    `pause_partitions` takes them out of its active set instead, and the drain loop
    drops what was fetched for them meanwhile: offsets skipped, read again only after a
    gap is noticed.)"""
    from aiokafka.structs import TopicPartition

    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    partitions = [TopicPartition(tp.topic, tp.partition) for tp in tps]

    async def apply() -> None:
        consumer = thread._ensure_consumer()
        (consumer.pause if paused else consumer.resume)(*partitions)

    await thread.call_thread(apply)


def _in_turns(records: dict[TP, list[Any]]) -> Iterator[tuple[TP, Any]]:
    """(partition, record) pairs, a record of each partition in turn, in fetch order."""
    if len(records) == 1:
        [(tp, only)] = records.items()
        for record in only:
            yield tp, record
        return
    lists = [(tp, fetched) for tp, fetched in records.items() if fetched]
    depth = max(len(fetched) for _, fetched in lists)
    for i in range(depth):
        for tp, fetched in lists:
            if i < len(fetched):
                yield tp, fetched[i]


async def outputs_delivered(producer: Any, acks: list[Awaitable[Any]]) -> list[Any]:
    """Wait once for every output of a batch (`acks`, the producer's futures) to be
    acknowledged, sending what the producer still holds now; their results (the records'
    metadata). One the producer gave up on ends the worker (`fatal`): the batch must not
    count as handled."""
    if not acks:
        return []
    producer.send_now()
    results = await asyncio.gather(*acks, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        fatal("outputs_undelivered", failed[0], count=len(failed))
    return results


def fatal(what: str, error: BaseException, **fields: Any) -> NoReturn:
    """A batch that cannot be completed (outputs the producer gave up on after its own
    retries, a table that failed) must not count as handled: exit at once, before faust
    acks the batch and commits its offsets. The supervisor restarts the worker, which
    handles the batch again from the last commit."""
    log.critical(what, error=repr(error), exit_code=EXIT_FATAL, **fields)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FATAL)


__all__ = [
    "EXIT_FATAL",
    "BatchHandler",
    "InFlight",
    "deliver_in_batches",
    "fatal",
    "outputs_delivered",
    "set_fetching",
]
