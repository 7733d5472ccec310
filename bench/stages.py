"""The comparison consumers of the benchmark, each run as its own process:

    python -m bench.stages bare|naive|handwritten

Environment: BOOTSTRAP (host:port), PREFIX (topic prefix), PORT (metrics port, 127.0.0.1),
DATA_DIR. Each counts the input records it has handled in
`outreach_events_consumed_total{service,topic,outcome="processed"}` like the services do,
so the benchmark reads progress the same way from all of them.

- bare: a faust agent on the same input topics that only counts (faust's own ceiling).
- naive: a faust agent that decodes each event and rewrites the order's entry of a
  RocksDB table with a changelog for every event (no batching, no coalescing).
- handwritten: plain aiokafka, the watcher's own rules (OrdersWatcher, EventClock,
  DeadlineIndex) on in-memory state, incidents produced without waiting per record,
  offsets committed per fetched batch; no table, no changelog (the Python ceiling).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRebalanceListener

from bench.corpus import INPUTS

# Small enough that the loop yields to aiokafka's heartbeat task often even when the
# rules run slowly on a loaded machine.
BATCH = 500


def _settings() -> Any:
    from common.settings import ServiceSettings

    return ServiceSettings(
        kafka_bootstrap_servers=os.environ["BOOTSTRAP"],
        topic_prefix=os.environ["PREFIX"],
        data_dir=Path(os.environ["DATA_DIR"]),
        log_level="WARNING",
        log_format="console",
    )


def _serve_metrics() -> None:
    from prometheus_client import start_http_server

    start_http_server(int(os.environ["PORT"]), addr="127.0.0.1")


def run_faust(stage: str) -> None:
    import faust
    import orjson

    from common.admin import ensure_topics
    from common.metrics import EVENTS_CONSUMED
    from common.streaming import changelog_specs, create_app, raw_topic, run_worker

    settings = _settings()
    prefix = settings.topic_prefix
    store = "memory://" if stage == "bare" else "rocksdb://"
    app = create_app(f"bench_{stage}", settings, store=store)
    topic = raw_topic(app, *[prefix + t for t in INPUTS])
    table = None
    if stage == "naive":
        schema: faust.Schema[Any, Any] = faust.Schema(
            key_type=str, key_serializer="raw", value_serializer="json"
        )
        table = app.Table(
            "orders", default=None, schema=schema, partitions=settings.topic_partitions
        )
        ensure_topics(settings.kafka_bootstrap_servers, changelog_specs(app, 4))

    @app.agent(topic, name=f"bench_{stage}")
    async def agent(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            message = event.message
            if table is not None:
                data = orjson.loads(message.value)
                order_id = data["data"]["order_id"]
                state = table.get(order_id) or {"events": [], "last": None}
                state["events"].append(data["id"])
                state["last"] = data["type"]
                table[order_id] = state
            EVENTS_CONSUMED.labels(stage, message.topic, "processed").inc()

    @app.task
    async def metrics() -> None:
        _serve_metrics()

    run_worker(app, f"bench_{stage}", settings)


class _HoldLagging(ConsumerRebalanceListener):  # type: ignore[misc]
    """As the watcher's PartitionHolds: a partition assigned with records left to read
    holds the event clock back until they are read, so that the clock does not run ahead
    on the partitions fetched first while the others' records (earlier in event time)
    wait unread, and the rules judge those late. Without it the consumer opened, and
    then resolved, up to ten times the incidents of a lap at the start of a backlog."""

    def __init__(self, consumer: Any, clock: Any) -> None:
        self.consumer = consumer
        self.clock = clock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.clock.release((tp.topic, tp.partition))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        tps = list(assigned)
        if not tps:
            return
        ends = await self.consumer.end_offsets(tps)
        beginnings = await self.consumer.beginning_offsets(tps)
        for tp in tps:
            committed = await self.consumer.committed(tp)
            start = beginnings[tp] if committed is None else committed
            if start < ends[tp]:
                self.clock.hold((tp.topic, tp.partition))
            else:
                self.clock.release((tp.topic, tp.partition))


async def run_handwritten() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from common.admin import ensure_topics
    from common.clock import EventClock
    from common.deadlines import DeadlineIndex
    from common.envelope import CloudEvent, InvalidEvent
    from common.kafka import InputMessage, Outgoing
    from common.logs import configure_logging
    from common.metrics import EVENTS_CONSUMED
    from common.topics import all_topics
    from services.orders_watcher.domain.model import OrderState
    from services.orders_watcher.domain.rules import DetectionConfig
    from services.orders_watcher.handlers import OrdersWatcher, Outcome

    settings = _settings()
    # as the faust stages (create_app): warnings only, so that the rules' log line per
    # incident (structlog's default renderer when unconfigured) is not part of the cost
    configure_logging("bench_handwritten", settings.log_level, settings.log_format)
    prefix = settings.topic_prefix
    # What the rules emit to (incidents, requests, dead letters) must exist up front:
    # a send to a missing topic waits for metadata instead of failing.
    ensure_topics(settings.kafka_bootstrap_servers, all_topics(prefix, settings.topic_partitions))
    watcher = OrdersWatcher(DetectionConfig(), settings.topics)
    clock = EventClock()
    index = DeadlineIndex()
    states: dict[str, OrderState] = {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{prefix}bench_handwritten",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=BATCH,
        session_timeout_ms=30_000,
        heartbeat_interval_ms=3_000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    _serve_metrics()
    await producer.start()
    await consumer.start()
    consumer.subscribe([prefix + t for t in INPUTS], listener=_HoldLagging(consumer, clock))
    pending: list[Outgoing] = []

    def apply(order_id: str, partition: int, outcome: Outcome) -> None:
        for record in outcome.records:
            pending.append(record)
        if outcome.state is None:
            states.pop(order_id, None)
            index.set(order_id, partition, None)
            return
        states[order_id] = outcome.state
        at = outcome.deadline.timestamp() if outcome.deadline else None
        index.set(order_id, partition, at)

    async def send(record: Outgoing) -> Any:
        return await producer.send(
            record.topic,
            record.event.to_bytes(),
            key=record.key.encode(),
            headers=record.headers(),
        )

    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            for tp, records in batches.items():
                highwater = consumer.highwater(tp)
                for r in records:
                    msg = InputMessage(r.topic, r.partition, r.offset, r.key, r.value)
                    outcome_label = "processed"
                    try:
                        event = CloudEvent.from_bytes(r.value)
                        caught_up = highwater is None or r.offset + 1 >= highwater
                        clock.observe((r.topic, r.partition), event.time, caught_up=caught_up)
                        order_id = watcher.order_id_of(msg, event)
                        outcome = watcher.handle_event(
                            states.get(order_id), msg, event, clock.now()
                        )
                        if not outcome.duplicate:
                            apply(order_id, r.partition, outcome)
                    except InvalidEvent:
                        outcome_label = "dead_lettered"
                    EVENTS_CONSUMED.labels("handwritten", r.topic, outcome_label).inc()
                await asyncio.sleep(0)  # let the heartbeat and the producer run
            now = clock.now()
            for partition in index.partitions_due(now.timestamp()):
                for order_id in list(index.pop_due(partition, now.timestamp())):
                    state = states.get(order_id)
                    if state is not None:
                        apply(order_id, partition, watcher.handle_tick(state, now))
            if pending:
                # One send at a time (each only appends to a batch and returns a future),
                # then one wait for all acks: thousands of concurrent sends would all
                # wake up on every drained batch.
                delivered = [await send(record) for record in pending]
                pending.clear()
                await asyncio.gather(*delivered)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    from common.streaming import use_event_loop

    stage = sys.argv[1]
    use_event_loop(_settings().event_loop)  # the loop the services run on (OUTREACH_EVENT_LOOP)
    if stage in ("bare", "naive"):
        run_faust(stage)
    elif stage == "handwritten":
        asyncio.run(run_handwritten())
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    main()
