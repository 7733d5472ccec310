"""The replay in one process (replay/engine.py) on a simulated shop's days: it decides
the same twice, counts the input the services would dead-letter instead of stopping,
and `outreachctl rehearse --archive` needs no broker at all (what it decides alike with
the four services on the broker is tests/e2e/test_rehearsal.py's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from common.envelope import CloudEvent
from replay.engine import Engine
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.outcomes import OutcomeEvent
from services.outreach.adapters.remedies import RemedyGrant, RemedyStore
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


LEARNING = {
    "currency": "EUR",
    "rules": [
        {
            "intents": ["apology"],
            "offer": ["amount:10", "percent:10"],
            "learn": {"window_days": 1, "exploration": 0.0},
        }
    ],
}


async def published(url: str, policy: dict) -> None:
    """The remedy policy as the rehearsal copies live's into its database."""
    engine = create_engine(url)
    await create_schema(engine)
    remedies = RemedyStore(session_factory(engine))
    version = await remedies.save_draft(policy, "admin-1", "learning", START)
    await remedies.publish(version, "admin-1", START)
    await engine.dispose()


async def test_a_learning_remedy_rule_learns_from_the_replayed_orders(tmp_path):
    """With a rule that learns, outreach's outcome recorder is replayed too: each order
    is kept at its moment, and grants after the first day rank their remedies by the
    customers who ordered again within a day of an earlier grant. Without it they would
    see every earlier grant fail (no order known)."""
    records = days_of_a_shop()
    engine = Engine(Namespace("127.0.0.1:9", tmp_path).env(), partitions=4)
    await published(engine.database_url, LEARNING)
    await engine.run(records, lambda _: None)

    db = create_engine(engine.database_url)
    async with session_factory(db)() as s:
        orders = (
            await s.execute(select(func.count()).where(OutcomeEvent.kind == "order"))
        ).scalar_one()
        whys = list((await s.execute(select(RemedyGrant.why))).scalars())
    await db.dispose()
    events = [CloudEvent.from_bytes(r.value) for r in records if b'"order.placed"' in r.value]
    placed = {e.id for e in events if e.type == "order.placed"}  # the shop sends some twice
    assert orders == len(placed) > 100
    evidence = [re.findall(r"(\d+)/(\d+) ordered again", why) for why in whys]
    assert len(whys) > 10
    assert any(int(again) > 0 for found in evidence for again, _ in found), whys


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
