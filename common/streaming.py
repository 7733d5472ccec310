"""Faust plumbing shared by the stream services (orders_watcher, risk_detector).

Topics carry raw bytes: decoding is ours (common.envelope / common.schemas), so that a
malformed value reaches the dead-letter topic with its original bytes instead of
crashing the agent inside faust's codec.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import faust
from aiohttp import web
from faust.types import TP
from yarl import URL

from common import faust_private, kafka_security
from common.deadlines import DeadlineSchedule
from common.kafka import CachedKeyPartitioner, Headers, InputMessage, ProducerPort
from common.logs import get_logger
from common.metrics import INPUT_DEFERRED, INPUT_GAPS
from common.ops_http import Heartbeat, OpsServer
from common.recovery import table_manager
from common.settings import ServiceSettings

log = get_logger(__name__)


def advertised_url(settings: ServiceSettings) -> str:
    """Where the other replicas reach this one's HTTP port (OUTREACH_ADVERTISED_URL)."""
    if settings.advertised_url:
        return settings.advertised_url.rstrip("/")
    return f"http://{socket.gethostname()}:{getattr(settings, 'http_port', 6066)}"


def owner_of(app: faust.App, table: str, key: str) -> str | None:
    """The advertised URL of the replica whose partition holds `key` in `table` (None
    while the group's assignment is not known). A table's rows sit in the partition of
    the record that wrote them, which Kafka's partitioner chose from the key's own
    bytes: the partition is found from those (faust's router would hash the key as its
    changelog serializes it, which is not how these tables are keyed)."""
    try:
        topic = app.tables[table].changelog_topic.get_topic_name()
        return str(app.assignor.key_store(topic, key.encode())).rstrip("/")
    except Exception:  # no assignment yet, a table this app does not have
        return None


def create_app(
    service: str, settings: ServiceSettings, *, store: str, **overrides: Any
) -> faust.App:
    brokers = [URL(f"kafka://{host}") for host in settings.kafka_bootstrap_servers.split(",")]
    options: dict[str, Any] = dict(
        broker=brokers,
        broker_credentials=kafka_security.faust_credentials(),
        # Told to the group with the assignment: `owner_of` finds a key's replica by it.
        canonical_url=advertised_url(settings),
        store=store,
        datadir=str(settings.service_dir(service) / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=settings.consumer_max_fetch_bytes,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        producer_partitioner=CachedKeyPartitioner(),
        producer_acks=-1,
        broker_commit_every=200,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        table_standby_replicas=settings.table_standby_replicas,
        autodiscover=False,
        # How soon a dead worker's partitions move to the living (heartbeats at 1/10).
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_s / 10),
        # Changelogs are read in bulk into RocksDB before faust's own recovery pass.
        TableManager=table_manager(
            settings.bulk_recovery_min_records if settings.bulk_recovery else None
        ),
    )
    options.update(overrides)
    return faust.App(f"{settings.topic_prefix}{service}", **options)


def changelog_specs(app: faust.App, partitions: int) -> list[Any]:
    """The changelog topics of the app's tables, created up front (compacted): a table
    whose changelog does not exist yet at the first assignment is not recovered."""
    from common.topics import TopicSpec

    return [
        TopicSpec(f"{app.conf.id}-{name}-changelog", partitions, compacted=True)
        for name in app.tables
    ]


def ensure_stream_topics(
    settings: ServiceSettings, service: str, app: faust.App, specs: list[Any]
) -> None:
    """Create a stream service's topics if missing: `specs` (its inputs and outputs),
    its dead letters, the watermarks on the event clock, its tables' changelogs."""
    from common.admin import ensure_topics
    from common.topics import DEADLETTER_RETENTION_MS, WATERMARKS_RETENTION_MS, TopicSpec

    topics = settings.topics
    specs = [
        *specs,
        TopicSpec(topics.deadletter(service), 1, retention_ms=DEADLETTER_RETENTION_MS),
    ]
    if settings.outreach_clock == "event":
        specs.append(TopicSpec(topics.watermarks, 1, retention_ms=WATERMARKS_RETENTION_MS))
    specs += changelog_specs(app, settings.topic_partitions)
    ensure_topics(settings.kafka_bootstrap_servers, specs)


