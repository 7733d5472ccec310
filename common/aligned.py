"""The event clock's half of a faust batch runner: records in, released in one order.

A stream service on the event clock (orders_watcher, risk_detector) hands each fetched
batch to `AlignedInput.take`, then lets `release` hand back, in arrival order across all
its input partitions, the records no unread one can precede (common/watermark.py), each
after the deadlines its arrival passes. The broker is asked for the end offsets of the
partitions that hold the head back; partitions carrying another service's outputs are
bounded by that service's marks instead (common/marks.py); partitions far ahead are
paused. `follow_the_stream` lets time pass for a worker whose partitions are read while
the rest of the stream (read by other workers) has got further.

The service keeps what is its own: its tables, its handlers, its batches' outputs and
acknowledgements, and publishing its own marks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import faust
from faust.types import TP

from common.batched_input import set_fetching
from common.clock import WatermarkClock
from common.deadlines import DeadlineIndex
from common.envelope import CloudEvent, InvalidEvent
from common.kafka import InputMessage
from common.logs import get_logger
from common.marks import MarkReader, UpstreamMarks
from common.streaming import StreamFront, input_message_of
from common.watermark import Aligner

log = get_logger(__name__)
#: How long a batch waits for an upstream's mark while its lanes hold the head back.
MARK_WAIT_S = 0.25

Lane = tuple[str, int]
#: Acts on every deadline before the moment given (or at it: `inclusive`), each at its own.
ActOnDue = Callable[[float, bool], Awaitable[None]]
#: Handles one released record (faust's message, as the handlers see it, and the clock
#: before its arrival moved it).
Handle = Callable[[Any, InputMessage, float], Awaitable[None]]


class LaneProgress(Protocol):
    """The consumer's side: which records to take, how far each lane is read, where the
    broker says it ends, and stopping or resuming its fetches
    (common.streaming.InputProgress for faust, common.aligned_consumer for aiokafka)."""

    async def admit(self, message: Any, msg: InputMessage) -> bool: ...

    def handled(self, msg: InputMessage) -> None: ...

    def admitted_to(self, lane: Lane) -> int | None: ...

    async def end_offsets(self, lanes: list[Lane]) -> dict[Lane, int]: ...


Fetching = Callable[[list[Lane], bool], Awaitable[None]]
#: Acts on one deadline that has come: its key, its partition, and the moment.
ActOnDeadline = Callable[[str, int, datetime], Awaitable[None]]


def deadlines_in_order(clock: WatermarkClock, index: DeadlineIndex, act: ActOnDeadline) -> ActOnDue:
    """The `ActOnDue` of a service whose deadlines are in `index`: every one before the
    moment given (or at it), earliest first, each at its own moment (or the clock's, if
    that is later), as the wall clock would have acted when it came."""

    async def act_on_due(until: float, inclusive: bool) -> None:
        while (due := index.pop_earliest(until, inclusive=inclusive)) is not None:
            key, partition, at = due
            clock.advance_to(datetime.fromtimestamp(at, UTC))
            await act(key, partition, clock.now())

    return act_on_due


def faust_mark_sender(app: faust.App) -> Callable[[str, bytes, bytes], Awaitable[None]]:
    """Publishes a mark (common/marks.py) through the faust app's producer, without
    waiting for the broker: a publisher's marks go to one partition in order, one that is
    lost is superseded by the next (its readers only wait longer), and the batch that
    publishes it need not wait a round trip for it."""

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent = await app.producer.send(topic, key, value, partition=0, timestamp=None, headers=None)
        asyncio.ensure_future(sent).add_done_callback(_mark_sent)

    return send


def _mark_sent(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("watermark_unsent", error=repr(sent.exception()))


def faust_fetching(app: faust.App) -> Fetching:
    """Pause (True) or resume (False) lanes at faust's aiokafka consumer."""

    async def fetching(lanes: list[Lane], paused: bool) -> None:
        await set_fetching(app, [TP(*lane) for lane in lanes], paused=paused)

    return fetching


