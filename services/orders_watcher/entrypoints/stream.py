"""The faust worker of orders_watcher: wires the runtime (runtime.py, built by
bootstrap.py) to the app's batches, timer and rebalances, and runs it."""

from __future__ import annotations

import faust

from common.batched_input import deliver_in_batches
from common.clock import wall_now
from common.logs import get_logger
from common.streaming import ensure_stream_topics, prepare_process, run_worker, wire_runtime
from common.topics import TopicSpec
from services.orders_watcher.bootstrap import bootstrap
from services.orders_watcher.config import Settings
from services.orders_watcher.runtime import SERVICE, WatcherRuntime

log = get_logger(__name__)


def wire(runtime: WatcherRuntime) -> None:
    """The app hands the runtime its input a fetched batch at a time (and, idle, every
    `tick_interval_s`), ticks it, tells it of rebalances and serves its ops HTTP."""
    app, settings = runtime.app, runtime.settings
    deliver_in_batches(
        app,
        runtime.source,
        runtime.on_batch,
        max_records=settings.batch_max,
        idle_s=settings.tick_interval_s,
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_s=settings.fetch_max_wait_ms / 1000,
    )

    @app.timer(interval=settings.tick_interval_s)
    async def tick_timer() -> None:
        runtime.on_timer()

    wire_runtime(runtime)


def ensure_own_topics(settings: Settings, app: faust.App) -> None:
    t = settings.topics
    specs = [
        TopicSpec(name, settings.topic_partitions)
        for name in (t.orders, t.shipments, t.returns, t.incidents)
    ]
    ensure_stream_topics(settings, SERVICE, app, specs)


def main() -> None:
    settings = Settings()
    prepare_process(SERVICE, settings)
    runtime = bootstrap(settings)
    wire(runtime)
    ensure_own_topics(settings, runtime.app)
    log.info(
        "starting",
        clock=settings.outreach_clock,
        store=settings.store,
        started_at=wall_now().isoformat(),
    )
    run_worker(runtime.app, SERVICE, settings)


__all__ = ["main", "wire"]
