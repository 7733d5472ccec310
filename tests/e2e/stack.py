"""Runs the four services as separate processes against a real broker, for e2e tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from common.envelope import CloudEvent
from common.kafka_security import client_options
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "preferences": "services.preferences",
    "orders_watcher": "services.orders_watcher",
    "risk_detector": "services.risk_detector",
    "outreach": "services.outreach",
    "studio": "services.outreach.studio",
}
PIPELINE = ("preferences", "orders_watcher", "risk_detector", "outreach")
READ_TOKEN = "stack-preferences-read-token"
WRITE_TOKEN = "stack-preferences-write-token"


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        self.ports.setdefault("grpc", free_port())
        self.ports.setdefault("studio_ops", free_port())
        for name in MODULES:
            self.ports.setdefault(name, free_port())
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            OUTREACH_TOPIC_PREFIX=self.prefix,
            OUTREACH_CLOCK="event",
            OUTREACH_DATA_DIR=str(self.data_dir),
            LOG_LEVEL="INFO",
            PYTHONPATH=str(ROOT),
            PREFERENCES_GRPC_PORT=str(self.ports["grpc"]),
            PREFERENCES_GRPC_TARGET=f"127.0.0.1:{self.ports['grpc']}",
            PREFERENCES_HTTP_PORT=str(self.ports["preferences"]),
            # preferences' RPCs take tokens (as in production): outreach reads with one.
            PREFERENCES_READ_TOKEN=READ_TOKEN,
            PREFERENCES_WRITE_TOKEN=WRITE_TOKEN,
            OUTREACH_PREFERENCES_TOKEN=READ_TOKEN,
            ORDERS_WATCHER_HTTP_PORT=str(self.ports["orders_watcher"]),
            RISK_DETECTOR_HTTP_PORT=str(self.ports["risk_detector"]),
            OUTREACH_HTTP_PORT=str(self.ports["outreach"]),
            OUTREACH_STUDIO_PORT=str(self.ports["studio"]),
            OUTREACH_STUDIO_OPS_PORT=str(self.ports["studio_ops"]),
            OUTREACH_PUBLIC_BASE_URL=f"http://127.0.0.1:{self.ports['outreach']}",
        )
        env.update(self.extra_env)
        return env

    def start(self, *names: str) -> None:
        env = self.env()
        subprocess.run(
            [sys.executable, "-m", "common.cli", "topics", "create"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        for name in names or PIPELINE:
            self.launch(name)
        for name in names or PIPELINE:
            wait_for(partial(self.ready, name), timeout=90, message=f"{name} ready")

    def launch(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        """Start one service (again), with extra environment for this process only.
        `outreach-2`, `outreach-3`, ... are further outreach workers (same group), each
        on its own HTTP port."""
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        module = MODULES[name.split("-")[0]]
        if name.startswith("outreach-"):
            port = self.ports.setdefault(name, free_port())
            overrides.setdefault("OUTREACH_HTTP_PORT", str(port))
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module],
            env=self.env() | overrides,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[name]

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def logs(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def ready(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(
                f"{name} exited with {proc.returncode}:\n{self.logs(name)[-4000:]}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def get_json(self, name: str, path: str) -> Any:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.ports[name]}{path}", timeout=5
        ) as response:
            return json.loads(response.read())

    def metrics(self, name: str) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=5
        ) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Shop:
    """Publishes input events with kafka-python, as an upstream system would."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from kafka import KafkaProducer

        self.prefix = prefix
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","), acks="all", **client_options()
        )
        self.stamp: int | None = None

    def publish(
        self, topic: str, key: str, event: CloudEvent | bytes, *, stamp_ms: int | None = None
    ) -> None:
        """Publish at once, stamped with the event's time (raw bytes: with the last
        stamp; or `stamp_ms`), as a shop's system publishing each event when it happens
        would."""
        if isinstance(event, bytes):
            value = event
        else:
            value = event.to_bytes()
            self.stamp = int(event.time.timestamp() * 1000)
        if stamp_ms is not None:
            self.stamp = stamp_ms
        sent = self.producer.send(
            self.prefix + topic,
            key=key.encode(),
            value=value,
            headers=[("content-type", b"application/cloudevents+json")],
            timestamp_ms=self.stamp,
        )
        self.producer.flush()
        sent.get(timeout=0)  # a refused record fails here, not silently after flush()

    def close(self) -> None:
        self.producer.close()


class TopicReader:
    """Reads a topic from the beginning, accumulating what arrived so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap.split(","),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=500,
            **client_options(),
        )
        self.records: list[Any] = []

    def poll(self) -> list[Any]:
        for records in self.consumer.poll(timeout_ms=500).values():
            self.records.extend(records)
        return self.records

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.poll()]

    def close(self) -> None:
        self.consumer.close()
