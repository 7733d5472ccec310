"""Benchmark: how fast orders_watcher gets a flood of unusable input onto its dead-letter
topic, on the real local broker.

    python -m bench.watcher_deadletters [--count 5000] [--kafka-port 29394] [--timeout 300]

Two floods, each into a fresh watcher on fresh topics:
- malformed: `--count` records that are not JSON, published at once; timed from the
  first record sent until all their dead letters are on `deadletter.orders_watcher`.
- orphans: `--count` shipments of orders that never come, read by the watcher (held),
  then orders a day later on every partition, so that the event clock passes every
  hold; timed from those orders until all the orphans' dead letters are on the topic.
A bad record must cost about what a good one does: a producer bug that breaks every
record, or a shop replaying shipments without their orders, must not throttle the
watcher (before dead letters joined the batch's outputs: ~150 a second).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bench.corpus import INPUTS, base_story
from bench.harness import (
    BenchError,
    Consumer,
    Load,
    cpu_probe_ms,
    exit_on_sigterm,
    load_average,
    local_broker,
)
from bench.watcher_throughput import stage_consumer
from deploy.kafka.local_kafka import cache_dir

TOPIC = "deadletter.orders_watcher"


@dataclass(frozen=True)
class Raw:
    topic: str
    key: bytes
    value: bytes


def _event(template: bytes, event_id: str, order_id: str, moment: datetime) -> bytes:
    event = orjson.loads(template)
    event.update(id=event_id, subject=order_id, time=moment.isoformat())
    event["data"]["order_id"] = order_id
    return orjson.dumps(event)


class _Count:
    """Records on a (one-partition) topic so far, read by one client for the whole wait."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.reader = KafkaConsumer(bootstrap_servers=bootstrap.split(","))
        self.tp = TopicPartition(topic, 0)

    def __call__(self) -> int:
        return int(self.reader.end_offsets([self.tp]).get(self.tp) or 0)


def _wait(what: str, done: Callable[[], bool], timeout: float, consumer: Consumer) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        consumer.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def flood(kind: str, bootstrap: str, workdir: Path, count: int, timeout: float) -> float:
    """Seconds until `count` dead letters of the `kind` flood are on the broker."""
    prefix = f"benchdl{int(time.time())}{kind}."
    load = Load(bootstrap, prefix, INPUTS)
    consumer = stage_consumer("watcher", bootstrap, prefix, workdir / kind)
    topic = prefix + TOPIC
    try:
        consumer.wait_ready(120, "the watcher to start")
        story = base_story(cache_dir() / "bench")
        shipment = next(r for r in story if b'"shipment.created"' in r.value)
        placed = next(r for r in story if b'"order.placed"' in r.value)
        start = datetime.fromtimestamp(shipment.time, UTC)
        if kind == "malformed":
            records = [
                Raw("commerce.shipments", f"ord-x-{i}".encode(), b'{"specversion": "1.0", "id')
                for i in range(count)
            ]
            began = time.monotonic()
            load.backlog(records)
        else:
            orphans = [
                Raw(
                    "commerce.shipments",
                    f"ord-x-{i}".encode(),
                    _event(shipment.value, f"x-{i}", f"ord-x-{i}", start + timedelta(seconds=i)),
                )
                for i in range(count)
            ]
            load.backlog(orphans)
            _wait("the orphans to be read", lambda: consumer.progress() >= count, timeout, consumer)
            later = start + timedelta(seconds=count, days=1)
            pushers = [
                Raw(
                    "commerce.orders",
                    f"ord-y-{n}".encode(),
                    _event(placed.value, f"y-{n}", f"ord-y-{n}", later),
                )
                for n in range(16)  # keys on every partition
            ]
            began = time.monotonic()
            load.backlog(pushers)
        on_topic = _Count(bootstrap, topic)
        try:
            _wait(f"{count} dead letters", lambda: on_topic() >= count, timeout, consumer)
        finally:
            on_topic.reader.close()
        return time.monotonic() - began
    finally:
        consumer.stop()
        load.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--kafka-port", type=int, default=29394)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    exit_on_sigterm()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="outreach-bench-dl-"))
    print(
        f"machine: {os.cpu_count()} cores, load average {load_average()}, "
        f"cpu probe {cpu_probe_ms():.0f} ms",
        flush=True,
    )
    bootstrap, broker = local_broker("BENCH_KAFKA_BOOTSTRAP", args.kafka_port)
    try:
        for kind in ("malformed", "orphans"):
            seconds = flood(kind, bootstrap, workdir, args.count, args.timeout)
            print(
                f"  {kind}: {args.count} dead letters on the broker in {seconds:.1f}s "
                f"({args.count / seconds:.0f} a second)",
                flush=True,
            )
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
