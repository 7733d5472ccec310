"""The faust worker of risk_detector: wires the runtime (runtime.py, built by
bootstrap.py) to the app — two agents and ticks on the wall clock, one batch runner on
the event clock (event_clock.py) — and runs it."""

from __future__ import annotations

from typing import Any

import faust

from common.batched_input import deliver_in_batches
from common.logs import get_logger
from common.streaming import (
    ensure_stream_topics,
    prepare_process,
    raw_topic,
    run_worker,
    wire_runtime,
)
from common.topics import TopicSpec
from services.risk_detector.bootstrap import bootstrap
from services.risk_detector.config import Settings, customer_topics
from services.risk_detector.runtime import SERVICE, RiskRuntime, forget_topic

log = get_logger(__name__)


def wire(runtime: RiskRuntime) -> None:
    app, settings = runtime.app, runtime.settings
    if runtime.runner is not None:
        # Short fetch rounds, as orders_watcher's: a request to the broker for end
        # offsets (common/aligned.py) waits behind a fetch in flight.
        deliver_in_batches(
            app,
            raw_topic(app, *sorted(runtime.runner.topics), runtime.forget_name),
            runtime.runner.on_batch,
            idle_s=settings.tick_interval_s,
            fetch_min_bytes=65_536,
            fetch_max_wait_s=0.02,
        )
    else:
        _wire_agents(runtime)

    @app.timer(interval=settings.tick_interval_s)
    async def tick_timer() -> None:
        await runtime.on_timer()

    wire_runtime(runtime)


def _wire_agents(runtime: RiskRuntime) -> None:
    """On the wall clock: two agents, `rekey` and `assess`, and ticks."""
    app, topics = runtime.app, runtime.topics
    order_keyed = raw_topic(app, topics.orders, topics.returns, runtime.forget_name)
    customer_keyed = raw_topic(
        app, *sorted(customer_topics(topics)), runtime.facts_name, runtime.ticks_name
    )

    @app.agent(order_keyed, name=f"{SERVICE}.rekey")
    async def rekey(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await runtime.rekey(event)

    @app.agent(customer_keyed, name=f"{SERVICE}.assess")
    async def assess(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await runtime.assess(event)


def ensure_own_topics(settings: Settings, facts_name: str, ticks_name: str, app: faust.App) -> None:
    t = settings.topics
    specs = [
        TopicSpec(name, settings.topic_partitions)
        for name in (
            t.orders,
            t.returns,
            t.incidents,
            t.feedback,
            t.resolutions,
            t.replies,
            t.customers,
            t.requests,
            t.handoffs,
            facts_name,
        )
    ]
    specs.append(TopicSpec(ticks_name, settings.topic_partitions, retention_ms=3600_000))
    specs.append(
        TopicSpec(forget_topic(app), settings.topic_partitions, retention_ms=7 * 24 * 3600_000)
    )
    ensure_stream_topics(settings, SERVICE, app, specs)


def main() -> None:
    settings = Settings()
    prepare_process(SERVICE, settings)
    runtime = bootstrap(settings)
    wire(runtime)
    ensure_own_topics(settings, runtime.facts_name, runtime.ticks_name, runtime.app)
    log.info("starting", clock=settings.outreach_clock, store=settings.store)
    run_worker(runtime.app, SERVICE, settings)


__all__ = ["main", "wire"]
