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
from replay import watcher_process
from replay.engine import Engine
from replay.stages import WatcherStage
from replay.timeline import DEADLINE, Timeline
from replay.watcher_process import RemoteWatcher
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


async def decided(
    records: list[archive.Record], work: Path, *, watcher_process: bool = False
) -> tuple[list[tuple], Engine]:
    engine = Engine(
        Namespace("127.0.0.1:9", work).env(), partitions=4, watcher_process=watcher_process
    )
    done = await engine.run(records, lambda _: None)
    rows = sorted(
        (d.customer_id, d.message_kind, d.status, d.reason or "", d.channel or "", d.decided_at)
        for d in done.decisions
    )
    return rows, engine


async def test_the_same_days_are_decided_alike_and_bad_input_is_counted(tmp_path):
    """Twice, and with orders_watcher in a process of its own the second time: the same
    decisions at the same moments, the same input refused."""
    records = days_of_a_shop(malformed=0.02)
    first, engine = await decided(records, tmp_path / "one")
    again, apart = await decided(records, tmp_path / "two", watcher_process=True)
    assert first == again
    assert engine.dead == apart.dead
    assert engine.decided == apart.decided
    assert isinstance(apart.watcher, RemoteWatcher) and apart.watcher.child_seconds > 0
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


async def test_a_failing_watcher_handler_is_counted_alike_in_its_own_process(tmp_path, monkeypatch):
    from services.orders_watcher.handlers import OrdersWatcher

    handle = OrdersWatcher.handle_event

    def failing(self, state, msg, event, now):
        if event.data.get("order_id", "").endswith("7"):
            raise RuntimeError("a bug of ours")
        return handle(self, state, msg, event, now)

    monkeypatch.setattr(OrdersWatcher, "handle_event", failing)
    records = days_of_a_shop()
    here, engine = await decided(records, tmp_path / "one")
    apart_rows, apart = await decided(records, tmp_path / "two", watcher_process=True)
    assert engine.dead["orders_watcher", "handler_error"] > 10
    assert apart.dead == engine.dead and apart_rows == here


class Traced(Timeline):
    """The replay's timeline, noting every entry it gives out."""

    trace: list[tuple]

    def __iter__(self):
        for at, kind, seq, whose, what in super().__iter__():
            if kind == DEADLINE:
                name = "watcher" if isinstance(whose, WatcherStage | RemoteWatcher) else "risk"
                self.trace.append((at, kind, seq, name, what))
            else:
                self.trace.append((at, kind, seq, whose, what[1].id))
            yield at, kind, seq, whose, what


async def traced(records, work: Path, watcher_process: bool) -> list[tuple]:
    engine = Engine(
        Namespace("127.0.0.1:9", work).env(), partitions=4, watcher_process=watcher_process
    )
    engine.timeline.__class__ = Traced
    engine.timeline.trace = []
    await engine.run(records, lambda _: None)
    return engine.timeline.trace


@pytest.mark.parametrize("chunk", [1, 3])
async def test_the_watcher_apart_leaves_every_entry_of_the_timeline_where_it_was(
    tmp_path, monkeypatch, chunk
):
    """Entry by entry — each record (by event id) and each deadline, with the sequence
    number that breaks its ties — the timeline is the same with the watcher in its own
    process, however its steps are chunked."""
    records = days_of_a_shop(malformed=0.01)
    here = await traced(records, tmp_path / "here", watcher_process=False)
    monkeypatch.setattr(watcher_process, "CHUNK", chunk)
    apart = await traced(records, tmp_path / "apart", watcher_process=True)
    assert len(here) > 3_000
    assert apart == here


async def test_a_watcher_process_that_dies_stops_the_replay(tmp_path, monkeypatch):
    """Not counted as the handler's failures, nor decided without it."""
    handle = WatcherStage.on_record
    calls = iter(range(300))

    def dying(self, at, msg, event):
        if next(calls, None) is None:  # its 301st record
            os._exit(3)
        handle(self, at, msg, event)

    monkeypatch.setattr(WatcherStage, "on_record", dying)
    with pytest.raises(watcher_process.WatcherLost):
        await decided(days_of_a_shop(), tmp_path, watcher_process=True)
