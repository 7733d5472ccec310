"""When a pipeline under a topic prefix is at rest: none of its topics grew for a
while, and each of its consumer groups has committed everything there is to read."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any


def group_lag(admin: Any, prefix: str, ends: dict[Any, int]) -> dict[str, int]:
    """Records the consumer groups under `prefix` have not committed yet, against
    `ends` (every partition's end offset), per group and topic that lags: on every
    partition of a topic a group has committed on (one it has not committed on yet
    lags by all it holds)."""
    lag: Counter[str] = Counter()
    for listed in admin.list_groups():
        group = listed["group_id"] if isinstance(listed, dict) else listed[0]
        if not group.startswith(prefix):
            continue
        committed = {(tp.topic, tp.partition): meta.offset
                     for tp, meta in admin.list_group_offsets(group)[group].items()}  # fmt: skip
        topics = {topic for topic, _ in committed}
        for tp, end in ends.items():
            behind = end - committed.get((tp.topic, tp.partition), 0)
            if tp.topic in topics and behind > 0:
                lag[f"{group} {tp.topic}"] += behind
    return dict(lag)


def wait_at_rest(
    bootstrap: str, prefix: str, quiet_s: float, timeout_s: float, skip: Sequence[str] = ()
) -> None:
    """Returns once the pipeline under `prefix` is at rest; TimeoutError if it is not
    within `timeout_s`. Topics ending in one of `skip` do not count as work (the
    services' marks keep coming while they are idle)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    from common.kafka_security import client_options

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), group_id=None, **client_options()
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), **client_options())
    deadline = time.monotonic() + timeout_s
    last: dict[Any, int] = {}
    still_since = time.monotonic()
    lagging: dict[str, int] = {}
    try:
        while time.monotonic() < deadline:
            topics = [
                t for t in consumer.topics() if t.startswith(prefix) and not t.endswith(tuple(skip))
            ]
            tps = [
                TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
            ]
            ends = consumer.end_offsets(tps)
            if ends != last:
                last, still_since = ends, time.monotonic()
            elif time.monotonic() - still_since > quiet_s:
                lagging = group_lag(admin, prefix, ends)
                if not lagging:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"the rehearsal did not come to rest: lagging {lagging}")
    finally:
        consumer.close()
        admin.close()


__all__ = ["group_lag", "wait_at_rest"]
