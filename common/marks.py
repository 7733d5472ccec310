"""Watermarks between services on the event clock: how far a service's outputs are complete.

A service on the event clock (common/watermark.py) decides each outcome at the moment
its clock has reached and stamps the record it publishes with that moment. A service
reading those records cannot judge from the broker's end offsets whether more are to
come before some moment (the upstream may still be reading the shop's records of an
earlier hour), so the upstream says it: after the outputs of a batch are acknowledged,
it publishes a *mark* on `<prefix>outreach.watermarks`:

    every output I will publish stamped before `at` is already on the broker, below
    these offsets of these partitions; I read these input partitions of the service's
    inputs (`sources`, out of `inputs`).

A downstream lane (a partition of the upstream's output topic) is then complete below
`at` for those sources once the downstream has read up to the offsets the mark names for
it. Its *bound* is the lowest such moment over every source partition of the upstream
(several instances of the upstream each read some of them; a partition moved to another
instance keeps the moments its earlier owner vouched for). `UpstreamMarks` keeps that
account (pure); `MarkPublisher` and `MarkReader` are its I/O at each end.

Only the event clock publishes marks: on the wall clock the stamps are the wall time and
the runners wait for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from common import kafka_security
from common.logs import get_logger

log = get_logger(__name__)

Lane = tuple[str, int]

#: Marks of one upstream instance kept while the downstream has not read what they name.
PENDING_PER_INSTANCE = 64
#: The bound of a lane whose every source is read by this process itself.
UNBOUNDED = 2**62
#: Upstream incarnations remembered (the newest of each); the oldest go first beyond it.
INSTANCES_KEPT = 256
#: A mark that has not moved is published again after this long (seconds).
REPUBLISH_S = 60.0


@dataclass(frozen=True)
class Mark:
    """An upstream instance's watermark (see the module's docstring)."""

    service: str
    instance: str
    inputs: dict[str, int]  # the service's input topics and their partition counts
    sources: tuple[Lane, ...]  # the input partitions the instance reads
    at_ms: int
    outputs: dict[Lane, int] = field(default_factory=dict)  # offset after the last acked

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "service": self.service,
                "instance": self.instance,
                "inputs": self.inputs,
                "sources": [list(s) for s in self.sources],
                "at": self.at_ms,
                "outputs": [[t, p, o] for (t, p), o in sorted(self.outputs.items())],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Mark:
        """Raises ValueError on a record that is not a mark."""
        try:
            data = json.loads(raw)
            return cls(
                service=str(data["service"]),
                instance=str(data["instance"]),
                inputs={str(t): int(n) for t, n in data["inputs"].items()},
                sources=tuple((str(t), int(p)) for t, p in data["sources"]),
                at_ms=int(data["at"]),
                outputs={(str(t), int(p)): int(o) for t, p, o in data["outputs"]},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a watermark record: {exc}") from exc


@dataclass
class _Instance:
    pending: list[Mark] = field(default_factory=list)  # oldest first
    newest: Mark | None = None


class UpstreamMarks:
    """The bounds of a downstream's derived lanes, from its upstreams' marks (pure).

    `feeds` maps each output topic the downstream reads to the upstream service that
    writes it. `bounds(lanes, position)` gives, for each of `lanes` fed by an upstream,
    the moment (ms) below which every record of it has been read, given `position(lane)`,
    the offset up to which the downstream has read the lane (None: unknown)."""

    def __init__(self, feeds: dict[str, str]) -> None:
        self.feeds = dict(feeds)
        self._instances: dict[tuple[str, str], _Instance] = {}
        # service → source partition → lane → the latest moment vouched for it.
        self._settled: dict[str, dict[Lane, dict[Lane, int]]] = {}
        self._inputs: dict[str, dict[str, int]] = {}
        self._local: dict[str, frozenset[Lane]] = {}

    def vouch_locally(self, service: str, inputs: dict[str, int], sources: Iterable[Lane]) -> None:
        """This process reads these sources of `service` (whose inputs are `inputs`)
        itself and handles what they derive for its own lanes inline, never through the
        broker: for its lanes they hold nothing back (until the next assignment,
        `forget_lanes`)."""
        self._local[service] = frozenset(sources)
        self._inputs.setdefault(service, dict(inputs))

    def add(self, mark: Mark) -> None:
        if mark.service not in self.feeds.values():
            return
        key = (mark.service, mark.instance)
        instance = self._instances.pop(key, None) or _Instance()
        self._instances[key] = instance  # the most recently heard last
        # An instance's clock starts over after a new assignment: what it vouched for
        # before stands (the moments settled only ever rise), its earlier partitions'
        # new owners vouch for theirs.
        instance.newest = mark
        instance.pending.append(mark)
        if len(instance.pending) > PENDING_PER_INSTANCE:
            # The oldest keep what the downstream reaches first, the newest the furthest.
            half = PENDING_PER_INSTANCE // 2
            del instance.pending[half : len(instance.pending) - half]
        self._inputs[mark.service] = mark.inputs
        while len(self._instances) > INSTANCES_KEPT:
            del self._instances[next(iter(self._instances))]

    def bounds(
        self, lanes: Iterable[Lane], position: Callable[[Lane], int | None]
    ) -> dict[Lane, int]:
        fed: dict[str, list[Lane]] = {}
        for lane in lanes:
            service = self.feeds.get(lane[0])
            if service is not None:
                fed.setdefault(service, []).append(lane)
        for (service, _), instance in self._instances.items():
            if service in fed:
                self._settle(service, instance, fed[service], position)
        result: dict[Lane, int] = {}
        for service, own in fed.items():
            sources = self._all_sources(service)
            settled = self._settled.get(service, {})
            if not sources:
                continue
            local = self._local.get(service, frozenset())
            for lane in own:
                moments = [settled.get(s, {}).get(lane) for s in sources if s not in local]
                if not moments:
                    result[lane] = UNBOUNDED
                    continue
                if all(m is not None for m in moments):
                    result[lane] = min(m for m in moments if m is not None)
        return result

    def forget_lanes(self) -> None:
        """A new assignment: what was settled for the old lanes no longer holds (the
        downstream reads them again from the committed offsets); marks are kept."""
        self._settled.clear()
        self._local.clear()
        for instance in self._instances.values():
            if instance.newest is not None and instance.newest not in instance.pending:
                instance.pending.append(instance.newest)

    def _all_sources(self, service: str) -> list[Lane]:
        inputs = self._inputs.get(service, {})
        return [(topic, p) for topic, count in sorted(inputs.items()) for p in range(count)]

    def _settle(
        self,
        service: str,
        instance: _Instance,
        lanes: list[Lane],
        position: Callable[[Lane], int | None],
    ) -> None:
        settled = self._settled.setdefault(service, {})
        kept: list[Mark] = []
        for mark in instance.pending:
            done = True
            for lane in lanes:
                need = mark.outputs.get(lane, 0)
                read = position(lane)
                if need > 0 and (read is None or read < need):
                    done = False
                    continue
                for source in mark.sources:
                    reached = settled.setdefault(source, {})
                    if reached.get(lane, -1) < mark.at_ms:
                        reached[lane] = mark.at_ms
            if not done:
                kept.append(mark)
        instance.pending = kept


def instance_name(service: str) -> str:
    """A name for this process's incarnation of `service` (its marks' key)."""
    return f"{service}-{os.getpid()}-{os.urandom(4).hex()}"


class MarkPublisher:
    """The upstream's end: counts where its outputs went and publishes its marks."""

    def __init__(
        self,
        service: str,
        instance: str,
        inputs: dict[str, int],
        topic: str,
        send: Callable[[str, bytes, bytes], Any],
        *,
        outputs: Iterable[str] | None = None,
    ) -> None:
        """`outputs`: the topics whose offsets its marks name (None: every one acknowledged)."""
        self.service = service
        self.output_topics = None if outputs is None else frozenset(outputs)
        self.instance = instance
        self.inputs = dict(inputs)
        self.topic = topic
        self._send = send
        self._outputs: dict[Lane, int] = {}
        self.last_at: int | None = None
        self._published_at = 0.0  # when it last published (monotonic seconds)

    def acknowledged(self, results: Iterable[Any]) -> None:
        """Acknowledgements of outputs (aiokafka's RecordMetadata; others are ignored)."""
        for meta in results:
            topic = getattr(meta, "topic", None)
            offset = getattr(meta, "offset", None)
            if topic is None or offset is None or offset < 0:
                continue
            if self.output_topics is not None and topic not in self.output_topics:
                continue
            lane = (topic, int(meta.partition))
            if offset + 1 > self._outputs.get(lane, 0):
                self._outputs[lane] = offset + 1

    async def publish(self, at_ms: int, sources: Iterable[Lane]) -> None:
        """Every output stamped before `at_ms` is acknowledged: say so."""
        mark = Mark(
            service=self.service,
            instance=self.instance,
            inputs=self.inputs,
            sources=tuple(sorted(sources)),
            at_ms=at_ms,
            outputs=dict(self._outputs),
        )
        await self._send(self.topic, self.instance.encode(), mark.to_bytes())
        self.last_at = at_ms
        self._published_at = time.monotonic()

    async def publish_moved(self, at_ms: int, sources: Iterable[Lane]) -> None:
        """`publish`, when `at_ms` has moved since the last mark, or again once
        `REPUBLISH_S` has passed (a reader starting later finds one within the topic's
        retention)."""
        if at_ms <= 0:
            return
        if at_ms == self.last_at and time.monotonic() - self._published_at < REPUBLISH_S:
            return
        await self.publish(at_ms, sources)


