"""orders_watcher's service layer: each batch's records through the handlers, with the
`orders` table, the producer and the passing of time.

One table, `orders` (order_id → the order's state and its next deadline, one JSON value:
adapters/order_table.py), with a changelog. The deadline index in memory is rebuilt
from it after each rebalance.

Records come a fetched batch at a time (common/batched_input.py, wired in
entrypoints/stream.py), not through a faust agent: faust's per-record delivery cost
more than the rules. The table is read and written by partition (common/tables.py), each
changed order once per batch; see `_handle_fetched` for what a batch promises. So the
passing of time needs no tick records either: the worker acts on due deadlines in the
same loop, between records (as soon as the clock has passed one) and when no record
comes (every `tick_interval_s`). Built by bootstrap.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import faust

from common.aligned import AlignedInput, deadlines_in_order
from common.batched_input import InFlight, fatal
from common.clock import Clock, WallClock, WatermarkClock
from common.deadlines import DeadlineSchedule
from common.envelope import CloudEvent
from common.heap import freeze_startup_objects
from common.kafka import DeadLetters, InputMessage, MessageProcessor, ProducerPort
from common.logs import get_logger
from common.marks import MarkPublisher
from common.metrics import EVENTS_CONSUMED, child
from common.pipeline import Batch, BatchPipeline, faust_acknowledge
from common.streaming import InputProgress, PartitionHolds, StreamWorker, input_message_of
from services.orders_watcher.adapters import order_table
from services.orders_watcher.adapters.order_table import OrderTable
from services.orders_watcher.adapters.state_cache import StateCache
from services.orders_watcher.config import Settings
from services.orders_watcher.domain.model import OrderState, decode_state, encode_state
from services.orders_watcher.handlers import OrdersWatcher, Outcome

SERVICE = "orders_watcher"
log = get_logger(__name__)


@dataclass(frozen=True)
class WatcherPorts:
    """What the runtime works with, built by bootstrap.py (tests pass fakes for some):
    the faust app and its `orders` table (`orders`: faust's, for its changelog and
    recovery; `table`: read and written by partition), the input topics and their faust
    topic (`source`), the producer, the clock, how far each input is read
    (`progress`), the deadline schedule and, on the event clock, the aligned input and
    the mark publisher."""

    app: faust.App
    inputs: list[str]
    source: Any
    orders: Any
    table: OrderTable
    producer: ProducerPort
    clock: Clock
    progress: InputProgress
    schedule: DeadlineSchedule
    aligned: AlignedInput | None = None
    marks: MarkPublisher | None = None


@dataclass
class _Touched:
    """An order the batch changed: its table value (None: drop it), its partition, and
    the decoded state of `value` while no handler has taken it."""

    value: bytes | None
    partition: int
    state: OrderState | None


class WatcherRuntime(StreamWorker):
    def __init__(self, settings: Settings, ports: WatcherPorts) -> None:
        self.clock = ports.clock
        self.inputs, self.source = ports.inputs, ports.source
        super().__init__(
            (settings.http_host, settings.http_port),
            ports.app,
            ports.schedule,
            PartitionHolds(ports.app, self.clock, set(self.inputs)),
            ports.progress,
        )
        self.settings = settings
        self.topics = settings.topics
        self.table = ports.table
        self.producer = ports.producer
        # On the event clock, records are handled in the order they arrived on the
        # stream, across partitions (common/aligned.py), and marks say how far its
        # incidents are complete (common/marks.py).
        self.aligned = ports.aligned
        self.marks = ports.marks
        self.handler = OrdersWatcher(settings.detection(), self.topics)
        self.states = StateCache(settings.state_cache_max, SERVICE)
        # On the wall clock, a partition's deadlines wait until its backlog is read.
        self.wall_clock = isinstance(self.clock, WallClock)
        if isinstance(self.clock, WatermarkClock):
            self._act_on_due = deadlines_in_order(
                self.clock, self.schedule.index, self._deadline_passed
            )
        self.deadletters = DeadLetters(self.producer, self.topics.deadletter(SERVICE), SERVICE)
        self.processor = MessageProcessor(SERVICE, self._on_event, self.deadletters, self.clock)
        # The batch being handled, and the ones before it while they are being finished
        # (outputs acknowledged, states written, records acknowledged) in the background:
        # at most `batches_in_flight` of them.
        self.pipeline: BatchPipeline[_Touched] = BatchPipeline(
            self.producer, faust_acknowledge(self.app), self, settings.batches_in_flight
        )
        self._due_turn = 0  # which partition's due orders go first (_handle_due)
        self._before_record = 0.0  # the clock before the record in hand moved it
        self._heap_frozen = False

    # --- the assignment and the passing of time (wired in entrypoints/stream.py) --------

    def on_assigned(self, assigned: Any) -> None:
        super().on_assigned(assigned)
        self.states.clear()
        if self.aligned is not None:
            self.aligned.assign(assigned)

    def on_revoked(self) -> None:
        super().on_revoked()
        # Another worker may write these orders now: the table, not memory, is right.
        self.states.clear()
        self.table.forget()
        if self.aligned is not None:
            self.aligned.revoke()

    def on_timer(self) -> None:
        self.heartbeat.beat()
        self.schedule.check_recovered()
        if self.schedule.ready and not self._heap_frozen:
            # Serving now: what start-up and recovery left alive (faust, aiokafka,
            # modules: ~120,000 objects) is taken out of the collector's walks. Each
            # full collection walked it for 55-80 ms on the benchmark's machine, a
            # pause every record waited behind (docs/performance.md, run O).
            self._heap_frozen = True
            log.info("startup_heap_frozen", objects=freeze_startup_objects())

    # --- a batch -----------------------------------------------------------------------

    async def on_batch(self, messages: list[Any], in_flight: InFlight | None) -> bool:
        try:
            return await self._handle_batch(messages, in_flight)
        except Exception as exc:
            # Not the input's fault (the processor dead-letters those): the table or the
            # producer failed. Returning would let the batch's records be acknowledged.
            fatal("batch_failed", exc)

    async def _handle_batch(self, messages: list[Any], in_flight: InFlight | None) -> bool:
        if self.aligned is not None:
            return await self._handle_aligned(messages, in_flight)
        return await self._handle_fetched(messages, in_flight)

    async def _handle_fetched(self, messages: list[Any], in_flight: InFlight | None) -> bool:
        """Handle the records in order, each order's state carried from record to record
        in memory, and the orders whose deadline the clock passes, as soon as it has;
        then hand the batch over to be finished (common/pipeline.py) while the next one is
        handled.
        Returns whether deadlines are still due (the consumer then calls again without
        waiting for records)."""
        batch = self.pipeline.begin(in_flight, messages)
        self.heartbeat.beat()
        highwater = self.app.consumer.highwater
        # Due orders this batch may act on: a wave of deadlines is spread over the
        # batches that follow, so that records arriving meanwhile are not held up behind
        # it (an order's own deadline is acted on before its record regardless: _on_event).
        budget = self.settings.tick_max_due + len(messages)
        for message in messages:
            msg = input_message_of(message)
            if not await self.progress.admit(message, msg):
                continue  # read again later, or read already
            await self.holds.ready()
            # Whether the partition holds nothing more to read (for the event clock): as
            # the consumer knows it now, not when the batch was fetched.
            end = highwater(message.tp)
            self._before_record = self.clock.now().timestamp()
            # A dead letter joins the batch's outputs: acknowledged before the batch's
            # records are, without a wait of its own.
            await self.processor.process(
                msg, caught_up=end is None or msg.offset + 1 >= end, acks=batch.acks
            )
            self.progress.handled(msg)
            if budget > 0 and self.schedule.partitions_due(self.clock.now().timestamp()):
                budget -= (await self._handle_due(budget))[0]
        more = (await self._handle_due(budget))[1]
        await self.pipeline.hand_over(self._clock_ms())
        return more

    async def _handle_aligned(self, messages: list[Any], in_flight: InFlight | None) -> bool:
        """On the event clock: the batch's records join those waiting (common/aligned.py),
        and what may go is handled in arrival order, each after the deadlines its
        arrival passes (each acted on at its own moment), whichever partitions the
        fetches brought first. The batch is what was handled, not what was fetched."""
        aligned = self.aligned
        assert aligned is not None
        self.heartbeat.beat()
        batch = self.pipeline.begin(in_flight)
        await aligned.take(messages)
        if not self.schedule.ready:
            self.schedule.check_recovered()

        async def handle(message: Any, msg: InputMessage, before: float) -> None:
            self._before_record = before
            await self.processor.process(msg, acks=batch.acks)
            batch.records.append(message)

        # Time passes once the deadlines are known.
        await aligned.step(bool(messages), self._act_on_due, handle, ready=self.schedule.ready)
        await self.pipeline.hand_over(self._clock_ms())
        return False

    async def _deadline_passed(self, order_id: str, partition: int, now: datetime) -> None:
        await self._act_on_deadline(order_id, partition, self._load(order_id, partition), now)

    def _clock_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    # --- a batch finished (common/pipeline.py) -------------------------------------------

    async def delivered(self, batch: Batch[_Touched], results: list[Any]) -> None:
        if self.marks is not None:
            self.marks.acknowledged(results)

    async def write(self, batch: Batch[_Touched]) -> None:
        """Every output decided before the batch's end is in (the batches before it are
        written): write its changed states, one table write per order."""
        await self._mark(batch.clock_ms)
        by_partition: dict[int, list[tuple[str, bytes | None]]] = {}
        for order_id, touched in batch.touched.items():
            by_partition.setdefault(touched.partition, []).append((order_id, touched.value))
            if touched.state is None or self.pipeline.changed_later(batch, order_id):
                # Dropped, or changed again by a later batch: that one puts its own.
                self.states.discard(order_id)
            else:
                # Handed over: the cache holds the object now, not the batch.
                self.states.put(order_id, touched.state)
                touched.state = None
        for partition, changes in by_partition.items():
            await self.table.write(partition, changes)
        self.schedule.written(batch.number)

    async def idle(self, batch: Batch[_Touched]) -> None:
        """Nothing handled and nothing being finished: on the event clock, say how far
        incidents are complete (past the clock when read to the end: nothing can be
        decided at it any more)."""
        complete = self.aligned is not None and self.aligned.complete
        await self._mark(batch.clock_ms + (1 if complete else 0))

    async def _mark(self, clock_ms: int) -> None:
        """On the event clock: say that every incident decided before `clock_ms` is on the
        broker, when the clock has moved (or now and then, so that a reader starting
        later finds one within the topic's retention)."""
        if self.marks is not None and self.aligned is not None:
            await self.marks.publish_moved(clock_ms, self.aligned.lanes)

    # --- handlers ----------------------------------------------------------------------

    async def _on_event(self, msg: InputMessage, event: CloudEvent) -> None:
        order_id = self.handler.order_id_of(msg, event)
        state = self._load(order_id, msg.partition)
        now = arrived = self.clock.now()
        if self.wall_clock:
            # A record read late (a backlog after a rebalance or a restart) is judged at
            # its own partition's time (its successors may still be unread), not at a
            # wall-clock moment they passed.
            self.progress.observe(msg, event.time)
            now = self.progress.time_of(msg.partition, now, at_least=event.time)
        if state is not None:
            due = self.schedule.index.get(order_id)
            if due is not None and due <= self._before_record:
                # The order's deadline passed before this record came (held back with the
                # rest of its wave): acted on first, as it was when it passed. One that
                # this record's own time passes comes after it, as ever.
                await self._act_on_deadline(order_id, msg.partition, state, now)
                state = self._load(order_id, msg.partition)
        outcome = self.handler.handle_event(state, msg, event, now, arrived)
        if outcome.duplicate:
            child(EVENTS_CONSUMED, SERVICE, msg.topic, "duplicate").inc()
            return
        await self._stage(order_id, msg.partition, outcome)

    async def _handle_due(self, budget: int) -> tuple[int, bool]:
        """Act on up to `budget` orders whose deadline has passed, shared out among the
        partitions whose input is read (on the wall clock, a backlog first: absence is
        judged only once the records up to now are in), the first partition served in
        turn. Returns how many were acted on and whether more are due."""
        now = self.clock.now()
        moment = now.timestamp()
        confirmed = self.schedule.input_confirmed
        ready = [p for p in self.schedule.partitions_due(moment) if await confirmed(p)]
        if not ready:
            return 0, False
        handled = 0
        if budget > 0:
            self._due_turn = turn = (self._due_turn + 1) % len(ready)
            share = -(-budget // len(ready))  # ceiling: small budgets still go round
            for partition in ready[turn:] + ready[:turn]:
                limit = min(share, budget - handled)
                if limit <= 0:
                    break
                for order_id in self.schedule.due(partition, moment, limit):
                    state = self._load(order_id, partition)
                    await self._act_on_deadline(order_id, partition, state, now)
                    handled += 1
        earliest = self.schedule.index.earliest
        more = any((at := earliest(p)) is not None and at <= moment for p in ready)
        return handled, more

    async def _act_on_deadline(
        self, order_id: str, partition: int, state: OrderState | None, now: datetime
    ) -> None:
        """The order's deadline has passed: judge it at `now` (an order with no state
        left is unscheduled)."""
        outcome = Outcome(state=None) if state is None else self.handler.handle_tick(state, now)
        await self._stage(order_id, partition, outcome)

    def _load(self, order_id: str, partition: int) -> OrderState | None:
        """The order's state, for a handler to change: the batch's own, else the cache's,
        else that of the latest batch being finished that changed it, else the table's.
        What is handed out is taken out of the batch or the cache until it is staged
        again (see adapters/state_cache.py); a state a batch being finished hands to the
        cache is in one place at a time."""
        touched = self.pipeline.current.touched.get(order_id)
        if touched is not None:
            state, touched.state = touched.state, None
            value = touched.value
        else:
            state = self.states.take_quietly(order_id)
            finishing = self.pipeline.latest_finishing(order_id)
            # A hit: the state comes from memory (the cache, or a batch being finished),
            # not the table.
            self.states.count(state is not None or finishing is not None)
            if state is not None:
                return state
            if finishing is not None:
                state, finishing.state = finishing.state, None
                value = finishing.value
            else:
                value = self.table.get(partition, order_id)
        if state is not None:
            return state
        return decode_state(order_table.state_of(value)) if value else None

    async def _stage(self, order_id: str, partition: int, outcome: Outcome) -> None:
        """Send the outcome's records (acknowledged before the batch is written) and keep
        the order's new state for the batch."""
        batch = self.pipeline.current
        # On the event clock, each incident is stamped with the moment it was decided.
        decided = self.clock.now() if self.marks is not None else None
        await self.producer.emit(SERVICE, outcome.records, acks=batch.acks, at=decided)
        for rejected in outcome.dead_letters:
            # Released orphans: delivered with the outputs, before the state that
            # forgets them is written.
            await self.deadletters.publish(
                rejected.message, rejected.reason, rejected.code, acks=batch.acks
            )
        value, at = None, None
        if outcome.state is not None:
            at = outcome.deadline.timestamp() if outcome.deadline else None
            state_json = encode_state(outcome.state)
            value = order_table.encode(state_json, None if at is None else (at, partition))
        batch.touched[order_id] = _Touched(value, partition, outcome.state)
        self.schedule.plan(order_id, partition, at, batch.number)


__all__ = ["SERVICE", "WatcherPorts", "WatcherRuntime"]
