"""The faust worker of orders_watcher: thin glue between Kafka, the tables and handlers.

Tables: `orders` (order_id → state JSON) and `order_deadlines` (order_id → next moment
and partition), both with changelogs. The deadline index in memory is rebuilt from
`order_deadlines` after each rebalance. Faust only lets a table change inside stream
iteration (the changelog partition comes from the current event), so the passing of
time reaches the agent as *tick* records on `<group>-ticks`, one partition per input
partition: the timer (wall clock) or the event watermark (event clock) sends a tick
to a partition whose earliest deadline is due, and the agent handles it like an event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust

from common.admin import ensure_topics
from common.clock import Clock, WallClock
from common.deadlines import DeadlineSchedule
from common.envelope import CloudEvent
from common.kafka import DeadLetters, InputMessage, MessageProcessor
from common.logs import configure_logging, get_logger
from common.metrics import EVENTS_CONSUMED
from common.ops_http import Heartbeat, OpsServer
from common.streaming import (
    FaustProducer,
    InputProgress,
    PartitionHolds,
    caught_up,
    changelog_specs,
    create_app,
    input_message,
    raw_topic,
    run_worker,
)
from common.topics import TopicSpec
from services.orders_watcher.config import Settings
from services.orders_watcher.domain.model import OrderState
from services.orders_watcher.handlers import OrdersWatcher, Outcome

SERVICE = "orders_watcher"
log = get_logger(__name__)


class WatcherRuntime:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or settings.make_clock()
        self.topics = settings.topics
        self.handler = OrdersWatcher(settings.detection(), self.topics)
        self.app = create_app(SERVICE, settings, store=settings.store)
        self.ticks_name = f"{self.app.conf.id}-ticks"
        self.inputs = [self.topics.orders, self.topics.shipments, self.topics.returns]
        self.source = raw_topic(self.app, *self.inputs, self.ticks_name)
        schema: faust.Schema[Any, Any] = faust.Schema(
            key_type=str, key_serializer="raw", value_serializer="json"
        )
        self.orders = self.app.Table(
            "orders", default=None, schema=schema, partitions=settings.topic_partitions
        )
        self.deadlines = self.app.Table(
            "order_deadlines", default=None, schema=schema, partitions=settings.topic_partitions
        )
        # On the wall clock, a partition's deadlines wait until its backlog is read.
        self.wall_clock = isinstance(self.clock, WallClock)
        self.progress = InputProgress(self.app, set(self.inputs))
        self.schedule = DeadlineSchedule(
            self.app,
            self.deadlines,
            self.ticks_name,
            gate=self.progress if self.wall_clock else None,
        )
        self.assigned = False
        self.heartbeat = Heartbeat()
        self.producer = FaustProducer(self.app)
        self.deadletters = DeadLetters(self.producer, self.topics.deadletter(SERVICE), SERVICE)
        self.processor = MessageProcessor(SERVICE, self._on_event, self.deadletters, self.clock)
        self.holds = PartitionHolds(self.app, self.clock, set(self.inputs))
        self.ops = OpsServer(
            settings.http_host,
            settings.http_port,
            self.heartbeat,
            checks={
                "kafka_assignment": lambda: self.assigned,
                "tables_recovered": lambda: self.schedule.ready,
            },
        )
        self._wire()

    # --- faust wiring ------------------------------------------------------------------

    def _wire(self) -> None:
        app = self.app

        @app.agent(self.source, name=f"{SERVICE}.watch")
        async def watch(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                self.heartbeat.beat()
                msg = input_message(event)
                if msg.topic == self.ticks_name:
                    await self._on_tick(msg.partition)
                    continue
                await self.holds.ready()
                await self.processor.process(msg, caught_up=caught_up(app, msg))
                self.progress.handled(msg)
                await self._request_ticks()

        @app.timer(interval=self.settings.tick_interval_s)
        async def tick_timer() -> None:
            self.heartbeat.beat()
            self.schedule.check_recovered()
            await self._request_ticks()

        @app.task
        async def start_ops() -> None:
            await self.ops.start()
            log.info("ops_http_started", port=self.ops.port)

        async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
            self.assigned = True
            self.schedule.on_assigned()
            self.holds.on_assigned(assigned)
            self.progress.on_assigned(assigned)

        async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
            self.schedule.on_revoked()
            self.holds.on_revoked()
            self.progress.on_revoked()

        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    async def _request_ticks(self) -> None:
        await self.schedule.request_ticks(self.clock.now().timestamp())

    # --- handlers ----------------------------------------------------------------------

    async def _on_event(self, msg: InputMessage, event: CloudEvent) -> None:
        order_id = self.handler.order_id_of(msg, event)
        state = self._load(order_id)
        now = self.clock.now()
        if self.wall_clock:
            # A record read late (a backlog after a rebalance or a restart) is judged at
            # its own partition's time (its successors may still be unread), not at a
            # wall-clock moment they passed.
            self.progress.observe(msg, event.time)
            now = self.progress.time_of(msg.partition, now, at_least=event.time)
        outcome = self.handler.handle_event(state, msg, event, now)
        if outcome.duplicate:
            EVENTS_CONSUMED.labels(SERVICE, msg.topic, "duplicate").inc()
            return
        await self._apply(order_id, msg.partition, outcome)

    async def _on_tick(self, partition: int) -> None:
        now = self.clock.now()
        for order_id in self.schedule.due(partition, now.timestamp()):
            state = self._load(order_id)
            if state is None:
                self.schedule.schedule(order_id, partition, None)
                continue
            await self._apply(order_id, partition, self.handler.handle_tick(state, now))

    def _load(self, order_id: str) -> OrderState | None:
        raw = self.orders.get(order_id)
        return OrderState.model_validate(raw) if raw else None

    async def _apply(self, order_id: str, partition: int, outcome: Outcome) -> None:
        await self.producer.emit(SERVICE, outcome.records)
        for held, reason in outcome.dead_letters:
            original = InputMessage(
                topic=held.topic,
                partition=held.partition,
                offset=held.offset,
                key=held.key.encode() if held.key else None,
                value=held.value.encode("latin-1"),
            )
            await self.deadletters.publish(original, reason, "orphan_expired")
        if outcome.state is None:
            self.orders.pop(order_id, None)
            self.schedule.schedule(order_id, partition, None)
            return
        self.orders[order_id] = outcome.state.model_dump(mode="json")
        at = outcome.deadline.timestamp() if outcome.deadline else None
        self.schedule.schedule(order_id, partition, at)


def ensure_own_topics(settings: Settings, ticks_name: str, app: faust.App) -> None:
    specs = [
        TopicSpec(t, settings.topic_partitions)
        for t in (
            settings.topics.orders,
            settings.topics.shipments,
            settings.topics.returns,
            settings.topics.incidents,
        )
    ]
    specs.append(TopicSpec(ticks_name, settings.topic_partitions, retention_ms=3600_000))
    specs.append(
        TopicSpec(settings.topics.deadletter(SERVICE), 1, retention_ms=30 * 24 * 3600 * 1000)
    )
    specs += changelog_specs(app, settings.topic_partitions)
    ensure_topics(settings.kafka_bootstrap_servers, specs)


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    settings.configure_tracing(SERVICE)
    runtime = WatcherRuntime(settings)
    ensure_own_topics(settings, runtime.ticks_name, runtime.app)
    log.info(
        "starting",
        clock=settings.outreach_clock,
        store=settings.store,
        started_at=datetime.now(UTC).isoformat(),
    )
    run_worker(runtime.app, SERVICE, settings)


__all__ = ["WatcherRuntime", "main"]
