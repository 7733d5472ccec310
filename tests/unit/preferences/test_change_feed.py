"""The in-process change feed: a subscriber gets every change after it subscribed, or
its subscription ends; it never silently misses one."""

from __future__ import annotations

import asyncio

import pytest

from services.preferences.adapters.change_feed import Change, ChangeFeed, FeedInterrupted


async def test_a_subscription_hears_what_is_published_after_it_was_made():
    feed = ChangeFeed()
    feed.publish(Change("c-0", 1, "upserted"))  # before: not delivered
    subscription = feed.subscribe()
    feed.publish(Change("c-1", 1, "upserted"))
    feed.publish(Change("c-1", 2, "opt_out"))
    got = [await anext(subscription), await anext(subscription)]
    assert [(c.customer_id, c.version, c.kind) for c in got] == [
        ("c-1", 1, "upserted"),
        ("c-1", 2, "opt_out"),
    ]
    subscription.close()
    feed.publish(Change("c-2", 1, "upserted"))  # closed: no longer queued
    assert subscription._queue.empty()


async def test_a_subscriber_that_falls_behind_is_ended_not_skipped():
    feed = ChangeFeed(capacity=3)
    slow, fast = feed.subscribe(), feed.subscribe()
    for version in range(1, 5):
        feed.publish(Change("c-1", version, "preferences"))
        await anext(fast)

    # the slow one's queue overflowed at the fourth change: it must not go on as if
    # nothing had been lost
    async def drain() -> None:
        async for _ in slow:
            pass

    with pytest.raises(FeedInterrupted, match="fell behind"):
        await asyncio.wait_for(drain(), 2)
    feed.publish(Change("c-1", 5, "preferences"))
    assert (await anext(fast)).version == 5


async def test_ending_the_feed_wakes_a_waiting_subscriber():
    feed = ChangeFeed()
    subscription = feed.subscribe()
    waiting = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)
    await feed.stop()
    with pytest.raises(FeedInterrupted, match="shutting down"):
        await asyncio.wait_for(waiting, 2)


def test_a_change_survives_its_notification_payload():
    change = Change("c-ü/1", 7, "consent")
    assert Change.from_payload(change.payload()) == change