class AlignedInput:
    def __init__(
        self,
        clock: WatermarkClock,
        progress: LaneProgress,
        fetching: Fetching,
        *,
        topics: Iterable[str],
        idle_s: float,
        max_buffered: int,
        bootstrap_servers: str,
        partitions: int,
        feeds: dict[str, str] | None = None,
        waits_for: Iterable[str] = (),
        marks_topic: str | None = None,
    ) -> None:
        """`topics`: the inputs to align. `feeds`: which of them carry another service's
        outputs (topic → that service), bounded by its marks read from `marks_topic`.
        `waits_for`: services whose state this one reads as it decides (preferences'
        contact data): no record goes before they have applied every input stamped
        earlier, as their marks say (one lane without records each)."""
        self.clock = clock
        self.progress = progress
        self.fetching = fetching
        self.topics = frozenset(topics)
        self.aligner: Aligner[Lane, tuple[Any, InputMessage]] = Aligner(
            idle_s=idle_s, max_buffered=max_buffered
        )
        self.feeds = dict(feeds or {})
        self.virtual = [(f"~{service}", 0) for service in waits_for]
        self.feeds.update({lane[0]: lane[0][1:] for lane in self.virtual})
        self.upstream = UpstreamMarks(self.feeds)
        self.reader: MarkReader | None = None
        if self.feeds:
            assert marks_topic is not None
            self.reader = MarkReader(bootstrap_servers, marks_topic, self.upstream)
        external = sorted(self.topics - set(self.feeds))
        self.front = StreamFront(bootstrap_servers, external, partitions)
        # Lane → (the aligner's epoch of the request, the end offset the broker gave).
        self._asked: dict[Lane, tuple[int, int]] = {}
        # Whether, at the last idle look, nothing to read could be stamped at the clock.
        self.complete = False
        self._idle: list[Lane] = []

    @property
    def lanes(self) -> list[Lane]:
        return self.aligner.lanes

    def assign(self, assigned: Iterable[Any]) -> None:
        """A new assignment (faust's TPs): time starts over from its first records."""
        lanes = [(tp.topic, tp.partition) for tp in assigned if tp.topic in self.topics]
        lanes += self.virtual if lanes else []
        self.aligner.assign(lanes, derived=[lane for lane in lanes if lane[0] in self.feeds])
        self._asked.clear()
        self.upstream.forget_lanes()
        self.clock.reset()
        if self.reader is not None:
            self.reader.start()

    def rewind(self) -> None:
        """The consumer goes back to the first record not handled of every lane (after an
        outage): what waits is read again; the clock and the marks stay."""
        lanes = self.aligner.lanes
        self.aligner.assign(lanes, derived=[lane for lane in lanes if lane[0] in self.feeds])
        self._asked.clear()

    def revoke(self) -> None:
        # What waits unhandled is unacknowledged: read again by the next owner.
        self.aligner.assign(())
        self._asked.clear()

    async def take(self, messages: list[Any]) -> list[tuple[Any, InputMessage]]:
        """A batch faust fetched (see `take_records`)."""
        return await self.take_records([(m, input_message_of(m)) for m in messages])

    async def take_records(
        self, records: list[tuple[Any, InputMessage]]
    ) -> list[tuple[Any, InputMessage]]:
        """A fetched batch (the consumer's record, and as the handlers see it): its
        records of the aligned topics wait for release, once admitted (in offset order,
        see InputProgress.admit); the others admitted are returned, for the caller to
        handle at once."""
        aligner = self.aligner
        aligner.received()
        if records:
            self.complete = False
        others = []
        for message, msg in records:
            if not await self.progress.admit(message, msg):
                continue  # read again later, or read already
            if msg.topic in self.topics:
                lane = (msg.topic, msg.partition)
                aligner.add(lane, arrival_ms(msg), (message, msg))
            else:
                others.append((message, msg))
        return others

    async def step(
        self, fetched: bool, act_on_due: ActOnDue, handle: Handle, *, ready: bool = True
    ) -> None:
        """One round of the runner, after `take`: release what may go, let time pass as
        far as the stream has got when the fetch brought nothing (`fetched`), act on what
        is due at the clock, and pause or resume lanes. Time passes only once the
        service's deadlines are known (`ready`)."""
        if ready:
            await self.release(act_on_due, handle)
            if not fetched:
                await self.follow_the_stream(act_on_due)
            await act_on_due(self.clock.now().timestamp(), True)
        await self.pace()

    async def release(self, act_on_due: ActOnDue, handle: Handle) -> None:
        """Handle what may go now, in order, each after the deadlines before its arrival;
        ask the broker once about the lanes that still hold the head back, and wait a
        moment for a mark if lanes fed by another service do."""
        aligner = self.aligner
        asked = waited = False
        while True:
            self._bound()
            self._confirm_read()
            for key, (message, msg) in aligner.release():
                await self._release(key, message, msg, act_on_due, handle)
            lanes = aligner.unconfirmed()
            if lanes and not asked:
                asked = True
                await self._ask_ends(lanes)
                continue
            if self.reader is not None and aligner.waiting and not waited:
                waited = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.reader.changed.wait(), MARK_WAIT_S)
                continue
            self._report_idle()
            return

    def _report_idle(self) -> None:
        """Log the lanes passed over for idleness when they change (operators: a lane
        that stays idle is one the broker would not confirm, or an upstream that stopped
        publishing marks)."""
        idle = sorted(self.aligner.idle_lanes())
        if idle != self._idle:
            self._idle = idle
            log.warning(
                "event_clock_lanes_idle",
                lanes=[f"{topic}:{partition}" for topic, partition in idle],
                clock=self.clock.now().isoformat(),
            )

    async def _release(
        self, key: int, message: Any, msg: InputMessage, act_on_due: ActOnDue, handle: Handle
    ) -> None:
        moment = key / 1000
        await act_on_due(moment, False)
        before = self.clock.now().timestamp()
        if moment < before:
            # Only a lane passed over for idleness can bring one (it is judged at the
            # clock, as a late record on the wall clock would be).
            log.warning(
                "event_clock_record_late",
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                arrived=datetime.fromtimestamp(moment, UTC).isoformat(),
                clock=self.clock.now().isoformat(),
            )
        self.clock.advance_to(datetime.fromtimestamp(moment, UTC))
        await handle(message, msg, before)
        self.progress.handled(msg)

    async def pace(self) -> None:
        """Pause the lanes far ahead, resume those caught up."""
        pause, resume = self.aligner.paused()
        if pause:
            await self.fetching(pause, True)
        if resume:
            await self.fetching(resume, False)

    async def follow_the_stream(self, act_on_due: ActOnDue) -> None:
        """Idle, with nothing waiting: once this worker's partitions of the shop's topics
        are read to the end the broker gives now, time may pass for it as far as the
        stream has got elsewhere — the services it reads vouch for that (the lowest bound
        of its derived lanes), or, reading only the shop's topics, the latest stamp on
        them (other workers read the rest): the deadlines up to there are due, as they
        would be for a worker reading every partition. Sets `complete`: nothing this
        worker will read can come stamped at or before its clock (no record stamped the
        same millisecond as one already released, the producers' promise)."""
        self.complete = False
        if self.aligner.waiting:
            return
        external = [lane for lane in self.aligner.lanes if lane[0] not in self.feeds]
        if external:
            ends = await self.progress.end_offsets(external)
            for lane in external:
                position = self.progress.admitted_to(lane)
                end = ends.get(lane)
                if end is None or (end > 0 and (position is None or position < end)):
                    return  # records of ours still to come: they move the clock
        derived = [lane for lane in self.aligner.lanes if lane[0] in self.feeds]
        low: int | None = None  # every derived record stamped before it is read
        if derived:
            self._bound()
            bounds = self.upstream.bounds(derived, self.progress.admitted_to)
            if any(lane not in bounds for lane in derived):
                return
            low = min(bounds[lane] for lane in derived)
            target: int | None = low - 1
        elif len(external) < len(self.front.topics) * self.front.partitions:
            target = await self.front.latest()  # other workers read the rest
        else:
            target = None  # it reads every partition: nothing has got further
        if target is not None and target > self.clock.now().timestamp() * 1000:
            await act_on_due(target / 1000, True)
            self.clock.advance_to(datetime.fromtimestamp(target / 1000, UTC))
        self.complete = low is None or low > self.clock.now().timestamp() * 1000

    async def stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
        await self.front.stop()

    # --- inside --------------------------------------------------------------------------

    def _bound(self) -> None:
        if self.reader is None:
            return
        self.reader.changed.clear()  # a mark from now on wakes `release`
        derived = [lane for lane in self.aligner.lanes if lane[0] in self.feeds]
        for lane, bound in self.upstream.bounds(derived, self.progress.admitted_to).items():
            self.aligner.bound(lane, bound)

    async def _ask_ends(self, lanes: list[Lane]) -> None:
        """Ask the broker where `lanes` end, after every record held so far came; a lane
        is confirmed for those records once the consumer has read up to that end (now,
        or in a later batch: records published since then came later, so they do not
        count)."""
        epoch = self.aligner.received()
        for lane, end in (await self.progress.end_offsets(lanes)).items():
            self._asked[lane] = (epoch, end)
        self._confirm_read()

    def _confirm_read(self) -> None:
        """Confirm the lanes read up to the end the broker last gave for them."""
        for lane, (epoch, end) in list(self._asked.items()):
            position = self.progress.admitted_to(lane)
            if end == 0 or (position is not None and position >= end):
                self.aligner.confirm([lane], epoch)
                del self._asked[lane]


def arrival_ms(msg: InputMessage) -> int:
    """When the record arrived on the stream: its timestamp (set by its producer when it
    published it, kept by a replay), else the event's own time (0: with its partition)."""
    if msg.timestamp_ms and msg.timestamp_ms > 0:
        return msg.timestamp_ms
    try:
        return int(CloudEvent.from_bytes(msg.value).time.timestamp() * 1000)
    except InvalidEvent:
        return 0


__all__ = [
    "AlignedInput",
    "LaneProgress",
    "arrival_ms",
    "deadlines_in_order",
    "faust_fetching",
    "faust_mark_sender",
]