def prepare_process(service: str, settings: ServiceSettings) -> None:
    """What a stream service's process sets up before its app exists: logging, tracing,
    the event loop."""
    from common.logs import configure_logging

    configure_logging(service, settings.log_level, settings.log_format)
    settings.configure_tracing(service)
    use_event_loop(settings.event_loop)


def raw_topic(app: faust.App, *names: str, **kwargs: Any) -> faust.TopicT:
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **kwargs,
    )


def input_message(event: faust.EventT[Any]) -> InputMessage:
    return input_message_of(event.message)


def input_message_of(message: Any) -> InputMessage:
    """A consumed record (faust's consumer message) as the handlers see it."""
    raw: Any = message.headers or []
    pairs: list[tuple[Any, Any]] = list(raw.items() if isinstance(raw, dict) else raw)
    header_list: Headers = [
        (str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in pairs
    ]
    return InputMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=header_list,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


_background: set[asyncio.Future[Any]] = set()  # tasks kept alive until done


class FaustProducer(ProducerPort):
    """Sends through the faust app's own producer (flushed before every offset commit)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        await self.app.producer.send_and_wait(
            topic, key, value, partition=None, timestamp=_seconds(timestamp_ms), headers=headers
        )

    async def send_soon(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        timestamp_ms: int | None = None,
    ) -> Awaitable[Any]:
        return await self.app.producer.send(
            topic, key, value, partition=None, timestamp=_seconds(timestamp_ms), headers=headers
        )

    def send_now(self) -> None:
        """Send what was handed over without waiting out the linger: for a caller about
        to wait for those records' acknowledgements, the linger is pure delay. (aiokafka
        has no public call for it; `flush_for_commit` closes the batches being filled and
        wakes the sender. Without it, nothing happens: the linger then runs its course.)"""
        flush = faust_private.flush_now(self.app.producer)
        if flush is not None:
            task = asyncio.ensure_future(flush())
            _background.add(task)
            task.add_done_callback(_background.discard)


def _seconds(timestamp_ms: int | None) -> float | None:
    """Faust's producer takes a record's timestamp in seconds."""
    return None if timestamp_ms is None else timestamp_ms / 1000


@contextmanager
def as_current(event: faust.EventT[Any]) -> Iterator[None]:
    """Make `event` faust's current event while the block runs.

    Faust reads a table key from, and writes its changelog to, the partition of the
    current event. Inside `stream.take_events()` the agent has no current event (the
    stream is drained in another task), and a batch mixes partitions: each table access
    must name the event whose partition the key belongs to.
    """
    token = faust_private.set_current_event(event)
    try:
        yield
    finally:
        faust_private.reset_current_event(token)


class _PartitionEvent:
    """What faust's tables read of the current event: its message's topic and partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


@contextmanager
def at_partition(topic: str, partition: int) -> Iterator[None]:
    """Faust's tables read and write the block's keys in `partition` (of a topic
    co-partitioned with them), as they would while a record of it is handled: for a
    runner that handles records outside faust's streams, and deadlines with no record."""
    with as_current(_PartitionEvent(topic, partition)):  # type: ignore[arg-type]
        yield


def caught_up(app: faust.App, msg: InputMessage) -> bool:
    """Whether the message's partition holds nothing more to read (for the event clock)."""
    from faust.types import TP

    highwater = app.consumer.highwater(TP(msg.topic, msg.partition))
    return highwater is None or msg.offset + 1 >= highwater


def use_event_loop(name: str) -> None:
    """Select the event loop implementation; call before the faust app is created."""
    if name == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")


class StreamWorker:
    """What the runtime of every stream service has (orders_watcher, risk_detector): its
    faust app, a heartbeat, the deadline schedule over its table, the holds on lagging
    partitions and how far each input is read, all told of every rebalance; and its ops
    HTTP server (at `http`, host and port), ready once partitions are assigned and the
    tables recovered. A runtime
    extends `on_assigned` and `on_revoked` with what is its own."""

    def __init__(
        self,
        http: tuple[str, int],
        app: faust.App,
        schedule: DeadlineSchedule,
        holds: PartitionHolds,
        progress: InputProgress,
        routes: list[web.RouteDef] | None = None,
    ) -> None:
        self.app = app
        self.schedule = schedule
        self.holds = holds
        self.progress = progress
        self.heartbeat = Heartbeat()
        self.assigned = False
        self.ops = OpsServer(
            *http,
            self.heartbeat,
            checks={
                "kafka_assignment": lambda: self.assigned,
                "tables_recovered": lambda: self.schedule.ready,
            },
            routes=routes,
        )

    def on_assigned(self, assigned: Any) -> None:
        self.assigned = True
        self.schedule.on_assigned()
        self.holds.on_assigned(assigned)
        self.progress.on_assigned(assigned)

    def on_revoked(self) -> None:
        self.schedule.on_revoked()
        self.holds.on_revoked()
        self.progress.on_revoked()


