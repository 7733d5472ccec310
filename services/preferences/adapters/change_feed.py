"""What WatchChanges streams: every committed change to a customer's preferences.

Callers cache contact plans and drop them when a change arrives, so a change a
subscriber does not get is a plan served stale until its TTL. Two rules follow:

- A subscription that may have missed a change ends (`FeedInterrupted`) instead of going
  on quietly: the subscriber fell behind and its queue overflowed, or the feed lost its
  source. The caller then forgets its cache and subscribes again.
- With PostgreSQL, changes come from the database, not from the process that made them:
  the store sends a NOTIFY inside each write's transaction (delivered on commit, never
  for a rolled-back write), and every preferences process LISTENs. Subscribers of any
  replica, or any worker process, see every change. With SQLite (one process, embedded)
  the in-process feed is the whole story.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from common.logs import get_logger

log = get_logger(__name__)
NOTIFY_CHANNEL = "outreach_preferences_changes"


@dataclass(frozen=True)
class Change:
    customer_id: str
    version: int
    kind: str

    def payload(self) -> str:
        return json.dumps({"c": self.customer_id, "v": self.version, "k": self.kind})

    @classmethod
    def from_payload(cls, text: str) -> Change:
        data = json.loads(text)
        return cls(str(data["c"]), int(data["v"]), str(data["k"]))


class FeedInterrupted(Exception):
    """The subscription may have missed changes (or the feed is not running)."""


class Subscription:
    """One subscriber's changes, in commit order; registered when created, so nothing
    committed after `ChangeFeed.subscribe()` returns is missed."""

    def __init__(self, feed: ChangeFeed, capacity: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue(maxsize=capacity)
        self.broken: str | None = None

    def offer(self, change: Change) -> None:
        if self._queue.full():
            self.end("the subscriber fell behind")
        else:
            self._queue.put_nowait(change)

    def end(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            self._feed.discard(self)
            if not self._queue.full():
                self._queue.put_nowait(None)  # wake a waiting reader

    def close(self) -> None:
        self._feed.discard(self)

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        while True:
            if self.broken is not None:
                raise FeedInterrupted(self.broken)
            change = await self._queue.get()
            if change is not None:
                return change


class ChangeFeed:
    """In-process fan-out: what this process commits, to this process's subscribers."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._subscriptions: set[Subscription] = set()

    @property
    def live(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._end_all("preferences is shutting down")

    def publish(self, change: Change) -> None:
        """A change this process has committed."""
        self._fan_out(change)

    def subscribe(self) -> Subscription:
        if not self.live:
            raise FeedInterrupted("the change feed is not connected")
        subscription = Subscription(self, self.capacity)
        self._subscriptions.add(subscription)
        return subscription

    def discard(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def _fan_out(self, change: Change) -> None:
        for subscription in list(self._subscriptions):
            subscription.offer(change)

    def _end_all(self, reason: str) -> None:
        for subscription in list(self._subscriptions):
            subscription.end(reason)


class PostgresChangeFeed(ChangeFeed):
    """Changes heard from PostgreSQL (LISTEN on `NOTIFY_CHANNEL`), for every process.

    One dedicated connection listens; a keep-alive query every `check_s` finds a
    connection that died silently. When the connection is lost every subscription ends
    (changes committed meanwhile were not heard) and new ones are refused until it is
    back, retried every `retry_s`."""

    def __init__(
        self, dsn: str, capacity: int = 10_000, check_s: float = 10.0, retry_s: float = 1.0
    ) -> None:
        super().__init__(capacity)
        self.dsn = dsn
        self.check_s = check_s
        self.retry_s = retry_s
        self._live = False
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self._live

    def publish(self, change: Change) -> None:
        """Nothing to do: the store's NOTIFY, sent in the write's own transaction,
        reaches this process's listener like every other's."""

    async def start(self, timeout_s: float = 30.0) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await super().stop()

    def _heard(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            change = Change.from_payload(payload)
        except (ValueError, KeyError, TypeError):
            log.error("change_notification_unreadable", payload_chars=len(payload))
            return
        self._fan_out(change)

    async def _listen(self) -> None:
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self.dsn, timeout=10)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(NOTIFY_CHANNEL, self._heard)
                self._live = True
                self._connected.set()
                log.info("change_feed_listening", channel=NOTIFY_CHANNEL)
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self.check_s)
                    except TimeoutError:
                        await asyncio.wait_for(connection.fetchval("SELECT 1"), self.check_s)
                raise ConnectionError("the listening connection closed")
            except asyncio.CancelledError:
                self._live = False
                if connection is not None:
                    connection.terminate()
                raise
            except Exception as exc:
                if connection is not None:
                    connection.terminate()
                if self._live:
                    self._live = False
                    log.warning("change_feed_lost", error=type(exc).__name__)
                    self._end_all("the change feed lost its database connection")
                else:
                    log.warning("change_feed_unavailable", error=type(exc).__name__)
            await asyncio.sleep(self.retry_s)