class AppliedFront:
    """The marks of a plain consumer that applies records stamped in publication order
    (the shop's, as the simulator and the test shop stamp them) to a state other
    services read (preferences' contact data): every record stamped before the mark's
    moment is applied. With its partitions read to the end the broker gives after the
    front of the whole stream was seen (`front`: the latest stamp on every topic the
    shop writes), it vouches up to just past that front (a record published later is
    stamped later); with some behind, up to the latest stamp applied on those."""

    def __init__(self, publisher: MarkPublisher, topics: Iterable[str], front: Any = None) -> None:
        self.publisher = publisher
        self.topics = frozenset(topics)
        self.front = front  # common.streaming.StreamFront, or None: its own topics only
        self._applied: dict[Lane, int] = {}
        self._latest: int | None = None
        self._looked_at = 0.0  # when it last looked how far it has got

    async def after_batch(self, consumer: Any, batches: dict[Any, list[Any]]) -> None:
        """A round of the consumer's loop applied these records (none: it was idle):
        publish how far, when that has moved (looked at once a second while idle, and
        published at least once a minute)."""
        for tp, records in batches.items():
            if tp.topic in self.topics and records:
                stamp = max(r.timestamp for r in records)
                self._applied[(tp.topic, tp.partition)] = stamp
                self._latest = stamp if self._latest is None else max(self._latest, stamp)
        if batches or asyncio.get_running_loop().time() - self._looked_at >= 1.0:
            await self._publish(consumer)

    async def _publish(self, consumer: Any) -> None:
        self._looked_at = asyncio.get_running_loop().time()
        front = await self.front.latest() if self.front is not None else None
        tps = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        if not tps:
            return
        try:
            ends = await consumer.end_offsets(tps)
        except Exception as exc:  # asked again at the next round
            log.warning("applied_front_unknown", error=repr(exc))
            return
        lagging = [tp for tp in tps if await consumer.position(tp) < ends.get(tp, 0)]
        if lagging:
            applied = [self._applied.get((tp.topic, tp.partition)) for tp in lagging]
            if any(stamp is None for stamp in applied):
                return  # not fetched yet: nothing to vouch for
            at = min(stamp for stamp in applied if stamp is not None)
        else:
            known = [stamp for stamp in (front, self._latest) if stamp is not None]
            if not known:
                return
            at = max(known) + 1
        await self.publisher.publish_moved(at, [(tp.topic, tp.partition) for tp in tps])


class MarkReader:
    """The downstream's end: follows the marks topic from its start with a consumer of
    its own (outside any group) and feeds `marks`."""

    def __init__(self, bootstrap_servers: str, topic: str, marks: UpstreamMarks) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.marks = marks
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
                **kafka_security.client_options(),
            )
            try:
                await consumer.start()
                consumer.assign([TopicPartition(self.topic, 0)])
                while True:
                    fetched = await consumer.getmany(timeout_ms=500)
                    for records in fetched.values():
                        for record in records:
                            self._take(record.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: the bounds wait, then go on
                log.warning("watermarks_unreadable", error=repr(exc))
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def _take(self, raw: bytes | None) -> None:
        try:
            self.marks.add(Mark.from_bytes(raw or b""))
        except ValueError as exc:
            log.warning("watermark_ignored", error=str(exc))
            return
        self.changed.set()


__all__ = ["AppliedFront", "Mark", "MarkPublisher", "MarkReader", "UpstreamMarks"]
