"""The one place that wires orders_watcher: the faust app, its `orders` table, the
producer, the clock, the deadline schedule and, on the event clock, the aligned input
and its marks. Tests pass fakes for the table, the producer and the clock."""

from __future__ import annotations

from typing import Any

import faust

from common.aligned import AlignedInput, faust_fetching, faust_mark_sender
from common.clock import Clock, WallClock, WatermarkClock
from common.deadlines import DeadlineSchedule
from common.kafka import ProducerPort
from common.marks import MarkPublisher, instance_name
from common.streaming import FaustProducer, InputProgress, create_app, raw_topic
from common.tables import PartitionedTable
from services.orders_watcher.adapters import order_table
from services.orders_watcher.adapters.order_table import OrderTable
from services.orders_watcher.config import Settings
from services.orders_watcher.runtime import SERVICE, WatcherPorts, WatcherRuntime


def bootstrap(
    settings: Settings,
    *,
    clock: Clock | None = None,
    table: OrderTable | None = None,
    producer: ProducerPort | None = None,
) -> WatcherRuntime:
    """The watcher, wired. `clock`: by default OUTREACH_CLOCK's (on the event clock, one
    the aligned input moves); `table` and `producer`: by default the faust app's."""
    clock = clock or (
        WatermarkClock() if settings.outreach_clock == "event" else settings.make_clock()
    )
    # A rebalance waits for the batch in hand (its records are unacked until its states
    # are written): no batch straddles a revocation. Outputs and changelog records are
    # not awaited one by one: a few ms of linger lets the producer send them in fewer,
    # larger requests.
    app = create_app(
        SERVICE,
        settings,
        store=settings.store,
        stream_wait_empty=True,
        producer_linger=settings.producer_linger_s,
    )
    topics = settings.topics
    inputs = [topics.orders, topics.shipments, topics.returns]
    orders = _orders_table(app, settings)
    progress = InputProgress(app, set(inputs), service=SERVICE)
    schedule = DeadlineSchedule(
        app,
        orders,
        None,
        gate=progress if isinstance(clock, WallClock) else None,
        entry=order_table.deadline_of,
    )
    schedule.export_metrics(SERVICE, lambda: clock.now().timestamp())
    aligned, marks = None, None
    if isinstance(clock, WatermarkClock):
        aligned, marks = _event_clock_input(app, settings, clock, progress, inputs)
    ports = WatcherPorts(
        app=app,
        inputs=inputs,
        source=raw_topic(app, *inputs),
        orders=orders,
        table=table or PartitionedTable(app, orders),
        producer=producer or FaustProducer(app),
        clock=clock,
        progress=progress,
        schedule=schedule,
        aligned=aligned,
        marks=marks,
    )
    return WatcherRuntime(settings, ports)


def _event_clock_input(
    app: faust.App,
    settings: Settings,
    clock: WatermarkClock,
    progress: InputProgress,
    inputs: list[str],
) -> tuple[AlignedInput, MarkPublisher]:
    """On the event clock: the inputs released in arrival order across partitions
    (common/aligned.py), and the marks that say how far the incidents are complete
    (common/marks.py)."""
    aligned = AlignedInput(
        clock,
        progress,
        faust_fetching(app),
        topics=inputs,
        idle_s=settings.watermark_idle_s,
        max_buffered=settings.watermark_max_buffered,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        partitions=settings.topic_partitions,
    )
    marks = MarkPublisher(
        SERVICE,
        instance_name(SERVICE),
        {topic: settings.topic_partitions for topic in inputs},
        settings.topics.watermarks,
        faust_mark_sender(app),
    )
    return aligned, marks


def _orders_table(app: faust.App, settings: Settings) -> Any:
    """order_id → the order's state and next deadline (adapters/order_table.py). Values
    are bytes we encode and decode ourselves (value_type=bytes: faust stores and
    changelogs them as they are)."""
    return app.Table(
        "orders",
        default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        value_type=bytes,
        partitions=settings.topic_partitions,
        options=settings.table_options(),
    )


__all__ = ["bootstrap"]
