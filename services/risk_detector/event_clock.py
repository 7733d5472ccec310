"""risk_detector on the event clock: every input in one order, as orders_watcher's.

On the wall clock two faust agents share the work (runtime.py): `rekey` moves
each order fact to its customer's partition through `<group>-customer-facts`, `assess`
reads the customer-keyed topics, and ticks make time pass. Judged in the order the
broker hands records over, a replay would score a customer on whichever of their
facts came first. Here one batch runner (common/batched_input.py) reads every input
and releases the records in the order they arrived on the stream (common/aligned.py):

- the shop's topics (orders, returns, feedback, customers) are confirmed read by the
  broker's end offsets; orders_watcher's incidents are complete below its marks;
- an order fact for a customer partition of this worker is assessed at once, at the
  moment its order record arrived, not sent round through the facts topic; one for
  another worker's partition is sent there stamped with that moment, and the marks of
  `risk_detector.rekey` (published by each worker after its facts are acknowledged) say
  how far the facts topic is complete; this worker's own order partitions hold nothing
  back for its own facts partitions once those are read to the end the broker gave at
  the assignment (what earlier owners sent);
- the rhythm checks are acted on as the clock passes them, each at its own moment;
- after each batch's requests and hand-offs are acknowledged, a mark says how far they
  are complete, for outreach.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Protocol

import faust
from faust.types import TP

from common.aligned import AlignedInput, deadlines_in_order, faust_fetching, faust_mark_sender
from common.batched_input import InFlight, fatal
from common.clock import WatermarkClock
from common.deadlines import DeadlineSchedule
from common.kafka import Headers, InputMessage, MessageProcessor, ProducerPort
from common.logs import get_logger
from common.marks import MarkPublisher, instance_name
from common.ops_http import Heartbeat
from common.pipeline import Batch, BatchPipeline, faust_acknowledge
from common.streaming import InputProgress, at_partition
from services.risk_detector.config import Settings, customer_topics

SERVICE = "risk_detector"
REKEY = "risk_detector.rekey"
log = get_logger(__name__)


class RiskWorker(Protocol):
    """What the runner uses of the worker (runtime.py): its app, tables'
    schedule, processors and the two handlers without a record of their own."""

    settings: Settings
    topics: Any
    app: faust.App
    facts_name: str
    forget_name: str
    heartbeat: Heartbeat
    schedule: DeadlineSchedule
    rekeyer: MessageProcessor
    assessor: MessageProcessor
    producer: ProducerPort

    def forget_order(self, msg: InputMessage) -> None: ...

    async def check_rhythm(self, customer_id: str, partition: int, now: datetime) -> None: ...


class EventClockRunner:
    def __init__(self, runtime: RiskWorker, clock: WatermarkClock) -> None:
        self.rt = runtime
        self.clock = clock
        settings, topics = runtime.settings, runtime.topics
        self.order_keyed = frozenset({topics.orders, topics.returns})
        self.customer_keyed = customer_topics(topics) | {runtime.facts_name}
        self.topics = self.order_keyed | self.customer_keyed
        self.progress = InputProgress(
            runtime.app,
            set(self.topics),
            also_admit=frozenset({runtime.forget_name}),
            service=SERVICE,
        )
        self.aligned = AlignedInput(
            clock,
            self.progress,
            faust_fetching(runtime.app),
            topics=self.topics,
            idle_s=settings.watermark_idle_s,
            max_buffered=settings.watermark_max_buffered,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            partitions=settings.topic_partitions,
            feeds={topics.incidents: "orders_watcher", runtime.facts_name: REKEY},
            marks_topic=topics.watermarks,
        )
        n = settings.topic_partitions
        instance = instance_name(SERVICE)
        self.rekey_inputs = {t: n for t in sorted(self.order_keyed)}
        self.marks = MarkPublisher(
            SERVICE,
            instance,
            {t: n for t in sorted(self.customer_keyed)},
            topics.watermarks,
            faust_mark_sender(runtime.app),
            outputs=(topics.requests, topics.handoffs),
        )
        self.rekey_marks = MarkPublisher(
            REKEY,
            instance,
            self.rekey_inputs,
            topics.watermarks,
            faust_mark_sender(runtime.app),
            outputs=(runtime.facts_name,),
        )
        # Each batch finished before the next is handled (`depth` 0): its tables are
        # faust's, written as it is handled.
        self.pipeline: BatchPipeline[None] = BatchPipeline(
            runtime.producer, faust_acknowledge(runtime.app), self, 0
        )
        self._facts_ends: dict[tuple[str, int], int] | None = None
        self._own_facts_read = False
        self._act_on_due = deadlines_in_order(clock, runtime.schedule.index, self._check_rhythm)

    # --- the assignment ------------------------------------------------------------------

    def on_assigned(self, assigned: Any) -> None:
        self.progress.on_assigned(assigned)
        self.aligned.assign(assigned)
        self._facts_ends = None
        self._own_facts_read = False

    def on_revoked(self) -> None:
        self.progress.on_revoked()
        self.aligned.revoke()

    # --- a batch -------------------------------------------------------------------------

    @property
    def acks(self) -> list[Awaitable[Any]]:
        """The outputs of the batch in hand."""
        return self.pipeline.current.acks

    async def on_batch(self, messages: list[Any], in_flight: InFlight | None) -> bool:
        try:
            await self._handle_batch(messages, in_flight)
        except Exception as exc:
            # Not the input's fault (the processors dead-letter those): a table or the
            # producer failed. Returning would let the batch's records be acknowledged.
            fatal("batch_failed", exc)
        return False

    async def _handle_batch(self, messages: list[Any], in_flight: InFlight | None) -> None:
        rt = self.rt
        rt.heartbeat.beat()
        handled = self.pipeline.begin(in_flight).records
        for message, msg in await self.aligned.take(messages):
            # An erased customer's orders to forget: a command, not a fact in time.
            with at_partition(msg.topic, msg.partition):
                rt.forget_order(msg)
            handled.append(message)
        if not rt.schedule.ready:
            rt.schedule.check_recovered()
        if rt.schedule.ready:
            await self._vouch_for_own_facts()

        async def handle(message: Any, msg: InputMessage, before: float) -> None:
            processor = rt.rekeyer if msg.topic in self.order_keyed else rt.assessor
            with at_partition(msg.topic, msg.partition):
                await processor.process(msg, acks=self.acks)
            handled.append(message)

        await self.aligned.step(bool(messages), self._act_on_due, handle, ready=rt.schedule.ready)
        # Idle and read to the end: nothing can be decided at the clock any more.
        past_clock = not messages and self.aligned.complete
        await self.pipeline.hand_over(int(self.clock.now().timestamp() * 1000) + past_clock)

    async def _check_rhythm(self, customer_id: str, partition: int, now: datetime) -> None:
        with at_partition(self.rt.facts_name, partition):
            await self.rt.check_rhythm(customer_id, partition, now)

    # --- a batch finished (common/pipeline.py) -----------------------------------------

    async def delivered(self, batch: Batch[None], results: list[Any]) -> None:
        self.marks.acknowledged(results)
        self.rekey_marks.acknowledged(results)

    async def write(self, batch: Batch[None]) -> None:
        """The batch's outputs are in: say how far they are complete (faust commits its
        records' offsets after its tables' writes)."""
        await self._mark(batch.clock_ms)

    async def idle(self, batch: Batch[None]) -> None:
        await self._mark(batch.clock_ms)

    # --- order facts -------------------------------------------------------------------

    async def forward(self, key: bytes, value: bytes, headers: Headers, partition: int) -> None:
        """An order fact for the customer partition `partition`: assessed here and now if
        this worker reads that partition, else sent there stamped with the moment."""
        rt = self.rt
        moment_ms = int(self.clock.now().timestamp() * 1000)
        if TP(rt.facts_name, partition) in rt.app.consumer.assignment():
            fact = InputMessage(
                topic=rt.facts_name,
                partition=partition,
                offset=-1,
                key=key,
                value=value,
                headers=headers,
                timestamp_ms=moment_ms,
            )
            with at_partition(rt.facts_name, partition):
                await rt.assessor.process(fact, acks=self.acks)
            return
        sent = await rt.app.producer.send(
            rt.facts_name,
            key,
            value,
            partition=partition,
            timestamp=moment_ms / 1000,
            headers=headers,
        )
        self.acks.append(sent)

    async def _vouch_for_own_facts(self) -> None:
        """Once this worker's facts partitions are read to the end the broker gave after
        the assignment (facts earlier owners of its order partitions sent), its own order
        partitions hold nothing back for them: it assesses their facts inline."""
        if self._own_facts_read:
            return
        lanes = [lane for lane in self.aligned.lanes if lane[0] == self.rt.facts_name]
        if self._facts_ends is None:
            ends = await self.progress.end_offsets(lanes)
            if len(ends) < len(lanes):
                return  # asked again with the next batch
            self._facts_ends = ends
        for lane, end in self._facts_ends.items():
            position = self.progress.admitted_to(lane)
            if end > 0 and (position is None or position < end):
                return
        sources = [lane for lane in self.aligned.lanes if lane[0] in self.order_keyed]
        self.aligned.upstream.vouch_locally(REKEY, self.rekey_inputs, sources)
        self._own_facts_read = True

    # --- marks ---------------------------------------------------------------------------

    async def _mark(self, clock_ms: int) -> None:
        """Every request, hand-off and forwarded fact decided before `clock_ms` is on the
        broker: say so when the clock has moved (or now and then)."""
        lanes = self.aligned.lanes
        await self.marks.publish_moved(
            clock_ms, [lane for lane in lanes if lane[0] in self.customer_keyed]
        )
        await self.rekey_marks.publish_moved(
            clock_ms, [lane for lane in lanes if lane[0] in self.order_keyed]
        )


__all__ = ["REKEY", "EventClockRunner"]