def wire_runtime(runtime: StreamWorker) -> None:
    """Tell `runtime` of every rebalance of its app, and serve its ops HTTP (health,
    readiness, metrics) once the worker runs."""
    app = runtime.app

    @app.task
    async def start_ops() -> None:
        await runtime.ops.start()
        log.info("ops_http_started", port=runtime.ops.port)

    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        runtime.on_assigned(assigned)

    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        runtime.on_revoked()

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]


def run_worker(app: faust.App, service: str, settings: ServiceSettings) -> None:
    """Run a faust worker until SIGTERM/SIGINT, keeping our JSON logging."""
    from common.logs import configure_logging

    class _Worker(faust.Worker):
        def _setup_logging(self) -> None:
            configure_logging(service, settings.log_level, settings.log_format)

    worker = _Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False, quiet=True)
    worker.execute_from_commandline()


class PartitionHolds:
    """Keeps the event clock from running ahead of assigned partitions with unread records.

    After each assignment it asks the broker for every input partition's end offset and
    our position; a partition with records still to read holds the watermark until the
    consumer has caught up with it. Agents `await holds.ready()` before handling a record,
    so no record is handled on a watermark that ignores a lagging partition.
    """

    def __init__(self, app: faust.App, clock: Any, topics: set[str]) -> None:
        self.app = app
        self.clock = clock
        self.topics = topics
        self._ready = asyncio.Event()
        self._priming: asyncio.Future[None] | None = None
        if not hasattr(clock, "hold"):
            self._ready.set()

    async def ready(self) -> None:
        if not self._ready.is_set():
            await self._ready.wait()

    def on_revoked(self) -> None:
        if hasattr(self.clock, "hold"):
            self._ready.clear()

    def on_assigned(self, assigned: Any) -> None:
        if hasattr(self.clock, "hold"):
            self._ready.clear()
            self._priming = asyncio.ensure_future(self._prime(assigned))

    async def _prime(self, assigned: Any) -> None:
        try:
            await asyncio.wait_for(self._hold_lagging(assigned), timeout=10.0)
        except TimeoutError:
            # Positions are not known yet (e.g. during table recovery): hold nothing rather
            # than freeze the clock; records are observed with their caught-up flag anyway.
            log.warning("event_clock_holds_skipped", reason="offsets not available in 10s")
        finally:
            self._ready.set()

    async def _hold_lagging(self, assigned: Any) -> None:
        tps = [tp for tp in assigned if tp.topic in self.topics]
        if not tps:
            return
        highwaters = await self.app.consumer.highwaters(*tps)
        for tp in tps:
            position = await self.app.consumer.position(tp)
            end = highwaters.get(tp)
            if end is not None and (position is None or position < end):
                self.clock.hold((tp.topic, tp.partition))
            else:
                self.clock.release((tp.topic, tp.partition))


