"""The storm store's contract: the tables (`StormStore`, on SQLite and on PostgreSQL) and
the in-memory store the rehearsal's replay counts with (`InMemoryStormStore`) are fed
the same incidents — bursts that make storms, trickles that do not, late and repeated
incidents, several scopes — and the same operators' decisions, erasures and retention,
and must give the same answer to every call."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.memory_storms import InMemoryStormStore
from services.outreach.adapters.storms import StormsPort, StormStore
from services.outreach.domain.storms import Action, Storm, StormPolicy

T0 = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)
POLICY = StormPolicy(
    rate=5, window=timedelta(minutes=10), approval_size=12, quiet=timedelta(minutes=30)
)
SCOPES = ("carrier:dhl", "hub:leipzig", "region:de-10", "dispatch")


@pytest.fixture(params=["sqlite", "postgresql"])
async def tables(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StormsPort]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'storms.db'}"
    else:
        url = str(request.getfixturevalue("postgres_database_url"))
    engine = create_engine(url)
    await create_schema(engine)
    try:
        yield StormStore(session_factory(engine), POLICY)
    finally:
        await engine.dispose()


def incidents(seed: int, n: int = 400) -> list[dict[str, Any]]:
    """A day of incidents: bursts (a hub down) and trickles, some late, some again."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    at = T0
    for i in range(n):
        burst = (i // 40) % 3 == 0  # 40 in a burst, then 80 at a trickle
        at += timedelta(seconds=rnd.uniform(5, 40) if burst else rnd.uniform(120, 900))
        when = at - timedelta(minutes=rnd.uniform(0, 50)) if rnd.random() < 0.1 else at
        out.append(dict(scope=rnd.choice(SCOPES[:2]) if burst else rnd.choice(SCOPES),
                        incident_id=f"inc-{i}", customer_id=f"c-{rnd.randrange(60)}",
                        order_id=f"o-{i}", kind="delivery_late", at=when))  # fmt: skip
        if rnd.random() < 0.05:  # the same incident again (a redelivery)
            out.append(dict(out[-1]))
    return out


def seen(storm: Storm | None) -> tuple[Any, ...] | None:
    if storm is None:
        return None
    return (storm.storm_id, storm.scope, storm.started_at, storm.last_at, storm.size,
            storm.state, dict(storm.notes), storm.decided_by, storm.decided_at,
            storm.formed_at, storm.awaiting_since)  # fmt: skip


async def answers(store: StormsPort, stream: list[dict[str, Any]]) -> list[Any]:
    """Every answer the store gives to the stream and to what operators and the retention
    do afterwards."""
    said: list[Any] = [seen(await store.record(**incident)) for incident in stream]
    ids = [i["incident_id"] for i in stream]
    said.append({k: seen(v) for k, v in (await store.storms_of(ids)).items()})
    storms = await store.recent(limit=1000)
    said.append([seen(s) for s in storms])
    said.append(sorted(await store.holding()))
    said.append(await store.awaiting_since())
    said.append(await store.open_by_state(T0 + timedelta(hours=30)))
    assert isinstance(store, StormStore | InMemoryStormStore)
    for storm, action in zip(storms, (Action.APPROVE, Action.HOLD, Action.CANCEL), strict=False):
        acted = await store.act(storm.storm_id, action, "ops", T0 + timedelta(days=1),
                                notes={"en": "A hub is down."}, reason="seen")  # fmt: skip
        said.append(seen(acted))
        said.append([(e.action, e.actor, e.before, e.after, dict(e.notes), e.reason)
                     for e in await store.log(storm.storm_id)])  # fmt: skip
        said.append([(m.incident_id, m.at, m.customer_id) for m in await store.members(acted)])
    said.append(await store.forget_customer("c-7"))
    said.append(await store.forget_before(T0 + timedelta(days=2), timedelta(hours=20)))
    said.append({k: seen(v) for k, v in (await store.storms_of(ids)).items()})
    said.append([seen(s) for s in await store.recent(limit=1000)])
    return said


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_tables_and_the_memory_answer_alike(tables: StormsPort, seed: int) -> None:
    stream = incidents(seed)
    expected = await answers(tables, stream)
    assert sum(1 for a in expected[: len(stream)] if a is not None) > 50  # storms were made
    assert await answers(InMemoryStormStore(POLICY), stream) == expected
