"""What the outreach worker reads and the topics it needs: its consumer (wired here, run
by entrypoints/worker.py) and the topics made if missing."""

from __future__ import annotations

from typing import Any

from common.aligned import ActOnDue, AlignedInput
from common.aligned_consumer import AlignedConsumerLoop, ConsumerLanes
from common.clock import Clock, WatermarkClock
from common.flowing import FlowingConsumerLoop
from common.kafka import ConsumerLoop, MessageProcessor
from common.ops_http import Heartbeat
from common.topics import WATERMARKS_RETENTION_MS, TopicSpec
from services.outreach.config import Settings

SERVICE = "outreach"


def input_consumer(
    settings: Settings,
    clock: Clock,
    processor: MessageProcessor,
    heartbeat: Heartbeat,
    send_due_until: ActOnDue,
) -> ConsumerLoop:
    """The requests, incidents, customer records and agents' outcomes of hand-offs, in
    order per partition; on the
    event clock in arrival order across partitions (common/aligned.py), the messages
    scheduled before each record sent first (`send_due_until`)."""
    topics = settings.topics
    inputs = [topics.requests, topics.incidents, topics.customers, topics.resolutions]
    options: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.topic_prefix}{SERVICE}",
        topics=inputs,
        processor=processor,
        heartbeat=heartbeat,
        client_id=f"{SERVICE}-worker",
        session_timeout_s=settings.kafka_session_timeout_s,
        concurrency=settings.concurrency,
    )
    if not isinstance(clock, WatermarkClock):
        return FlowingConsumerLoop(**options)  # lanes kept fed (common/flowing.py)
    lanes = ConsumerLanes()
    aligned = AlignedInput(
        clock,
        lanes,
        lanes.fetching,
        topics=inputs,
        idle_s=settings.watermark_idle_s,
        max_buffered=settings.watermark_max_buffered,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        partitions=settings.topic_partitions,
        feeds={topics.requests: "risk_detector", topics.incidents: "orders_watcher"},
        # Contact data comes from preferences, which reads the shop's customers.
        waits_for=["preferences"],
        marks_topic=topics.watermarks,
    )
    return AlignedConsumerLoop(aligned=aligned, lanes=lanes, act_on_due=send_due_until, **options)


def own_topics(settings: Settings, event_clock: bool) -> list[TopicSpec]:
    """The topics the worker reads and writes, made if missing."""
    topics, partitions = settings.topics, settings.topic_partitions
    specs = [
        TopicSpec(t, partitions)
        for t in (
            topics.requests,
            topics.incidents,
            topics.messages,
            topics.optouts,
            topics.replies,
            topics.actions,
            topics.handoffs,
            topics.resolutions,
            # The shop's, read for the outcomes of decisions (entrypoints/records.py).
            topics.orders,
            topics.returns,
            topics.feedback,
        )
    ]
    specs.append(TopicSpec(topics.customers, partitions, compacted=True))
    specs.append(TopicSpec(topics.deadletter(SERVICE), 1))
    if event_clock:
        specs.append(TopicSpec(topics.watermarks, 1, retention_ms=WATERMARKS_RETENTION_MS))
    return specs


__all__ = ["SERVICE", "input_consumer", "own_topics"]
