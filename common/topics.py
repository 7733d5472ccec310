"""Every topic the system reads or writes, in one place (docs/events.md describes each).

`OUTREACH_TOPIC_PREFIX` (default empty) is prepended to every name, so that several
isolated pipelines can share one cluster (the test suite uses a prefix per test).
"""

from __future__ import annotations

from dataclasses import dataclass

ORDERS = "commerce.orders"
SHIPMENTS = "commerce.shipments"
RETURNS = "commerce.returns"
CUSTOMERS = "commerce.customers"
FEEDBACK = "commerce.feedback"

INCIDENTS = "outreach.incidents"
REQUESTS = "outreach.requests"
MESSAGES = "outreach.messages"
OPTOUTS = "outreach.optouts"
REPLIES = "outreach.replies"
ACTIONS = "outreach.actions"
HANDOFFS = "support.handoffs"
RESOLUTIONS = "support.resolutions"
# The event clock's watermarks between services (common/marks.py): one partition, made
# by the services that use it (on the wall clock no one does).
WATERMARKS = "outreach.watermarks"
WATERMARKS_RETENTION_MS = 3600 * 1000
#: Dead letters wait a month for an operator.
DEADLETTER_RETENTION_MS = 30 * 24 * 3600 * 1000

INPUT_TOPICS = (ORDERS, SHIPMENTS, RETURNS, CUSTOMERS, FEEDBACK)
INTERNAL_TOPICS = (INCIDENTS, REQUESTS, OPTOUTS)
OUTPUT_TOPICS = (MESSAGES, REPLIES, ACTIONS, HANDOFFS, RESOLUTIONS)
SERVICES = ("orders_watcher", "risk_detector", "outreach", "preferences")


def deadletter_topic(service: str) -> str:
    return f"deadletter.{service}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int = 7 * 24 * 3600 * 1000


# Compacted: only the latest record per key is kept. commerce.customers is keyed by the
# customer, so once `customer.erased` is a customer's latest record, compaction removes
# their earlier upserts — names, addresses, phone numbers — from the topic.
COMPACTED = frozenset({CUSTOMERS})


def all_topics(prefix: str = "", partitions: int = 4) -> list[TopicSpec]:
    """The topics `outreachctl topics create` makes (Strimzi KafkaTopics mirror this)."""
    specs = [
        TopicSpec(prefix + t, partitions, compacted=t in COMPACTED)
        for t in INPUT_TOPICS + INTERNAL_TOPICS
    ]
    specs += [TopicSpec(prefix + t, partitions) for t in OUTPUT_TOPICS]
    specs += [
        TopicSpec(prefix + deadletter_topic(s), 1, retention_ms=DEADLETTER_RETENTION_MS)
        for s in SERVICES
    ]
    return specs


class Topics:
    """Topic names with the configured prefix applied."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.orders = prefix + ORDERS
        self.shipments = prefix + SHIPMENTS
        self.returns = prefix + RETURNS
        self.customers = prefix + CUSTOMERS
        self.feedback = prefix + FEEDBACK
        self.incidents = prefix + INCIDENTS
        self.requests = prefix + REQUESTS
        self.messages = prefix + MESSAGES
        self.optouts = prefix + OPTOUTS
        self.replies = prefix + REPLIES
        self.actions = prefix + ACTIONS
        self.handoffs = prefix + HANDOFFS
        self.resolutions = prefix + RESOLUTIONS
        self.watermarks = prefix + WATERMARKS

    def deadletter(self, service: str) -> str:
        return self.prefix + deadletter_topic(service)

    def unprefixed(self, topic: str) -> str:
        return topic[len(self.prefix) :] if self.prefix and topic.startswith(self.prefix) else topic
