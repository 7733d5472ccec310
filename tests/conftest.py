"""Shared fixtures: one real Kafka broker per test session, unique topics per test.

If KAFKA_BOOTSTRAP_SERVERS names a reachable cluster, the tests use it; otherwise the
project's own script starts a single-node KRaft broker on a free port of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Test shops stamp their records with the story's moments (months back): the topics the
# tests create keep every record (common.admin.ensure_topics), as `make run` and the
# benchmarks do. Set here so that every process the tests start inherits it.
os.environ.setdefault("OUTREACH_TOPIC_RETENTION_MS", "-1")


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def spans() -> Iterator[Any]:
    """OpenTelemetry on for one test, every finished span kept in memory (the exporter)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from common import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's broker, started by the project's script with its TLS, mutual TLS and
    SASL_SSL listeners beside PLAINTEXT; None when KAFKA_BOOTSTRAP_SERVERS names one
    already running (then only its plaintext address is known)."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing and _reachable(existing):
        yield None
        return
    from deploy.kafka.local_kafka import LocalKafka

    broker = LocalKafka(port=0, data_dir=str(tmp_path_factory.mktemp("kafka")), secure=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Any) -> str:
    """The broker's PLAINTEXT address (the e2e suite runs over SASL_SSL: tests/e2e)."""
    return kafka_broker.bootstrap if kafka_broker else os.environ["KAFKA_BOOTSTRAP_SERVERS"]


@contextlib.contextmanager
def kafka_client_env(env: dict[str, str]) -> Iterator[None]:
    """This process's Kafka clients (and the services it starts) use `env`'s KAFKA_*
    settings (common/kafka_security.py) within the block."""
    from common import kafka_security

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    kafka_security.current.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        kafka_security.current.cache_clear()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL for the session: OUTREACH_TEST_POSTGRES_URL, or our own server."""
    existing = os.environ.get("OUTREACH_TEST_POSTGRES_URL")
    if existing:
        yield existing
        return
    from deploy.postgres.local_postgres import LocalPostgres

    # Its own directory under /tmp: pytest's tmp dirs are private to root, and the server
    # runs as the postgres user.
    server = LocalPostgres()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded default (SQLite) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_database_url"))


@pytest.fixture
def postgres_database_url(postgres_server_url: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def topic_prefix() -> str:
    """Every test gets its own topics (and consumer groups) on the shared broker."""
    return f"t{uuid.uuid4().hex[:10]}."


def events_consumed(port: int, outcomes: tuple[str, ...] | None = None) -> int:
    """Input events a service has consumed, from its /metrics
    (`outreach_events_consumed_total` over every topic; only these `outcomes` if given;
    0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return 0
    wanted = None if outcomes is None else tuple(f'outcome="{o}"' for o in outcomes)
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("outreach_events_consumed_total{")
            and (wanted is None or any(w in line for w in wanted))
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> object:
    """Poll `condition` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM one process we started, SIGKILL it if it is not gone within `grace_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


from tests.doubles.fixtures import sendgrid_double, twilio_double  # noqa: E402

__all__ = ["free_port", "sendgrid_double", "stop_process", "twilio_double", "wait_for"]
