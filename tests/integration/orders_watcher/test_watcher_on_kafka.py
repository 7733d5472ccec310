"""orders_watcher as a real process on the real broker: replay determinism in event-clock
mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.publisher import Publisher
from simulator.shop import Config, Shop
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[3]


def record_stream() -> list:
    return list(
        Shop(
            Config(
                seed=11,
                customers=40,
                orders_per_hour=8,
                duration=timedelta(days=2),
                duplicate_rate=0.05,
            )
        ).events()
    )


def publish(bootstrap: str, prefix: str, emissions: list) -> None:
    publisher = Publisher(bootstrap, prefix)
    publisher.ensure_topics()
    publisher.run(emissions, speed=0, report_every_s=3600)
    publisher.close()


class Watchers:
    def __init__(self, bootstrap: str, prefix: str, tmp: Path) -> None:
        self.bootstrap, self.prefix, self.tmp = bootstrap, prefix, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            OUTREACH_TOPIC_PREFIX=self.prefix,
            OUTREACH_CLOCK="event",
            OUTREACH_DATA_DIR=str(self.tmp / name),
            PYTHONPATH=str(ROOT),
            ORDERS_WATCHER_HTTP_PORT=str(free_port()),
            OUTREACH_KAFKA_SESSION_TIMEOUT_S="8",
        )
        env.update(overrides)
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.orders_watcher"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def incidents(
    bootstrap: str,
    topic: str,
    quiet_s: float = 6.0,
    timeout: float = 150,
    enough: Callable[[list[dict]], bool] = bool,
) -> list[dict]:
    """Everything on the incidents topic once `enough` of it is there (by default: any)
    and nothing new came for `quiet_s` seconds, or at `timeout`."""
    return read_topic(bootstrap, topic, quiet_s, timeout, enough, decode=orjson.loads)


def read_topic(
    bootstrap: str,
    topic: str,
    quiet_s: float,
    timeout: float,
    enough: Callable[[list[Any]], bool],
    decode: Callable[[bytes], Any] | None = None,
) -> list[Any]:
    """The topic's records from the start (their values decoded by `decode`, else the
    records themselves), once `enough` of them are there and nothing new came for
    `quiet_s` seconds, or at `timeout`."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    found: list[Any] = []
    last_new = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            fresh = [decode(r.value) if decode else r for rs in batch.values() for r in rs]
            if fresh:
                found += fresh
                last_new = time.monotonic()
            elif enough(found) and time.monotonic() - last_new > quiet_s:
                break
    finally:
        consumer.close()
    return found


@pytest.fixture
def recorded() -> list:
    return record_stream()


def summary(events: list) -> set[tuple[str, str]]:
    return {(e["id"], e["type"]) for e in events}


def run_once(bootstrap: str, prefix: str, tmp: Path, emissions: list) -> list:
    watchers = Watchers(bootstrap, prefix, tmp)
    try:
        watchers.start("w1")
        publish(bootstrap, prefix, emissions)
        return incidents(bootstrap, prefix + "outreach.incidents")
    finally:
        watchers.stop()


def test_replaying_the_same_stream_in_event_clock_mode_gives_identical_incidents(
    kafka_bootstrap, tmp_path, recorded
):
    first = run_once(kafka_bootstrap, f"r1{os.getpid()}.", tmp_path / "a", recorded)
    second = run_once(kafka_bootstrap, f"r2{os.getpid()}.", tmp_path / "b", recorded)
    assert len(first) > 20, "the recorded week should raise incidents"
    opened = {e["data"]["incident_id"] for e in first if e["type"] == "incident.opened"}
    assert opened == {e["data"]["incident_id"] for e in second if e["type"] == "incident.opened"}
    assert summary(first) == summary(second)
