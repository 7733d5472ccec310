"""Kafka plumbing shared by the services: producer port, dead letters, a consumer loop.

The consumer loop follows arroyo's discipline: messages are handled in order per
partition, every outcome (processed, duplicate, dead-lettered) is final before the
offset is committed, and a message that cannot be handled goes to the service's
dead-letter topic with its original bytes and a readable reason — it never stops the
loop and is never lost. A dependency outage (common/outages.py) is neither: the input is
held — offsets committed up to the last finished record, the partitions paused, tried
again with backoff — and never dead-lettered.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka.partitioner import DefaultPartitioner, murmur2

from common import kafka_security, tracing
from common.clock import Clock, wall_now
from common.consumer import ConsumerFactory, aiokafka_consumer
from common.envelope import CONTENT_TYPE_HEADER, CloudEvent, InvalidEvent
from common.failpoints import failpoint
from common.logs import get_logger, handling, redact
from common.metrics import (
    CLOCK_SECONDS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    INPUT_HELD,
    INPUT_HOLDS,
    LAST_INPUT_SECONDS,
    PROCESSING_SECONDS,
    child,
)
from common.ops_http import Heartbeat
from common.outages import DependencyUnavailable, as_outage, outage_of
from common.records import Headers as Headers
from common.records import InputMessage as InputMessage

log = get_logger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """One record a handler wants produced."""

    topic: str
    key: str
    event: CloudEvent

    def headers(self) -> Headers:
        """content-type, and the event's trace context (CloudEvents distributed-tracing
        extension) copied to Kafka headers, where consumers look first."""
        headers: Headers = [CONTENT_TYPE_HEADER]
        for name in tracing.TRACE_FIELDS:
            value = getattr(self.event, name, None)
            if isinstance(value, str):
                headers.append((name, value.encode()))
        return headers


class CachedKeyPartitioner:
    """Kafka's default partitioning (murmur2 of the key, as the Java client and aiokafka
    do), with each key's hash remembered: aiokafka computes murmur2 in pure Python, some
    microseconds a record, and a service produces for the same keys (customers, orders)
    again and again. At most `size` keys are remembered (a full memory starts over)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._hashes: dict[bytes, int] = {}
        self._keyless = DefaultPartitioner()  # no key: a random available partition

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._keyless(key, all_partitions, available))
        hashes = self._hashes
        found = hashes.get(key)
        if found is None:
            if len(hashes) >= self.size:
                hashes.clear()
            found = hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[found % len(all_partitions)]


class ProducerPort(abc.ABC):
    """Sends records; `send` returns once the broker has acknowledged the record."""

    @abc.abstractmethod
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        """Raises on a failure the caller must not treat as delivered. `timestamp_ms`:
        the record's timestamp (None: the producer's wall time)."""

    async def send_soon(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        timestamp_ms: int | None = None,
    ) -> Awaitable[Any]:
        """Hand the record over and return what completes on the broker's acknowledgement
        (raising if it failed), so that many records share one wait. This default
        waits at once; producers that can pipeline override it."""
        await self.send(topic, key, value, headers, timestamp_ms=timestamp_ms)
        return _acknowledged()

    def send_now(self) -> None:
        """Send the records handed over (`send_soon`) and held back to fill a request,
        now: the caller is about to wait for their acknowledgements. By default none are
        held."""
        return None

    async def emit(
        self,
        service: str,
        records: Sequence[Outgoing],
        acks: list[Awaitable[Any]] | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Produce the records in order, each under its PRODUCER span. Without `acks`,
        return once all are acknowledged; with it, append each record's acknowledgement
        to `acks` for the caller to await before it acts on their delivery. `at`: the
        moment they were decided, their records' timestamp on the event clock (where a
        downstream service takes them to have arrived, common/marks.py)."""
        stamp = {} if at is None else {"timestamp_ms": int(at.timestamp() * 1000)}
        for record in records:
            with tracing.producing(record.topic, record.event) as event:
                if event is not record.event:
                    record = Outgoing(record.topic, record.key, event)
                key, value = record.key.encode(), record.event.to_bytes()
                if acks is None:
                    await self.send(record.topic, key, value, record.headers(), **stamp)
                else:
                    acks.append(
                        await self.send_soon(record.topic, key, value, record.headers(), **stamp)
                    )
            child(EVENTS_PRODUCED, service, record.topic, record.event.type).inc()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _acknowledged() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class RecordingProducer(ProducerPort):
    """In-memory producer for unit tests."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, Headers]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        self.records.append((topic, key, value, list(headers)))

    def events(self, topic: str | None = None) -> list[CloudEvent]:
        return [CloudEvent.from_bytes(v) for t, _k, v, _h in self.records if topic in (None, t)]


