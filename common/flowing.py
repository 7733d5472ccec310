"""A consumer loop whose lanes never wait for each other: `FlowingConsumerLoop`.

`ConsumerLoop` hands a fetched batch to its lanes and fetches the next one only when
every lane is done, so a record that arrives meanwhile waits for the slowest lane of the
batch (a provider call at its timeout, a retry's backoff), and a lane that is done sits
idle. Here the fetching goes on while the lanes work: each record goes to the lane its
key hashes to (a customer's records keep their order) as soon as there is room — at
most `max_in_flight` records taken and not finished, the back-pressure — and a lane
takes its next record the moment it finished the last.

Offsets are committed every `commit_interval_s`, per partition up to its first record
not finished (at-least-once, as before: a record finished after a later one waits for
it). On a rebalance the revoked partitions' records still waiting in a lane are left
(the next owner reads them), those being handled are finished, and the offsets up to the
first unfinished one are committed before the partitions go. An outage
(`DependencyUnavailable`) stops the lanes taking records; once those being handled are
done the loop holds the input exactly as `ConsumerLoop` does — commit what was finished,
rewind every partition to its first unfinished record, pause, back off — and flows again.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from common.failpoints import failpoint
from common.kafka import ConsumerLoop, InputMessage, record_message
from common.logs import get_logger
from common.outages import as_outage

log = get_logger(__name__)

# partition, record, caught up with its partition, the partition's assignment when taken
Item = tuple[Any, InputMessage, bool, int]


@dataclass
class _Flow:
    """What the lanes have of the input: per partition, the offsets taken and not
    finished and the offset after the last one taken; the first failure."""

    unfinished: dict[Any, set[int]] = field(default_factory=dict)
    taken_to: dict[Any, int] = field(default_factory=dict)
    running: dict[Any, int] = field(default_factory=dict)  # per partition, being handled
    # Per partition, how many times it was revoked: a record taken before is left.
    assignment: dict[Any, int] = field(default_factory=dict)
    failure: BaseException | None = None
    room: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    finished: int = 0  # records finished since the last commit

    def take(self, tp: Any, offset: int) -> None:
        self.unfinished.setdefault(tp, set()).add(offset)
        self.taken_to[tp] = offset + 1
        self.in_flight += 1

    def start(self, tp: Any) -> None:
        self.running[tp] = self.running.get(tp, 0) + 1

    def done(self, tp: Any, offset: int | None) -> None:
        """A record left its lane: finished (its offset), or left unfinished (None)."""
        self.running[tp] = max(0, self.running.get(tp, 0) - 1)
        if offset is not None:
            self.unfinished.get(tp, set()).discard(offset)
            self.finished += 1
        self.in_flight -= 1
        self.room.set()

    def skip(self) -> None:
        """A record left in its lane, not taken up (revoked, or the lanes stopping)."""
        self.in_flight -= 1
        self.room.set()

    def first_unfinished(self, tps: Any = None) -> dict[Any, int]:
        """Per partition (of `tps`, or all): where its next reader starts."""
        return {
            tp: min(self.unfinished[tp]) if self.unfinished.get(tp) else self.taken_to[tp]
            for tp in (self.taken_to if tps is None else tps)
            if tp in self.taken_to
        }

    def revoke(self, tps: Any) -> None:
        for tp in tps:
            self.assignment[tp] = self.assignment.get(tp, 0) + 1

    def current(self, tp: Any, assignment: int) -> bool:
        return self.assignment.get(tp, 0) == assignment

    def forget(self, tps: Any) -> None:
        for tp in tps:
            self.unfinished.pop(tp, None)
            self.taken_to.pop(tp, None)
            self.running.pop(tp, None)


class FlowingConsumerLoop(ConsumerLoop):
    """`ConsumerLoop` (same settings, same outage hold) with lanes kept fed: see the
    module's docstring. `max_in_flight` defaults to four records a lane."""

    def __init__(
        self, *, max_in_flight: int | None = None, commit_interval_s: float = 1.0, **kwargs: Any
    ) -> None:
        if kwargs.get("after_batch") is not None:
            raise ValueError("FlowingConsumerLoop has no batches to report (after_batch)")
        super().__init__(**kwargs)
        self.max_in_flight = max_in_flight or 4 * self.concurrency
        self.commit_interval_s = commit_interval_s
        self._flow: _Flow | None = None

    async def run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        backoff = self.hold_first_s
        while not self._stopping.is_set():
            flow = self._flow = _Flow()
            try:
                await self._flow_until_stopped(consumer, flow)
            finally:
                self._flow = None
            if flow.failure is None:
                await self._commit(consumer, flow.first_unfinished())
                return
            outage = as_outage(flow.failure)
            if outage is None:
                raise flow.failure  # a bug: what was not finished comes again
            await self._hold(consumer, (outage, flow.first_unfinished()), backoff)
            backoff = min(backoff * 2, self.hold_max_s)

    async def _flow_until_stopped(self, consumer: Any, flow: _Flow) -> None:
        """Fetch and hand out records until the loop stops or a lane fails; returns when
        every lane has let go of its records."""
        lanes: list[asyncio.Queue[Item | None]] = [asyncio.Queue() for _ in range(self.concurrency)]
        workers = [asyncio.create_task(self._lane_worker(lane, flow)) for lane in lanes]
        committed_at = time.monotonic()
        try:
            while not self._stopping.is_set() and flow.failure is None:
                self.heartbeat.beat()
                room = self.max_in_flight - flow.in_flight
                if room <= 0:
                    flow.room.clear()
                    await _wait(flow.room, 0.5)
                    continue
                fetched = await self._fetch(consumer, room, busy=flow.in_flight > 0)
                for tp, records in fetched.items():
                    highwater = consumer.highwater(tp)
                    for record in records:
                        caught_up = highwater is None or record.offset + 1 >= highwater
                        flow.take(tp, record.offset)
                        item = (tp, record_message(record), caught_up, flow.assignment.get(tp, 0))
                        lanes[zlib.crc32(record.key or b"") % self.concurrency].put_nowait(item)
                if not fetched and flow.in_flight == 0 and self.on_idle is not None:
                    await self.on_idle()
                if flow.finished and time.monotonic() - committed_at >= self.commit_interval_s:
                    committed_at, flow.finished = time.monotonic(), 0
                    failpoint(f"{self.processor.service}.before_offset_commit")
                    await self._commit(consumer, flow.first_unfinished())
                    await self._report_lag(consumer)
        finally:
            for queue in lanes:
                queue.put_nowait(None)
            await asyncio.gather(*workers, return_exceptions=True)

    async def _fetch(self, consumer: Any, room: int, busy: bool) -> dict[Any, list[Any]]:
        from aiokafka.errors import KafkaError

        try:
            # While lanes work, a short wait: a record that comes is handed out soon.
            timeout_ms = 50 if busy else 500
            batches: dict[Any, list[Any]] = await consumer.getmany(
                timeout_ms=timeout_ms, max_records=min(room, self.max_batch)
            )
        except KafkaError as exc:
            log.warning("fetch_failed", error=type(exc).__name__)
            await asyncio.sleep(1.0)
            return {}
        return batches

    async def _lane_worker(self, lane: asyncio.Queue[Item | None], flow: _Flow) -> None:
        while (item := await lane.get()) is not None:
            tp, msg, caught_up, assignment = item
            stopping = flow.failure is not None or self._stopping.is_set()
            if stopping or not flow.current(tp, assignment):
                flow.skip()  # left unfinished: read again from the committed offset
                continue
            flow.start(tp)
            try:
                await self.processor.process(msg, caught_up=caught_up)
            except BaseException as exc:
                flow.done(tp, None)
                if flow.failure is None:
                    flow.failure = exc
                continue
            flow.done(tp, msg.offset)
            self.heartbeat.beat()

    async def _on_revoked(self, revoked: Any) -> None:
        """Before the partitions go: leave their waiting records, finish those being
        handled, commit up to the first unfinished record of each."""
        flow = self._flow
        if flow is None:
            return
        gone = set(revoked)
        flow.revoke(gone)
        deadline = time.monotonic() + self.session_timeout_s / 2
        while any(flow.running.get(tp, 0) > 0 for tp in gone) and time.monotonic() < deadline:
            flow.room.clear()
            await _wait(flow.room, 0.1)
        await self._commit(self._consumer, flow.first_unfinished(gone))
        flow.forget(gone)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass


__all__ = ["FlowingConsumerLoop"]
