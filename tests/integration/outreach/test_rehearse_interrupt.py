"""An interrupted rehearsal cleans up after itself, however it was started.

A shell starts a background job with SIGINT ignored, and so do test runners' workers;
Python keeps an inherited SIG_IGN, so a rehearsal started from one would sit through
the studio's interrupt (SIGINT) and be killed 25 s later, its services orphaned and its
topics left on the broker. Here `python -m replay --through-services` (the studio's
command) is started with SIGINT ignored, interrupted once its namespace is up, and
judged from outside: it exits within seconds, no process of its namespace is left, and
none of its topics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from services.outreach.rehearsal import archive
from simulator.shop import Config, Shop
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[3]
START = datetime(2026, 3, 2, tzinfo=UTC)


def topics(bootstrap: str, prefix: str) -> list[str]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","))
    try:
        return sorted(t for t in consumer.topics() if t.startswith(prefix))
    finally:
        consumer.close()


def processes_using(path: Path, besides: int = 0) -> list[int]:
    """Processes (other than this one and `besides`) whose environment or command line
    names `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), besides):
            continue
        try:
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if str(path).encode() in seen:
            found.append(int(entry.name))
    return found


def test_an_interrupted_rehearsal_stops_its_services_and_deletes_its_topics(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    shop = Shop(Config(seed=5, customers=60, orders_per_hour=2, start=START,
                       duration=timedelta(days=2)))  # fmt: skip
    kept = tmp_path / "days.jsonl.gz"
    archive.write(kept, [
        archive.Record(e.topic, e.key.encode(), e.value(), int(e.at.timestamp() * 1000))
        for e in shop.events()
    ])  # fmt: skip
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env |= {"PYTHONPATH": str(ROOT), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "OUTREACH_DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "WARNING"}  # fmt: skip
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        # Started as a shell's background job (or a test runner's worker) starts it:
        # with SIGINT ignored.
        proc = subprocess.Popen(
            ["sh", "-c", 'trap "" INT; exec "$@"', "sh",
             sys.executable, "-m", "replay", "--through-services", "--archive", str(kept),
             "--no-live", "--from", START.isoformat(),
             "--until", (START + timedelta(days=9)).isoformat(),
             "--work-dir", str(work), "--output", "json"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:

        def namespace_up() -> str | None:
            found = re.search(r"namespace (\S+) up after", stderr.read_text(errors="replace"))
            assert proc.poll() is None, f"exited early: {stderr.read_text()[-2000:]}"
            return found.group(1) if found else None

        prefix = str(wait_for(namespace_up, 120, message="the rehearsal's namespace up"))
        assert topics(kafka_bootstrap, prefix) and processes_using(work, besides=proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Interrupted, not finished (unheard, it would run to the end and exit 0).
    assert proc.returncode == 130, stderr.read_text()[-2000:]
    assert "the rehearsal was interrupted" in stderr.read_text()
    assert processes_using(work) == []
    wait_for(lambda: not topics(kafka_bootstrap, prefix), 15, message="its topics deleted")
