"""The outreach worker: consumes requests and resolutions, runs the scheduler and the
relay to `outreach.messages`, and serves ops + explain + webhooks over HTTP.

    python -m services.outreach
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from common import tracing
from common.admin import ensure_topics
from common.aligned import AlignedInput
from common.aligned_consumer import AlignedConsumerLoop, ConsumerLanes
from common.clock import EPOCH, WatermarkClock
from common.envelope import CloudEvent
from common.kafka import (
    ConsumerLoop,
    DeadLetters,
    InputMessage,
    MessageProcessor,
    Outgoing,
)
from common.logs import configure_logging, get_logger
from common.metrics import LEDGER_DELIVERIES
from common.ops_http import Heartbeat, OpsServer
from common.outages import outage_of
from common.topics import WATERMARKS_RETENTION_MS, TopicSpec
from services.outreach.bootstrap import Outreach, build
from services.outreach.config import Settings
from services.outreach.domain.states import PUBLIC
from services.outreach.entrypoints.http import routes
from services.outreach.handlers import message_event

SERVICE = "outreach"
PUBLIC_STATUSES = frozenset(s.value for s in PUBLIC)
log = get_logger(__name__)


class OutreachWorker:
    def __init__(self, settings: Settings, outreach: Outreach) -> None:
        self.settings = settings
        self.outreach = outreach
        self.topics = settings.topics
        self.clock = outreach.clock
        self.heartbeat = Heartbeat()
        self.producer = outreach.producer
        self.deadletters = DeadLetters(self.producer, self.topics.deadletter(SERVICE), SERVICE)
        self.processor = MessageProcessor(SERVICE, self._handle, self.deadletters, self.clock)
        inputs = [self.topics.requests, self.topics.incidents, self.topics.customers]
        loop_options: dict[str, Any] = dict(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.topic_prefix}{SERVICE}",
            topics=inputs,
            processor=self.processor,
            heartbeat=self.heartbeat,
            client_id=f"{SERVICE}-worker",
            session_timeout_s=settings.kafka_session_timeout_s,
            concurrency=settings.concurrency,
        )
        self.consumer: ConsumerLoop
        if isinstance(self.clock, WatermarkClock):
            # On the event clock: every input in arrival order (common/aligned.py), the
            # scheduled messages sent as the clock passes their time.
            lanes = ConsumerLanes()
            aligned = AlignedInput(
                self.clock,
                lanes,
                lanes.fetching,
                topics=inputs,
                idle_s=settings.watermark_idle_s,
                max_buffered=settings.watermark_max_buffered,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                partitions=settings.topic_partitions,
                feeds={
                    self.topics.requests: "risk_detector",
                    self.topics.incidents: "orders_watcher",
                },
                # Contact data comes from preferences, which reads the shop's customers.
                waits_for=["preferences"],
                marks_topic=self.topics.watermarks,
            )
            self.consumer = AlignedConsumerLoop(
                aligned=aligned, lanes=lanes, act_on_due=self._send_due_until, **loop_options
            )
        else:
            self.consumer = ConsumerLoop(**loop_options)
        self.ops = OpsServer(
            settings.http_host,
            settings.http_port,
            self.heartbeat,
            checks={
                "kafka_assignment": self.consumer.ready,
                "database": outreach.database_ready,
                "preferences": outreach.plans.ready,
            },
            routes=routes(outreach),
        )
        self._stop = asyncio.Event()
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.started_at: datetime | None = None  # when the webhooks began to listen
        self._relay_until = EPOCH  # this worker holds the relay's lease until then

    def _now(self, event: CloudEvent | None = None) -> Any:
        # On the event clock a decision happens when the record that caused it arrived,
        # as it does live (the records are handled in arrival order: common/aligned.py).
        return self.clock.now()

    async def _handle(self, msg: InputMessage, event: CloudEvent) -> None:
        now = self._now(event)
        if msg.topic == self.topics.incidents:
            await self.outreach.delivery.on_incident(event, now)
        elif msg.topic == self.topics.customers:
            await self.outreach.delivery.on_customer_event(event)
        else:
            await self.outreach.delivery.on_request(event, now)

    async def _send_due(self) -> int:
        self.heartbeat.beat()  # the scheduler's turns prove the worker alive, too
        return await self.outreach.delivery.send_due(self.clock.now())

    async def _send_held(self) -> int:
        """On the event clock: what a pause held, once it is over (the rest is sent by
        the consumer's loop, `_send_due_until`)."""
        self.heartbeat.beat()
        if self.outreach.delivery.paused.all or not await self.outreach.ledger.held(limit=1):
            return 0
        return await self.outreach.delivery.send_due(self.clock.now())

    async def _send_due_until(self, until: float, inclusive: bool) -> None:
        """On the event clock: send the messages scheduled before `until` (or at it),
        earliest first, each at its own time, as the scheduler would have when it came."""
        assert isinstance(self.clock, WatermarkClock)
        last, repeats = None, 0
        while (due := await self.outreach.ledger.earliest_due()) is not None:
            moment = due.timestamp()
            if moment > until or (moment == until and not inclusive):
                return
            repeats = repeats + 1 if moment == last else 0
            if repeats > 2:
                return  # rows that stay due (held by a pause): the scheduler's turn
            last = moment
            self.clock.advance_to(due)
            await self.outreach.delivery.send_due(self.clock.now())

    async def _scrub(self) -> int:
        retention = timedelta(days=self.settings.ledger_retention_days)
        return await self.outreach.delivery.scrub_due(retention)

    async def _seen(self) -> None:
        """Record that this worker (and so the webhooks) is up."""
        assert self.started_at is not None
        await self.outreach.ledger.worker_seen(self.worker_id, self.started_at, datetime.now(UTC))

    async def _relay(self) -> bool:
        """Publish ledger changes to outreach.messages (a transactional outbox), in the
        order they were written: one worker at a time holds the relay's lease. Returns
        whether there may be more to publish at once."""
        ledger = self.outreach.ledger
        wall = datetime.now(UTC)
        lease = timedelta(seconds=self.settings.relay_lease_s)
        if self._relay_until - wall < lease / 2:  # renewed when half of it is left
            if not await ledger.hold_lease("relay", self.worker_id, wall + lease, wall):
                self._relay_until = EPOCH
                return False
            self._relay_until = wall + lease
        rows = await ledger.unpublished()
        for row in rows:
            if row.status not in PUBLIC_STATUSES:
                continue
            topic = self.topics.messages
            with tracing.producing(topic, message_event(row)) as event:
                record = Outgoing(topic, row.customer_id, event)
                await self.producer.send(
                    topic, record.key.encode(), event.to_bytes(), record.headers()
                )
        await ledger.mark_published([r.id for r in rows])
        return bool(rows)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run `job` every `seconds` until stopped (at once again while it returns True:
        more work waiting); a failure is logged and the next round tries again. An
        outage (the database, preferences, the broker away) is a warning, not a trace."""
        while not self._stop.is_set():
            again = False
            try:
                again = bool(await job())
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is None:
                    log.exception(f"{name}_failed")
                else:
                    log.warning(f"{name}_waits", dependency=dependency, error=type(exc).__name__)
            if again:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)

    async def _ledger_gauge(self) -> None:
        for status, count in (await self.outreach.ledger.count_by_status()).items():
            LEDGER_DELIVERIES.labels(status).set(count)

    async def run(self) -> None:
        ensure_topics(
            self.settings.kafka_bootstrap_servers,
            [
                TopicSpec(t, self.settings.topic_partitions)
                for t in (
                    self.topics.requests,
                    self.topics.incidents,
                    self.topics.messages,
                    self.topics.optouts,
                )
            ]
            + [TopicSpec(self.topics.customers, self.settings.topic_partitions, compacted=True)]
            + [TopicSpec(self.topics.deadletter(SERVICE), 1)]
            + (
                [TopicSpec(self.topics.watermarks, 1, retention_ms=WATERMARKS_RETENTION_MS)]
                if isinstance(self.clock, WatermarkClock)
                else []
            ),
        )
        await self.outreach.start()
        await self.producer.start()
        await self.consumer.start()
        await self.ops.start()
        self.started_at = datetime.now(UTC)
        log.info(
            "started",
            clock=self.settings.outreach_clock,
            http_port=self.ops.port,
            providers={c: type(s).__name__ for c, s in self.outreach.senders.items()},
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        cache = self.outreach.template_cache
        # On the event clock the consumer's loop sends what is due, in order with its
        # records; the scheduler then only sends what a pause held, after a resume.
        scheduler = self._send_held if isinstance(self.clock, WatermarkClock) else self._send_due
        tasks = [
            asyncio.create_task(self.consumer.run()),
            asyncio.create_task(
                self._every(self.settings.scheduler_interval_s, scheduler, "scheduler")
            ),
            asyncio.create_task(self._every(0.2, self._relay, "relay")),
            asyncio.create_task(self._every(1.0, self._seen, "seen")),
            # Personal data leaves settled rows after the retention, and after an erasure.
            asyncio.create_task(self._every(600.0, self._scrub, "scrub")),
            # Published templates stay fresh even while nothing is rendered, so a publish
            # in the studio is served within OUTREACH_TEMPLATE_REFRESH_S.
            asyncio.create_task(
                self._every(cache.refresh_s, cache.refresh, "template_refresh"),
            ),
            # The kill switch: every worker reads it every OUTREACH_CONTROLS_REFRESH_S.
            asyncio.create_task(
                self._every(
                    self.settings.controls_refresh_s,
                    self.outreach.controls_watcher.refresh,
                    "controls_refresh",
                )
            ),
            asyncio.create_task(
                self._every(self.settings.ledger_metrics_s, self._ledger_gauge, "ledger_gauge")
            ),
            # Rows whose holder died or stalled, and sends in doubt: taken over, the
            # provider asked.
            asyncio.create_task(
                self._every(
                    self.settings.in_doubt_check_s,
                    lambda: self.outreach.delivery.sweep(self.clock.now()),
                    "sweep",
                )
            ),
        ]
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("task_died", error=repr(task.exception()))
        self._stop.set()
        await self.consumer.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.ops.stop()
        await self.producer.stop()
        await self.outreach.stop()
        log.info("stopped")


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    settings.configure_tracing(SERVICE)
    worker = OutreachWorker(settings, build(settings))
    asyncio.run(worker.run())


__all__ = ["OutreachWorker", "main", "web"]
