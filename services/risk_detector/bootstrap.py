"""The one place that wires risk_detector: the faust app, its four tables, its own
topics, the producer, the clock and the schedule of rhythm checks."""

from __future__ import annotations

from typing import Any

import faust

from common.clock import Clock, WallClock, WatermarkClock
from common.deadlines import DeadlineSchedule
from common.kafka import ProducerPort
from common.streaming import FaustProducer, InputProgress, create_app
from services.risk_detector.config import Settings, customer_topics
from services.risk_detector.runtime import SERVICE, RiskPorts, RiskRuntime, forget_topic


def bootstrap(
    settings: Settings, *, clock: Clock | None = None, producer: ProducerPort | None = None
) -> RiskRuntime:
    """risk_detector, wired. `clock`: by default OUTREACH_CLOCK's (on the event clock, one
    the runner moves as it releases records in arrival order); `producer`: by default
    the faust app's."""
    clock = clock or (
        WatermarkClock() if settings.outreach_clock == "event" else settings.make_clock()
    )
    event_clock = isinstance(clock, WatermarkClock)
    # On the event clock a rebalance waits for the batch in hand (event_clock.py).
    app = create_app(SERVICE, settings, store=settings.store, stream_wait_empty=event_clock)
    facts_name = f"{app.conf.id}-customer-facts"
    ticks_name = f"{app.conf.id}-ticks"
    topics = settings.topics
    rhythm_deadlines = _table(app, settings, "rhythm_deadlines")
    # On the wall clock, silence is judged only once the input is read: the order facts
    # of this worker's order partitions and the customer partition's own.
    progress = InputProgress(
        app,
        {facts_name},
        upstream=frozenset({topics.orders, topics.returns}),
        also_admit=customer_topics(topics),
        service=SERVICE,
    )
    schedule = DeadlineSchedule(
        app,
        rhythm_deadlines,
        None if event_clock else ticks_name,
        gate=progress if isinstance(clock, WallClock) else None,
    )
    ports = RiskPorts(
        app=app,
        clock=clock,
        producer=producer or FaustProducer(app),
        order_customers=_table(app, settings, "order_customers"),
        profiles=_table(app, settings, "profiles"),
        rhythm_deadlines=rhythm_deadlines,
        spend_quantiles=_table(app, settings, "spend_quantiles"),
        progress=progress,
        schedule=schedule,
        facts_name=facts_name,
        ticks_name=ticks_name,
        forget_name=forget_topic(app),
    )
    return RiskRuntime(settings, ports)


def _table(app: faust.App, settings: Settings, name: str) -> Any:
    """JSON values keyed by a string, one partition per input partition, the RocksDB
    sizes from the settings."""
    schema: faust.Schema[Any, Any] = faust.Schema(
        key_type=str, key_serializer="raw", value_serializer="json"
    )
    return app.Table(
        name,
        default=None,
        schema=schema,
        partitions=settings.topic_partitions,
        options=settings.table_options(),
    )


__all__ = ["bootstrap"]
