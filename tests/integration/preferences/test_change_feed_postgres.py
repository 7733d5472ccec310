"""WatchChanges across processes: on PostgreSQL every preferences process hears every
committed change (NOTIFY in the write's transaction, LISTEN in each process), and a
subscriber whose feed lost the database is told so instead of missing changes."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from services.preferences.adapters.change_feed import (
    NOTIFY_CHANNEL,
    FeedInterrupted,
    PostgresChangeFeed,
)
from services.preferences.adapters.store import PreferencesStore, migrate, postgres_dsn
from services.preferences.bootstrap import build_grpc_server
from services.preferences.config import Settings
from services.preferences.domain.model import ConsentRecord
from services.preferences.handlers import Preferences
from tests.integration.preferences.events import T0, customer_upserted

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url(postgres_database_url):
    migrate(postgres_database_url)
    return postgres_database_url


@pytest.fixture
async def two_processes(pg_url):
    """Two preferences 'processes' on one database: each its own store and feed."""
    made = []
    for _ in range(2):
        store = PreferencesStore(pg_url, "salt")
        feed = PostgresChangeFeed(postgres_dsn(pg_url), check_s=0.5, retry_s=0.1)
        await feed.start()
        made.append((store, feed, Preferences(store, feed)))
    yield [prefs for _, _, prefs in made]
    for store, feed, _ in made:
        await feed.stop()
        await store.close()


async def next_change(subscription, within=5.0):
    return await asyncio.wait_for(anext(subscription), within)


async def test_every_process_hears_every_committed_change(two_processes):
    a, b = two_processes
    on_a, on_b = a.feed.subscribe(), b.feed.subscribe()

    await a.on_customer_event(customer_upserted("c-1"))  # written by process A
    for subscription in (on_a, on_b):
        change = await next_change(subscription)
        assert (change.customer_id, change.version, change.kind) == ("c-1", 1, "upserted")

    record = ConsentRecord("email", "marketing", True, "web_form", T0, "form#7")
    await b.record_consent("c-1", record)  # written by process B
    for subscription in (on_a, on_b):
        change = await next_change(subscription)
        assert (change.customer_id, change.version, change.kind) == ("c-1", 2, "consent")

    await a.erase("c-1")
    for subscription in (on_a, on_b):
        assert (await next_change(subscription)).kind == "erased"


async def test_a_failed_write_announces_nothing(two_processes, monkeypatch):
    a, b = two_processes
    on_b = b.feed.subscribe()
    await a.on_customer_event(customer_upserted("c-1"))
    # Heard first, so that what comes next is only what follows it (a subscription made
    # after the upsert could still hear its NOTIFY, which reaches B's LISTEN a moment
    # after the commit: a loaded machine showed that).
    change = await next_change(on_b)
    assert (change.version, change.kind) == (1, "upserted")

    original = a.store._announce

    async def announce_then_fail(session, change):
        await original(session, change)
        raise RuntimeError("the transaction fails after its NOTIFY")

    monkeypatch.setattr(a.store, "_announce", announce_then_fail)
    record = ConsentRecord("email", "marketing", True, "web_form", T0, "form#7")
    with pytest.raises(RuntimeError):
        await a.record_consent("c-1", record)
    monkeypatch.undo()
    assert len((await a.get("c-1")).consents) == 1  # rolled back: the upsert's only
    await a.update("c-1", quiet_start="22:00")
    change = await next_change(on_b)  # ...and unheard: the next change is the first heard
    assert (change.version, change.kind) == (2, "preferences")


async def test_losing_the_database_ends_subscriptions_then_the_feed_comes_back(
    two_processes, pg_url
):
    a, _ = two_processes
    feed = a.feed
    subscription = feed.subscribe()
    waiting = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)

    # an operator (or a failover) ends the listening session
    conn = await asyncpg.connect(postgres_dsn(pg_url))
    try:
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = $1",
            f'LISTEN "{NOTIFY_CHANNEL}"',
        )
    finally:
        await conn.close()
    assert ended >= 1
    with pytest.raises(FeedInterrupted, match="lost its database connection"):
        await asyncio.wait_for(waiting, 10)

    deadline = asyncio.get_running_loop().time() + 10
    while not feed.live:
        assert asyncio.get_running_loop().time() < deadline, "the feed did not reconnect"
        await asyncio.sleep(0.05)
    again = feed.subscribe()
    await a.on_customer_event(customer_upserted("c-9"))
    assert (await next_change(again)).customer_id == "c-9"


async def test_watch_changes_ends_unavailable_when_the_feed_is_lost(two_processes, tmp_path):
    a, b = two_processes
    server, _, port = build_grpc_server(
        Settings(grpc_port=0, data_dir=tmp_path, allow_anonymous=True), a
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.PreferencesServiceStub(channel)
        watch = stub.WatchChanges(pb.WatchChangesRequest())
        await asyncio.wait_for(watch.initial_metadata(), 5)  # subscribed from here on
        await b.on_customer_event(customer_upserted("c-2"))  # another process's write
        change = await asyncio.wait_for(watch.read(), 5)
        assert (change.customer_id, change.kind) == ("c-2", "upserted")

        a.feed._end_all("the change feed lost its database connection")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(watch.read(), 5)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE

        await a.feed.stop()  # not live: a new subscription is refused, not left deaf
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(stub.WatchChanges(pb.WatchChangesRequest()).read(), 5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
        await server.stop(0)
