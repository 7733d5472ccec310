"""Reading Kafka topics to their end as it is when asked (kafka-python, synchronous):
what outreachctl reads of the dead letters and a rehearsal of the retained input.

Up to the end offsets taken at the start, not "until the topic falls silent": the answer
is whole and comes at once, and a record written meanwhile is not waited for."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any


def records_to_end(
    consumer: Any, partitions: Sequence[Any], timeout_s: float, poll_ms: int = 500
) -> Iterator[Any]:
    """Every record of `partitions` (assigned to `consumer` here), from their beginning
    up to their end offsets as they are now; within each poll partition by partition,
    each in offset order. Raises TimeoutError if the end is not reached within
    `timeout_s`: a part is never taken for the whole."""
    partitions = list(partitions)
    consumer.assign(partitions)
    ends = consumer.end_offsets(partitions)
    consumer.seek_to_beginning(*partitions)
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        if time.monotonic() > deadline:
            topics = sorted({tp.topic for tp in partitions})
            raise TimeoutError(f"{', '.join(topics)} not read to the end in {timeout_s:g} s")
        polled = consumer.poll(timeout_ms=poll_ms)
        for tp in partitions:
            yield from (r for r in polled.get(tp, ()) if r.offset < ends[tp])


__all__ = ["records_to_end"]
