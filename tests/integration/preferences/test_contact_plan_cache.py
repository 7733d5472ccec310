"""outreach's contact-plan cache against a real preferences gRPC server (SQLite): a plan
is served from the cache only while preferences' change stream would have said it
changed."""

from __future__ import annotations

import asyncio

import pytest

from services.outreach.adapters.contact_plans import GrpcContactPlans
from services.preferences.adapters.change_feed import ChangeFeed
from services.preferences.adapters.store import PreferencesStore, migrate
from services.preferences.bootstrap import build_grpc_server
from services.preferences.config import Settings
from services.preferences.handlers import Preferences
from tests.integration.preferences.events import customer_upserted

pytestmark = pytest.mark.integration


async def until(condition, within=5.0, message="condition"):
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, message
        await asyncio.sleep(0.01)


@pytest.fixture
async def service(tmp_path):
    url = f"sqlite:///{tmp_path / 'prefs.db'}"
    await asyncio.to_thread(migrate, url)
    store = PreferencesStore(url, "salt")
    prefs = Preferences(store, ChangeFeed())
    for cid in ("c-1", "c-2"):
        await prefs.on_customer_event(customer_upserted(cid))
    settings = Settings(grpc_port=0, data_dir=tmp_path, read_token="r-token", write_token="w-token")
    server, _, port = build_grpc_server(settings, prefs)
    await server.start()
    plans = GrpcContactPlans(
        f"127.0.0.1:{port}", cache_ttl_s=300, max_entries=3, retry_s=0.05, token="r-token"
    )
    await plans.start()
    await until(lambda: plans.watching, message="the change stream never came up")
    yield prefs, plans
    await plans.stop()
    await server.stop(0)
    await store.close()


async def test_a_change_drops_the_customers_cached_plans(service):
    prefs, plans = service
    first = await plans.get("c-1", "service")
    assert first is not None and first.quiet_start.hour == 21
    await plans.get("c-1", "marketing")
    assert (plans.hits, plans.misses) == (0, 2)
    await plans.get("c-1", "service")
    assert (plans.hits, plans.misses) == (1, 2)

    await prefs.update("c-1", quiet_start="22:30")
    await until(lambda: not plans._cache, message="the change did not reach the cache")
    fresh = await plans.get("c-1", "service")
    assert fresh is not None and (fresh.quiet_start.hour, fresh.quiet_start.minute) == (22, 30)
    assert plans.misses == 3


async def test_a_plan_that_raced_a_change_is_not_cached(service, monkeypatch):
    prefs, plans = service
    inside, release = asyncio.Event(), asyncio.Event()
    original = prefs.plan

    async def slow_plan(customer_id, category):
        plan = await original(customer_id, category)  # read before the change...
        inside.set()
        await release.wait()
        return plan

    monkeypatch.setattr(prefs, "plan", slow_plan)
    call = asyncio.ensure_future(plans.get("c-1", "service"))
    await asyncio.wait_for(inside.wait(), 5)
    monkeypatch.undo()
    changes = plans._changes
    await prefs.update("c-1", quiet_start="23:00")  # ...committed while the reply travels
    await until(lambda: plans._changes > changes, message="the change was not heard")
    release.set()
    stale = await call
    assert stale is not None and stale.quiet_start.hour == 21  # returned as read, but:
    assert ("c-1", "service") not in plans._cache
    assert (await plans.get("c-1", "service")).quiet_start.hour == 23


async def test_nothing_is_cached_while_the_change_stream_is_down(service):
    prefs, plans = service
    await plans.get("c-1", "service")
    assert plans._cache

    plans.retry_s = 1.0
    prefs.feed._end_all("the change feed lost its database connection")  # stream ends
    await until(lambda: not plans.watching, message="the client did not notice")
    assert not plans._cache
    # until the client has reconnected a plan is asked for, not cached
    assert (await plans.get("c-1", "service")) is not None
    assert not plans.watching and not plans._cache
    await until(lambda: plans.watching, message="the client did not reconnect")
    await plans.get("c-2", "service")
    assert ("c-2", "service") in plans._cache


async def test_the_cache_keeps_at_most_max_entries(service):
    _, plans = service
    for key in [("c-1", "service"), ("c-1", "marketing"), ("c-2", "service")]:
        await plans.get(*key)
    await plans.get("c-1", "service")  # used again: the least recently used is another
    await plans.get("c-2", "marketing")
    assert list(plans._cache) == [("c-2", "service"), ("c-1", "service"), ("c-2", "marketing")]
