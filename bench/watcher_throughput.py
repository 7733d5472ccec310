"""Benchmark: how fast orders_watcher drains a backlog on the real local broker, side by
side with (a) a bare faust pass-through agent and (c) a hand-written aiokafka consumer
applying the same rules to in-memory state (the Python ceiling on this machine).

Closed-loop drain rate: N simulated events are published first, then each consumer reads
them all; events/s = N / time from first to last record handled. (An open-loop
"sustainable rate" measurement is still to do — see docs/performance.md.)

    python -m bench.watcher_throughput [--events 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.publisher import Publisher  # noqa: E402
from simulator.shop import Config, Shop  # noqa: E402

INPUTS = ("commerce.orders", "commerce.shipments", "commerce.returns")


def publish(bootstrap: str, prefix: str, count: int) -> int:
    emissions = [
        e
        for e in Shop(
            Config(
                seed=99,
                customers=2000,
                orders_per_hour=600,
                duration=timedelta(days=30),
                max_events=count * 2,
            )
        ).events()
        if e.topic in INPUTS
    ][:count]
    publisher = Publisher(bootstrap, prefix)
    publisher.ensure_topics()
    publisher.run(emissions, speed=0, report_every_s=3600)
    publisher.close()
    return len(emissions)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consumed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(m)
        for m in re.findall(
            r"^outreach_events_consumed_total\{[^}]*\} ([0-9.e+]+)", text, re.MULTILINE
        )
    )


def run_watcher(bootstrap: str, prefix: str, total: int, timeout: float) -> float:
    port = free_port()
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        OUTREACH_TOPIC_PREFIX=prefix,
        OUTREACH_CLOCK="event",
        OUTREACH_DATA_DIR=tempfile.mkdtemp(),
        ORDERS_WATCHER_HTTP_PORT=str(port),
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.orders_watcher"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return _measure(lambda: consumed(port), total, timeout, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _measure(
    progress: Callable[[], float],
    total: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> float:
    deadline = time.monotonic() + timeout
    start = None
    last = 0.0
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the consumer exited with {proc.returncode}")
        done = progress()
        if done > 0 and start is None:
            start, first = time.monotonic(), done
        if done >= total:
            elapsed = time.monotonic() - start if start else 0
            return (done - first) / elapsed if elapsed > 0 else float("nan")
        last = done
        time.sleep(0.2)
    raise RuntimeError(f"did not finish within {timeout}s ({last}/{total})")


BARE = """
import faust, os, sys
from yarl import URL
from prometheus_client import Counter, start_http_server
prefix = os.environ["PREFIX"]
app = faust.App(prefix + "bare", broker=URL("kafka://" + os.environ["BOOTSTRAP"]),
                store="memory://", web_enabled=False, key_serializer="raw",
                value_serializer="raw", consumer_auto_offset_reset="earliest")
topic = app.topic(*[prefix + t for t in ("commerce.orders", "commerce.shipments",
                                          "commerce.returns")], value_serializer="raw")
seen = Counter("outreach_events_consumed_total", "x")
@app.task
async def serve():
    start_http_server(int(os.environ["PORT"]), addr="127.0.0.1")
@app.agent(topic)
async def passthrough(stream):
    async for _ in stream:
        seen.inc()
sys.argv = ["bare", "worker", "-l", "warn"]
app.main()
"""


def run_bare(bootstrap: str, prefix: str, total: int, timeout: float) -> float:
    port = free_port()
    env = dict(os.environ, BOOTSTRAP=bootstrap, PREFIX=prefix, PORT=str(port), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE],
        env=env,
        cwd=tempfile.mkdtemp(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return _measure(lambda: consumed(port), total, timeout, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def run_ceiling(bootstrap: str, prefix: str, total: int) -> float:
    """The same domain (facts + rules) on plain aiokafka with dict state, no changelog."""
    from aiokafka import AIOKafkaConsumer

    from common.envelope import CloudEvent
    from common.kafka import InputMessage
    from common.topics import Topics
    from services.orders_watcher.domain.rules import DetectionConfig
    from services.orders_watcher.handlers import OrdersWatcher

    watcher = OrdersWatcher(DetectionConfig(), Topics(prefix))
    states: dict[str, Any] = {}
    consumer = AIOKafkaConsumer(
        *[prefix + t for t in INPUTS],
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    done = 0
    start = None
    try:
        while done < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for r in records:
                    start = start or time.monotonic()
                    event = CloudEvent.from_bytes(r.value)
                    msg = InputMessage(r.topic, r.partition, r.offset, r.key, r.value)
                    order_id = event.data["order_id"]
                    outcome = watcher.handle_event(states.get(order_id), msg, event, event.time)
                    states[order_id] = outcome.state
                    done += 1
    finally:
        await consumer.stop()
    return done / (time.monotonic() - start) if start else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    from deploy.kafka.local_kafka import LocalKafka

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalKafka(port=0).start()
        bootstrap = broker.bootstrap
    try:
        stamp = str(int(time.time()))
        results: dict[str, float] = {}
        for name in ("bare", "watcher", "ceiling"):
            prefix = f"bench{stamp}{name}."
            total = publish(bootstrap, prefix, args.events)
            if name == "bare":
                results[name] = run_bare(bootstrap, prefix, total, args.timeout)
            elif name == "watcher":
                results[name] = run_watcher(bootstrap, prefix, total, args.timeout)
            else:
                results[name] = asyncio.run(run_ceiling(bootstrap, prefix, total))
            print(f"{name:8s} {results[name]:9.0f} events/s", flush=True)
        bare = results["bare"]
        print(f"\norders_watcher drain rate, {args.events} events, {os.cpu_count()} cores:")
        for name, label in (
            ("bare", "(a) bare faust pass-through agent"),
            ("watcher", "orders_watcher (faust, tables, changelogs)"),
            ("ceiling", "(c) aiokafka + same rules, dict state"),
        ):
            print(f"  {label:45s} {results[name]:8.0f} ev/s  {results[name] / bare:5.2f}x (a)")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
