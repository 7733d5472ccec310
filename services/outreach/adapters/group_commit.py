"""Group commit for the ledger's writes: the decisions and transitions that many
handlers ask for at about the same moment are written in one transaction.

Every caller still waits for its own write to be committed, and gets its own answer
(inserted or not, moved or not): only the transaction is shared. While one group is being
written the next one gathers, so under load each commit carries many changes and at rest
a change is written at once, without waiting for company.

A group that fails for a reason other than an outage (a bug, a constraint no one
expected) is written again one change at a time, so that one bad change fails alone and
never takes its neighbours with it. An outage fails the whole group: every caller sees
it, as it would have alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from common.outages import outage_of

#: Applies a group's changes on one connection inside its transaction; returns, for each
#: change in order, whether it took effect.
Writer = Callable[[AsyncConnection, Sequence["Change"]], Awaitable[list[bool]]]


def _future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


@dataclass
class Change:
    """One caller's write: a new row (`kind` "create") or a compare-and-set ("move"),
    with the parameters of its statement and the event row written with it if it takes
    effect."""

    kind: str
    params: dict[str, Any]
    event: dict[str, Any] | None = None
    statement: Any = None  # a move's statement (its shape depends on the expected states)
    done: asyncio.Future[bool] = field(default_factory=_future)


class GroupCommit:
    """Writes queued changes in groups of at most `max_group`, one transaction each."""

    def __init__(
        self,
        begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
        write: Writer,
        max_group: int = 256,
    ) -> None:
        self.begin = begin
        self.write = write
        self.max_group = max_group
        self._queue: list[Change] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, change: Change) -> bool:
        """Queue `change` and wait until its group is committed: whether it took effect."""
        self._queue.append(change)
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
            self._writer.add_done_callback(self._drained)
        return await change.done

    async def _drain(self) -> None:
        while self._queue:
            group = self._queue[: self.max_group]
            del self._queue[: self.max_group]
            await self._commit(group)
        self._writer = None  # all written: the next change starts a writer of its own

    def _drained(self, writer: asyncio.Task[None]) -> None:
        """The writer ended before the queue did (cancelled: shutting down): no caller
        waits forever."""
        if self._writer is not writer:
            return
        self._writer = None
        for change in self._queue:
            change.done.cancel()
        self._queue.clear()

    async def _commit(self, group: list[Change]) -> None:
        try:
            async with self.begin() as conn:
                took = await self.write(conn, group)
        except asyncio.CancelledError:
            for change in group:
                change.done.cancel()
            raise
        except Exception as exc:
            if len(group) > 1 and outage_of(exc) is None:
                for change in group:  # one at a time: the bad one fails alone
                    await self._commit([change])
                return
            for change in group:
                if not change.done.done():
                    change.done.set_exception(exc)
            return
        for change, ok in zip(group, took, strict=True):
            if not change.done.done():
                change.done.set_result(ok)