class AiokafkaProducer(ProducerPort):
    """Idempotent aiokafka producer (acks=all), one per process."""

    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            **kafka_security.client_options(),
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        assert self._producer is not None, "producer not started"
        await self._producer.send_and_wait(
            topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
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
        assert self._producer is not None, "producer not started"
        ack: Awaitable[Any] = await self._producer.send(
            topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
        )
        return ack


class DeadLetters:
    """Publishes an unprocessable message to `deadletter.<service>`.

    The value is the original bytes, untouched, so that `outreachctl deadletters replay`
    can put it back on its topic; where it came from and why it failed travel in headers.
    """

    def __init__(self, producer: ProducerPort, topic: str, service: str) -> None:
        self.producer = producer
        self.topic = topic
        self.service = service

    async def publish(
        self,
        msg: InputMessage,
        reason: str,
        code: str,
        acks: list[Awaitable[Any]] | None = None,
    ) -> None:
        """Without `acks`, return once the broker has the dead letter. With it, hand the
        dead letter over and append its acknowledgement to `acks`, for a caller that
        waits for many records at once before it acknowledges their inputs (one wait per
        dead letter would hold a batch up by the producer's linger each time)."""
        headers: Headers = [
            ("dlq.original.topic", msg.topic.encode()),
            ("dlq.original.partition", str(msg.partition).encode()),
            ("dlq.original.offset", str(msg.offset).encode()),
            ("dlq.reason", redact(reason)[:2000].encode()),
            ("dlq.reason.code", code.encode()),
            ("dlq.service", self.service.encode()),
            ("dlq.failed_at", wall_now().isoformat().encode()),
        ]
        headers += [(k, v) for k, v in msg.headers if not k.startswith("dlq.")]
        if acks is None:
            await self.producer.send(self.topic, msg.key, msg.value or b"", headers)
        else:
            acks.append(
                await self.producer.send_soon(self.topic, msg.key, msg.value or b"", headers)
            )
        DEAD_LETTERS.labels(self.service, msg.topic, code).inc()
        log.warning(
            "dead_lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            reason_code=code,
            reason=reason,
        )


Handler = Callable[[InputMessage, CloudEvent], Awaitable[None]]


class MessageProcessor:
    """Decode → handle → (on failure) dead-letter, with metrics; one place for the policy.

    `InvalidEvent` raised by decoding or by the handler is the input's fault: dead-letter.
    An outage (a dependency that cannot be reached: `common.outages.outage_of`) is nobody's
    fault: `process` raises `DependencyUnavailable` and the caller holds the input until
    the dependency is back. Any other exception is ours (a bug): it is retried a bounded
    number of times with backoff, then dead-lettered with the error named, so that one
    poisonous message cannot stop a partition forever.
    """

    def __init__(
        self,
        service: str,
        handler: Handler,
        deadletters: DeadLetters,
        clock: Clock,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self.service = service
        self.handler = handler
        self.deadletters = deadletters
        self.clock = clock
        self.retries = retries
        self.backoff_s = backoff_s
        # Metric children looked up once: `labels()` costs more than the update itself,
        # and this runs for every record.
        self._last_input = LAST_INPUT_SECONDS.labels(service)
        self._clock_now = CLOCK_SECONDS.labels(service)

    async def process(
        self,
        msg: InputMessage,
        *,
        caught_up: bool = True,
        acks: list[Awaitable[Any]] | None = None,
    ) -> str:
        """Handle one record; returns its outcome ("processed", "dead_lettered", or what
        the handler says). A dead letter is awaited, unless `acks` collects its
        acknowledgement for the caller to await before the record counts as done."""
        started = time.perf_counter()
        self._last_input.set(time.time())
        try:
            event = CloudEvent.from_bytes(msg.value)
        except InvalidEvent as exc:
            with tracing.consuming(self.service, msg, None) as span:
                tracing.outcome(span, "dead_lettered", exc.code)
                await self._dead_letter(msg, exc.reason, exc.code, acks)
            return "dead_lettered"
        clock = self.clock
        clock.observe((msg.topic, msg.partition), event.time, caught_up=caught_up)
        self._clock_now.set(clock.now().timestamp())
        # Every log line of the handling names the event (and, with tracing, the span).
        with handling(event.id, event.type), tracing.consuming(self.service, msg, event) as span:
            result = await self._handle(msg, event, acks)
            tracing.outcome(span, result, None if result == "processed" else result)
        if result == "processed":
            seconds = time.perf_counter() - started
            child(PROCESSING_SECONDS, self.service, msg.topic).observe(seconds)
            child(EVENTS_CONSUMED, self.service, msg.topic, "processed").inc()
        return result

    async def _handle(
        self, msg: InputMessage, event: CloudEvent, acks: list[Awaitable[Any]] | None
    ) -> str:
        attempt = 0
        while True:
            try:
                await self.handler(msg, event)
                return "processed"
            except InvalidEvent as exc:
                await self._dead_letter(msg, exc.reason, exc.code, acks)
                return "dead_lettered"
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is not None:
                    raise DependencyUnavailable(dependency, type(exc).__name__) from exc
                attempt += 1
                if attempt > self.retries:
                    log.exception("handler_failed", topic=msg.topic, event_id=event.id)
                    # The exception's text may quote the input (an address, a name): it
                    # goes to the (redacted) log, the dead letter names only its type.
                    await self._dead_letter(
                        msg,
                        f"handler failed {attempt} times: {type(exc).__name__} "
                        f"(see the {self.service} log for event {event.id})",
                        "handler_error",
                        acks,
                    )
                    return "dead_lettered"
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    async def _dead_letter(
        self,
        msg: InputMessage,
        reason: str,
        code: str,
        acks: list[Awaitable[Any]] | None = None,
    ) -> None:
        EVENTS_CONSUMED.labels(self.service, msg.topic, "dead_lettered").inc()
        await self.deadletters.publish(msg, reason, code, acks)


def record_message(record: Any) -> InputMessage:
    """An aiokafka consumer record as the handlers see it."""
    return InputMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=list(record.headers or []),
        timestamp_ms=record.timestamp,
    )


class ConsumerLoop:
    """A plain aiokafka consumer-group loop for services that need no stream tables.

    Offsets are committed only after every message of a fetched batch has a final
    outcome (at-least-once); handlers are idempotent by event id.

    With `concurrency` > 1 a batch is handled in that many lanes at once, each message
    in the lane its key hashes to: records with the same key (a customer) keep their
    order, the others overlap their waits (a provider call, a database commit). The
    batch is still committed only when every lane is done.

    When a handler meets an outage (`DependencyUnavailable`), the lanes stop taking
    records, the offsets of what was finished are committed, every partition is rewound
    to its first unfinished record and paused, and after a backoff (doubling up to
    `hold_max_s`) the loop tries again — for as long as the outage lasts, polling all the
    while so that the group keeps the consumer. Nothing is dead-lettered for an outage.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        processor: MessageProcessor,
        heartbeat: Heartbeat,
        client_id: str,
        max_batch: int = 500,
        session_timeout_s: float = 30.0,
        on_idle: Callable[[], Awaitable[None]] | None = None,
        after_batch: Callable[[Any, dict[Any, list[Any]]], Awaitable[None]] | None = None,
        concurrency: int = 1,
        hold_first_s: float = 0.5,
        hold_max_s: float = 30.0,
        consumer_factory: ConsumerFactory = aiokafka_consumer,
    ) -> None:
        """`consumer_factory` makes the group's consumer (aiokafka's; unit tests pass
        `common.local_broker.LocalBroker.consumer`)."""
        self.concurrency = max(1, concurrency)
        self.consumer_factory = consumer_factory
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = list(topics)
        self.processor = processor
        self.heartbeat = heartbeat
        self.client_id = client_id
        self.max_batch = max_batch
        self.session_timeout_s = session_timeout_s
        self.on_idle = on_idle
        self.after_batch = after_batch
        self.hold_first_s = hold_first_s
        self.hold_max_s = hold_max_s
        self.assigned = False
        self._consumer: Any = None
        self._stopping = asyncio.Event()
        self._held = INPUT_HELD.labels(processor.service)
        self._held.set(0)

    async def start(self) -> None:
        from aiokafka import ConsumerRebalanceListener

        loop = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await loop._on_revoked(revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                loop.assigned = True
                await loop._on_assigned(assigned)

        self._consumer = self.consumer_factory(
            self.bootstrap_servers,
            self.group_id,
            self.client_id,
            self.max_batch,
            self.session_timeout_s,
        )
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=_Listener())

    def ready(self) -> bool:
        return self.assigned

    async def _on_assigned(self, assigned: Any) -> None:
        return None

    async def _on_revoked(self, revoked: Any) -> None:
        return None

    def _should_commit(self, batches: dict[Any, list[Any]]) -> bool:
        return bool(batches)

    async def _commit_handled(self, consumer: Any) -> None:
        """Commit what the batch handled: everything fetched, here."""
        await self._commit(consumer, None)

    async def run(self) -> None:
        from aiokafka.errors import KafkaError

        assert self._consumer is not None
        consumer = self._consumer
        backoff = self.hold_first_s
        while not self._stopping.is_set():
            self.heartbeat.beat()
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=self.max_batch)
            except KafkaError as exc:
                log.warning("fetch_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            outage = await self._handle_batch(consumer, batches)
            if outage is not None:
                await self._hold(consumer, outage, backoff)
                backoff = min(backoff * 2, self.hold_max_s)
                continue
            backoff = self.hold_first_s
            if self._should_commit(batches):
                failpoint(f"{self.processor.service}.before_offset_commit")
                await self._commit_handled(consumer)
                await self._report_lag(consumer)
            elif self.on_idle is not None:
                await self.on_idle()
            if self.after_batch is not None:  # what the round handled: none when idle
                await self.after_batch(consumer, batches)

    async def _handle_batch(
        self, consumer: Any, batches: dict[Any, list[Any]]
    ) -> tuple[DependencyUnavailable, dict[Any, int]] | None:
        """Handle a fetched batch. None when every record has its outcome; on an outage,
        the outage and, per partition, the offset to commit (its first unfinished record,
        or the end of what was fetched)."""
        lanes: dict[int, list[tuple[Any, InputMessage, bool]]] = {}
        for tp, messages in batches.items():
            highwater = consumer.highwater(tp)
            for record in messages:
                msg = record_message(record)
                caught_up = highwater is None or record.offset + 1 >= highwater
                lane = zlib.crc32(record.key or b"") % self.concurrency
                lanes.setdefault(lane, []).append((tp, msg, caught_up))
        # The batch's dead letters are handed over as they come and awaited together
        # before the commit (one wait each would hold a lane up by the producer's
        # linger per bad record).
        acks: list[Awaitable[Any]] = []
        finished: set[tuple[Any, int]] = set()
        stop = asyncio.Event()
        outcomes = await asyncio.gather(
            *(self._lane(items, acks, finished, stop) for items in lanes.values()),
            return_exceptions=True,
        )
        if acks:
            outcomes += await asyncio.gather(*acks, return_exceptions=True)
        outage: DependencyUnavailable | None = None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                outage = as_outage(outcome)
                if outage is None:
                    raise outcome  # nothing committed: the batch comes again
        if outage is None:
            return None
        if acks and any(isinstance(o, BaseException) for o in outcomes[-len(acks) :]):
            finished.clear()  # a dead letter may not have reached the broker: redo all
        resume_at: dict[Any, int] = {}
        for tp, messages in batches.items():
            pending = [r.offset for r in messages if (tp, r.offset) not in finished]
            resume_at[tp] = min(pending) if pending else messages[-1].offset + 1
        return outage, resume_at

    async def _lane(
        self,
        items: list[tuple[Any, InputMessage, bool]],
        acks: list[Awaitable[Any]],
        finished: set[tuple[Any, int]],
        stop: asyncio.Event,
    ) -> None:
        for tp, msg, caught_up in items:
            if stop.is_set():
                return
            try:
                await self.processor.process(msg, caught_up=caught_up, acks=acks)
            except BaseException:
                stop.set()  # the other lanes finish their record and stop too
                raise
            finished.add((tp, msg.offset))
            self.heartbeat.beat()

    async def _hold(
        self, consumer: Any, outage: tuple[DependencyUnavailable, dict[Any, int]], wait_s: float
    ) -> None:
        """Commit what was finished, rewind to the first unfinished records, pause, wait
        `wait_s` while polling (so the group keeps us), then resume."""
        from aiokafka.errors import IllegalStateError

        error, resume_at = outage
        service = self.processor.service
        INPUT_HOLDS.labels(service, error.dependency).inc()
        self._held.set(1)
        log.warning("input_held", dependency=error.dependency, error=str(error), retry_in_s=wait_s)
        await self._commit(consumer, resume_at)
        for tp, offset in resume_at.items():
            with contextlib.suppress(IllegalStateError, AssertionError):
                consumer.seek(tp, offset)  # revoked meanwhile: its next owner starts there
        deadline = time.monotonic() + wait_s
        while not self._stopping.is_set():
            consumer.pause(*consumer.assignment())
            self.heartbeat.beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stray = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for tp, records in stray.items():  # assigned during the hold: not ours yet
                with contextlib.suppress(IllegalStateError, AssertionError):
                    consumer.seek(tp, records[0].offset)
        consumer.resume(*consumer.assignment())
        self._held.set(0)

    async def _commit(self, consumer: Any, offsets: dict[Any, int] | None) -> None:
        """Commit (all fetched, or `offsets`); a failed commit (a rebalance, the broker
        away) is not fatal: the records come again and are recognised by their ids."""
        from aiokafka.errors import KafkaError

        try:
            if offsets is None:
                await consumer.commit()
            elif offsets:
                owned = set(consumer.assignment())
                await consumer.commit({tp: o for tp, o in offsets.items() if tp in owned})
        except KafkaError as exc:
            log.warning("commit_failed", error=type(exc).__name__)

    async def _report_lag(self, consumer: Any) -> None:
        per_topic: dict[str, int] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, highwater - position)
        for topic, lag in per_topic.items():
            CONSUMER_LAG.labels(self.processor.service, topic).set(lag)

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            finally:
                self._consumer = None