class StreamFront:
    """How far a stream has got on the broker: the latest arrival stamp (record
    timestamp) of the last records of every partition of some topics, read with a
    consumer of its own outside any group. For an event-clock service that reads only
    some of those partitions (one of several workers): once its own are read to their
    end, time has reached that stamp for it too, as it has for a worker reading them
    all (every record stamped earlier was published before, so it has read its share)."""

    def __init__(self, bootstrap_servers: str, topics: list[str], partitions: int) -> None:
        """`partitions`: each topic's partition count (a consumer outside any group
        learns no metadata of topics it has not been assigned)."""
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.partitions = partitions
        self._consumer: Any = None

    async def latest(self, timeout_s: float = 2.0) -> int | None:
        """The latest stamp (ms) among the partitions' last records; None if none came."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        try:
            if self._consumer is None:
                self._consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers,
                    enable_auto_commit=False,
                    group_id=None,
                    **kafka_security.client_options(),
                )
                await self._consumer.start()
            consumer = self._consumer
            tps = [
                TopicPartition(topic, p) for topic in self.topics for p in range(self.partitions)
            ]
            if set(consumer.assignment()) != set(tps):
                consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            waiting = {tp for tp, end in ends.items() if end > 0}
            for tp in waiting:
                consumer.seek(tp, ends[tp] - 1)
            latest = None
            deadline = asyncio.get_running_loop().time() + timeout_s
            while waiting and asyncio.get_running_loop().time() < deadline:
                fetched = await consumer.getmany(*waiting, timeout_ms=200)
                for tp, records in fetched.items():
                    waiting.discard(tp)
                    for record in records:
                        if latest is None or record.timestamp > latest:
                            latest = record.timestamp
            return latest
        except Exception as exc:  # asked again when next idle
            log.warning("stream_front_unknown", error=repr(exc))
            return None

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


@dataclass
class _Rewind:
    """A gap being re-read on one input partition: from `expected`, found at `trigger`."""

    expected: int
    trigger: int
    seeks: int = 0
    restarted_at: int | None = None


#: A gap's outcome → its log event and level.
_GAP_LOGS = {
    "rewound": ("input_offsets_skipped", "warning"),
    "absent": ("input_offsets_absent", "info"),
    "unrecovered": ("input_offsets_not_recovered", "error"),
}


def _tp(msg: InputMessage) -> TP:
    return TP(msg.topic, msg.partition)


class InputProgress:
    """Whether a worker has read what the broker holds of its input partitions.

    Absence ("nothing came by the deadline") may only be judged on a partition whose
    records up to now have been read: a backlog taken over in a rebalance, or left by a
    restart, is otherwise mistaken for silence (a parcel judged stalled while its
    delivery scan waits unread). On the wall clock a service asks `caught_up(p)` before
    it acts on partition p's deadlines; the event clock needs no such gate, its time
    never runs ahead of unread records (PartitionHolds).

    Events of a partition that is not caught up are judged at that partition's own time
    (`time_of`): the event time reached on its lagging inputs, never the wall clock's,
    so a record read late is judged as it would have been when it came.

    A partition is caught up when, for each input topic, the last record handled is the
    last the broker holds: as the consumer's newest fetch saw it (its highwater), and,
    before deadlines act on it, as the broker says now (`confirm`: a fetch may be
    seconds old when the partition was paused for flow control). Before the first record
    handled since an assignment, reading starts at the group's committed offset, which
    faust learns when it seeks after recovery (until then, an older and lower value: the
    gate errs on the side of waiting).

    It also makes sure every record is handled, once, in offset order from the
    committed offset (`admit`): after a rebalance faust can hand over records fetched
    before its seek to the committed offset, re-read records it handed over already, or
    jump over some and count them as done. A service asks `admit` before it handles an
    input record.
    """

    #: Seeks back to one gap's first offset before it is taken as missing for good (each
    #: record fetched before a seek may need one: bounded by what faust buffers).
    max_rewind_seeks = 10_000

    def __init__(
        self,
        app: faust.App,
        topics: set[str],
        *,
        upstream: frozenset[str] = frozenset(),
        also_admit: frozenset[str] = frozenset(),
        service: str = "unknown",
    ):
        """`topics` are co-partitioned with the state; every assigned partition of an
        `upstream` topic (one repartitioned on its way in) counts for every partition.
        Records of `also_admit` topics go through `admit` too, without counting for
        whether a partition is read up."""
        self.app = app
        self.topics = topics | upstream
        self.upstream = upstream
        self.admitted = self.topics | also_admit
        self.service = service
        self._assigned: list[Any] = []
        self._handled: dict[tuple[str, int], int] = {}
        self._times: dict[tuple[str, int], datetime] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._rewinds: dict[tuple[str, int], _Rewind] = {}

    def on_assigned(self, assigned: Any) -> None:
        self._assigned = [tp for tp in assigned if tp.topic in self.topics]
        for topic in {tp.topic for tp in assigned if tp.topic in self.admitted}:
            # Exported at 0 from the start: a gap's alert reads an existing series.
            for outcome in _GAP_LOGS:
                INPUT_GAPS.labels(self.service, topic, outcome)
        self._handled = {}
        self._times = {}
        self._ends = {}
        self._next = {}
        self._rewinds = {}

    # --- admission: every record of an assigned partition, in offset order -------------

    async def admit(self, message: Any, msg: InputMessage) -> bool:
        """Whether to handle this input record now. No: a record fetched after a
        rebalance before faust's seek to the committed offset (the fetcher may have
        started anywhere), a record handled already, and a record after a gap, i.e.
        offsets the consumer skipped (seen after rebalances: faust's fetcher drops
        records it had read before a seek, and then counts the gap as done). For a gap the
        consumer is sent back to its first offset, and records are let through again from
        there. A record not admitted is left unacknowledged, so that its offset is not
        committed before it has been read again and handled."""
        if msg.topic not in self.admitted:
            return True
        if not getattr(self.app.tables, "actives_ready", True):
            return self._defer(message, msg, "before_seek")
        key = (msg.topic, msg.partition)
        expected = self._next.get(key)
        if expected is None:
            committed = faust_private.committed_offset(self.app.consumer, _tp(msg))
            expected = msg.offset if committed is None else committed
        if msg.offset < expected:
            # Read and handled before (a seek back re-reads from an earlier offset).
            self._leave_unacked(message)
            return False
        rewind = self._rewinds.get(key)
        if msg.offset > expected:
            if rewind is None:
                self._rewinds[key] = _Rewind(expected, msg.offset)
                self._report("rewound", msg, expected)
                await self._seek_back(msg, expected)
                return self._defer(message, msg, "after_gap")
            if not await self._absent(rewind, msg):
                return self._defer(message, msg, "after_gap")
        if rewind is not None:
            del self._rewinds[key]
        self._next[key] = msg.offset + 1
        return True

    async def _absent(self, rewind: _Rewind, msg: InputMessage) -> bool:
        """While re-reading a gap: whether the offsets up to this record are not on the
        broker (so the gap is real and the record may be handled). A record past the one
        that revealed the gap was fetched before the seek; if the fetcher has read past
        the gap's start again meanwhile (faust would then drop the re-read records as
        seen), the seek is repeated."""
        if msg.offset > rewind.trigger:
            read_offset = getattr(self.app.consumer, "_read_offset", {}).get(_tp(msg))
            if read_offset is None or read_offset > rewind.trigger:
                return await self._seek_again(rewind, msg)
            return False
        # The re-read began past the gap's start. Twice in a row, after two seeks: then
        # those offsets are not there (a transaction marker, compaction).
        if rewind.restarted_at == msg.offset:
            self._report("absent", msg, rewind.expected)
            return True
        rewind.restarted_at = rewind.trigger = msg.offset
        return await self._seek_again(rewind, msg)

    async def _seek_again(self, rewind: _Rewind, msg: InputMessage) -> bool:
        rewind.seeks += 1
        if rewind.seeks > self.max_rewind_seeks:
            self._report("unrecovered", msg, rewind.expected)
            return True
        await self._seek_back(msg, rewind.expected)
        return False

    def _report(self, outcome: str, msg: InputMessage, first: int) -> None:
        """Log and count what became of a gap: offsets `first` up to before `msg`'s."""
        event, level = _GAP_LOGS[outcome]
        getattr(log, level)(
            event, topic=msg.topic, partition=msg.partition, offsets=f"{first}..{msg.offset - 1}"
        )
        INPUT_GAPS.labels(self.service, msg.topic, outcome).inc()

    async def _seek_back(self, msg: InputMessage, offset: int) -> None:
        tp = _tp(msg)
        consumer: Any = self.app.consumer
        gaps = getattr(consumer, "_gap", None)
        if gaps is not None and tp in gaps:
            # Faust counted the skipped offsets as done (for compacted topics): not these.
            gaps[tp].chop(offset, msg.offset)
        try:
            await consumer.seek(tp, offset)
        except Exception as exc:  # no longer assigned: the next owner reads from the commit
            log.warning(
                "input_seek_failed", topic=msg.topic, partition=msg.partition, error=repr(exc)
            )

    def _defer(self, message: Any, msg: InputMessage, reason: str) -> bool:
        INPUT_DEFERRED.labels(self.service, msg.topic, reason).inc()
        self._leave_unacked(message)
        return False

    def _leave_unacked(self, message: Any) -> None:
        """Keep faust from counting the record as done: a message already marked acked is
        not acknowledged to the consumer again, so its offset holds the commit back."""
        faust_private.leave_unacked(self.app.consumer, message)

    # --- progress ------------------------------------------------------------------------

    def on_revoked(self) -> None:
        self.on_assigned(())

    def observe(self, msg: InputMessage, event_time: datetime) -> None:
        """The record being handled is dated `event_time` (before `handled`)."""
        key = (msg.topic, msg.partition)
        previous = self._times.get(key)
        if previous is None or event_time > previous:
            self._times[key] = event_time

    def time_of(self, partition: int, now: datetime, at_least: datetime | None = None) -> datetime:
        """The time partition `partition` is judged at: `now` once it is caught up, else
        the earliest event time reached on its lagging inputs (those read at all), but
        not before `at_least` (the record being handled: its own facts count at once)."""
        reached = [
            self._times[(tp.topic, tp.partition)]
            for tp in self._assigned
            if tp.partition == partition
            and (tp.topic, tp.partition) in self._times
            and not self._read_up(tp)
        ]
        judged = min([now, *reached])
        return judged if at_least is None or at_least <= judged else min(now, at_least)

    def handled(self, msg: InputMessage) -> None:
        key = (msg.topic, msg.partition)
        if msg.offset > self._handled.get(key, -1):
            self._handled[key] = msg.offset

    def _next_to_read(self, tp: Any) -> int | None:
        handled = self._handled.get((tp.topic, tp.partition))
        if handled is not None:
            return handled + 1
        return faust_private.committed_offset(self.app.consumer, tp)

    def _highwater(self, tp: Any) -> int | None:
        fetched = self.app.consumer.highwater(tp)
        told = self._ends.get((tp.topic, tp.partition))
        known = [x for x in (fetched, told) if x is not None]
        return max(known) if known else None

    def _read_up(self, tp: Any) -> bool:
        highwater = self._highwater(tp)
        if highwater is None:
            return False  # not fetched since the assignment
        if highwater == 0:
            return True  # an empty partition
        next_offset = self._next_to_read(tp)
        return next_offset is not None and next_offset >= highwater

    def _inputs_of(self, partition: int) -> list[Any]:
        return [
            tp for tp in self._assigned if tp.partition == partition or tp.topic in self.upstream
        ]

    def caught_up(self, partition: int) -> bool:
        return all(self._read_up(tp) for tp in self._inputs_of(partition))

    async def confirm(self, partition: int) -> bool:
        """`caught_up`, checked against the end offsets the broker reports now."""
        tps = self._inputs_of(partition)
        if not self.caught_up(partition):
            return False
        if not tps:
            return True
        try:
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*tps), 5.0)
        except Exception as exc:  # the broker did not answer: ask again on the next tick
            log.warning("input_end_offsets_unknown", partition=partition, error=repr(exc))
            return False
        for tp, end in ends.items():
            key = (tp.topic, tp.partition)
            if end is not None and end > self._ends.get(key, -1):
                self._ends[key] = end
        return self.caught_up(partition)

    async def end_offsets(self, lanes: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The end offsets the broker reports now for `lanes` (topic, partition); none
        when it does not answer in time."""
        tps = [TP(topic, partition) for topic, partition in lanes]
        try:
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*tps), 5.0)
        except Exception as exc:  # asked again on the next batch; idleness bounds the wait
            log.warning("input_end_offsets_unknown", lanes=len(tps), error=repr(exc))
            return {}
        return {(tp.topic, tp.partition): end for tp, end in ends.items() if end is not None}

    def admitted_to(self, lane: tuple[str, int]) -> int | None:
        """The offset up to which the records of `lane` have been admitted (the next one
        to admit): since the assignment, else the group's committed offset."""
        position = self._next.get(lane)
        if position is None:
            position = faust_private.committed_offset(self.app.consumer, TP(*lane))
        return position

    def lag(self, partition: int) -> dict[str, list[int | None]]:
        """`topic:partition` → [next offset to read, highwater] of each input of the partition."""
        return {
            f"{tp.topic}:{tp.partition}": [self._next_to_read(tp), self._highwater(tp)]
            for tp in self._inputs_of(partition)
        }
