"""The replay in one process (replay/engine.py) on a simulated shop's days: it decides
the same twice, counts the input the services would dead-letter instead of stopping,
and `outreachctl rehearse --archive` needs no broker at all (what it decides alike with
the four services on the broker is tests/e2e/test_rehearsal.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from replay.engine import Engine
from services.outreach.rehearsal import archive
from services.outreach.rehearsal.namespace import Namespace
from simulator.shop import Config, Shop

ROOT = Path(__file__).resolve().parents[3]
START = datetime(2026, 3, 2, tzinfo=UTC)


def days_of_a_shop(malformed: float = 0.0) -> list[archive.Record]:
    shop = Shop(Config(seed=3, customers=150, orders_per_hour=3, start=START,
                       duration=timedelta(days=3), malformed_rate=malformed))  # fmt: skip
    return [
        archive.Record(e.topic, e.key.encode(), e.value(), int(e.at.timestamp() * 1000))
        for e in shop.events()
    ]


async def decided(records: list[archive.Record], work: Path) -> tuple[list[tuple], Engine]:
    engine = Engine(Namespace("127.0.0.1:9", work).env(), partitions=4)
    done = await engine.run(records, lambda _: None)
    rows = sorted(
        (d.customer_id, d.message_kind, d.status, d.reason or "", d.channel or "", d.decided_at)
        for d in done.decisions
    )
    return rows, engine


async def test_the_same_days_are_decided_alike_and_bad_input_is_counted(tmp_path):
    records = days_of_a_shop(malformed=0.02)
    first, engine = await decided(records, tmp_path / "one")
    again, _ = await decided(records, tmp_path / "two")
    assert first == again
    sent = [row for row in first if row[2] == "sent"]
    assert len(sent) >= 10 and {row[1] for row in sent} >= {"delivery_late"}
    assert sum(engine.dead.values()) > 0
    assert {service for service, _ in engine.dead} >= {"orders_watcher"}


def test_a_rehearsal_of_an_archive_needs_no_broker(tmp_path):
    kept = tmp_path / "week.jsonl.gz"
    archive.write(kept, days_of_a_shop())
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env |= {"PYTHONPATH": str(ROOT), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "OUTREACH_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "rehearse", "--archive", str(kept), "--no-live",
         "--from", START.isoformat(), "--until", (START + timedelta(days=9)).isoformat(),
         "--work-dir", str(tmp_path / "work"), "--output", "json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["customers_reached"] > 0 and found["messages"] >= found["customers_reached"]
    assert any(note.startswith("replayed in one process") for note in found["notes"])
    assert {s["message_kind"] for s in found["samples"]} >= {"delivery_late"}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
