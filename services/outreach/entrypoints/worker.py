"""The outreach worker: consumes requests and resolutions (and keeps hand-offs for the
studio: entrypoints/records.py), runs the scheduler and the relay to `outreach.messages`,
and serves ops + explain + webhooks over HTTP.

    python -m services.outreach
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from common.admin import ensure_topics
from common.clock import WatermarkClock
from common.envelope import CloudEvent
from common.kafka import DeadLetters, InputMessage, MessageProcessor
from common.logs import configure_logging, get_logger
from common.metrics import WORKERS_LIVE
from common.ops_http import Heartbeat, OpsServer
from common.periodic import every
from services.outreach.adapters.relay import MessageRelay
from services.outreach.bootstrap import Outreach, bootstrap
from services.outreach.config import Settings
from services.outreach.entrypoints.http import routes
from services.outreach.entrypoints.inputs import SERVICE, input_consumer, own_topics
from services.outreach.entrypoints.records import handoff_records, outcome_records
from services.outreach.handlers import action_events, message_event

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
        self.consumer = input_consumer(
            settings, self.clock, self.processor, self.heartbeat, self._send_due_until
        )
        self.records = [
            kept(settings, outreach, self.heartbeat, self.deadletters)
            for kept in (handoff_records, outcome_records)
        ]
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
        self.relay = MessageRelay(
            outreach.ledger,
            self.producer,
            self.topics.messages,
            self.worker_id,
            timedelta(seconds=settings.relay_lease_s),
            message_event,
            also=(self.topics.actions, action_events),
        )

    async def _handle(self, msg: InputMessage, event: CloudEvent) -> None:
        # On the event clock a decision happens when the record that caused it arrived,
        # as it does live (the records are handled in arrival order: common/aligned.py).
        now, delivery = self.clock.now(), self.outreach.delivery
        if msg.topic == self.topics.incidents:
            await delivery.on_incident(event, now)
        elif msg.topic == self.topics.resolutions:
            await delivery.on_resolution(event, now)
        elif msg.topic == self.topics.customers:
            await delivery.on_customer_event(event)
            await self.outreach.conversations.on_customer_event(event)
        else:
            await delivery.on_request(event, now)

    async def _send_due(self) -> int:
        self.heartbeat.beat()  # the scheduler's turns prove the worker alive, too
        return await self.outreach.delivery.send_due(self.clock.now())

    async def _send_held(self) -> int:
        self.heartbeat.beat()
        return await self.outreach.delivery.send_held(self.clock.now())

    async def _send_due_until(self, until: float, inclusive: bool) -> None:
        assert isinstance(self.clock, WatermarkClock)
        await self.outreach.delivery.send_due_until(self.clock, until, inclusive)

    async def _scrub(self) -> int:
        retention = timedelta(days=self.settings.ledger_retention_days)
        await self.outreach.conversations.scrub_due(self.outreach.wall.now() - retention)
        return await self.outreach.delivery.scrub_due(retention)

    async def _seen(self) -> None:
        """Record that this worker (and so the webhooks) is up, and count the workers
        that share the group's limits."""
        assert self.started_at is not None
        ledger, wall = self.outreach.ledger, self.outreach.wall.now()
        await ledger.worker_seen(self.worker_id, self.started_at, wall)
        live = await ledger.live_workers(wall, self.outreach.delivery.sending.worker_seen_within)
        self.outreach.share.workers = max(1, live)
        WORKERS_LIVE.set(self.outreach.share.workers)

    async def run(self) -> None:
        ensure_topics(
            self.settings.kafka_bootstrap_servers,
            own_topics(self.settings, isinstance(self.clock, WatermarkClock)),
        )
        await self.outreach.start()
        await self.producer.start()
        await self.consumer.start()
        for records in self.records:
            await records.start()
        await self.ops.start()
        self.started_at = self.outreach.wall.now()
        log.info(
            "started",
            clock=self.settings.outreach_clock,
            http_port=self.ops.port,
            providers={c: type(s).__name__ for c, s in self.outreach.senders.items()},
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        runs = [self.consumer.run(), *(records.run() for records in self.records)]
        tasks = [asyncio.create_task(run) for run in runs]
        tasks += [asyncio.create_task(every(self._stop, *job)) for job in self._jobs()]
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("task_died", error=repr(task.exception()))
        self._stop.set()
        await self.consumer.stop()
        for records in self.records:
            await records.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.ops.stop()
        await self.producer.stop()
        await self.outreach.stop()
        log.info("stopped")

    def _jobs(self) -> list[tuple[float, Callable[[], Awaitable[Any]], str]]:
        """What the worker does besides consuming: (every how many seconds, what, name)."""
        settings, outreach, cache = self.settings, self.outreach, self.outreach.template_cache
        # On the event clock the consumer's loop sends what is due, in order with its
        # records; the scheduler then only sends what a pause held, after a resume.
        scheduler = self._send_held if isinstance(self.clock, WatermarkClock) else self._send_due
        return [
            (settings.scheduler_interval_s, scheduler, "scheduler"),
            (0.2, self.relay.publish, "relay"),
            (1.0, self._seen, "seen"),
            # Personal data leaves settled rows after the retention, and after an erasure.
            (600.0, self._scrub, "scrub"),
            # Replies kept but not finished (Kafka away, a crash), once they settled.
            (settings.reply_sweep_s, outreach.conversations.sweep_settled, "replies"),
            # Published templates stay fresh even while nothing is rendered, so a publish
            # in the studio is served within OUTREACH_TEMPLATE_REFRESH_S.
            (cache.refresh_s, cache.refresh, "template_refresh"),
            # The kill switch: every worker reads it every OUTREACH_CONTROLS_REFRESH_S.
            (settings.controls_refresh_s, outreach.controls_watcher.refresh, "controls_refresh"),
            (settings.ledger_metrics_s, outreach.export_gauges, "gauges"),
            # Rows whose holder died or stalled, and sends in doubt: taken over, the
            # provider asked.
            (settings.in_doubt_check_s, lambda: outreach.delivery.sweep(self.clock.now()), "sweep"),
        ]


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    settings.configure_tracing(SERVICE)
    worker = OutreachWorker(settings, bootstrap(settings))
    asyncio.run(worker.run())


__all__ = ["OutreachWorker", "main", "web"]
