"""Group commit (services/outreach/adapters/group_commit.py): changes asked for together
share a transaction, each caller gets its own answer, and a bad change fails alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from services.outreach.adapters.group_commit import Change, GroupCommit


class FakeDatabase:
    """Records each transaction's changes; a change whose params say `poison` raises,
    `outage` raises a connection error; `slow` holds the transaction open a while."""

    def __init__(self) -> None:
        self.transactions: list[list[str]] = []
        self.committed: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[Any]:
        pending: list[str] = []
        yield pending
        self.transactions.append(pending)
        self.committed.extend(pending)

    async def write(self, conn: Any, group: Sequence[Change]) -> list[bool]:
        await self.release.wait()
        for change in group:
            if change.params.get("poison"):
                raise ValueError("a constraint nobody expected")
            if change.params.get("outage"):
                raise ConnectionRefusedError("database away")
            conn.append(change.params["id"])
        return [not change.params.get("refused") for change in group]


def change(n: int, **params: Any) -> Change:
    return Change("move", {"id": f"c{n}", **params})


async def test_changes_asked_for_together_share_one_transaction() -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write)
    db.release.clear()  # the first transaction is under way while the others gather
    first = asyncio.create_task(commit.submit(change(0)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(commit.submit(change(n))) for n in range(1, 6)]
    await asyncio.sleep(0)
    db.release.set()
    assert await asyncio.gather(first, *rest) == [True] * 6
    assert db.transactions == [["c0"], ["c1", "c2", "c3", "c4", "c5"]]


async def test_a_change_asked_for_as_the_writer_finishes_is_written() -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write)
    for n in range(3):  # each asked for as soon as the one before was answered
        assert await commit.submit(change(n)) is True
    assert db.committed == ["c0", "c1", "c2"]


async def test_each_caller_gets_its_own_answer() -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write)
    answers = await asyncio.gather(
        commit.submit(change(1)), commit.submit(change(2, refused=True)), commit.submit(change(3))
    )
    assert answers == [True, False, True]
    assert len(db.transactions) == 1


async def test_groups_are_bounded() -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write, max_group=4)
    assert all(await asyncio.gather(*(commit.submit(change(n)) for n in range(10))))
    assert [len(t) for t in db.transactions] == [4, 4, 2]


async def test_a_bad_change_fails_alone() -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write)
    answers = await asyncio.gather(
        commit.submit(change(1)),
        commit.submit(change(2, poison=True)),
        commit.submit(change(3)),
        return_exceptions=True,
    )
    assert answers[0] is True and answers[2] is True
    assert isinstance(answers[1], ValueError)
    assert db.committed == ["c1", "c3"]  # written again one at a time, the bad one failed


async def test_an_outage_fails_the_whole_group() -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write)
    answers = await asyncio.gather(
        commit.submit(change(1)),
        commit.submit(change(2, outage=True)),
        return_exceptions=True,
    )
    assert all(isinstance(a, ConnectionRefusedError) for a in answers)
    assert db.committed == []
    assert await commit.submit(change(3)) is True  # and the next group goes on


@pytest.mark.parametrize("writing", [False, True], ids=["before_it_began", "while_writing"])
async def test_a_cancelled_writer_leaves_no_caller_waiting(writing: bool) -> None:
    db = FakeDatabase()
    commit = GroupCommit(db.begin, db.write)
    db.release.clear()
    waiting = [asyncio.create_task(commit.submit(change(n))) for n in range(3)]
    await asyncio.sleep(0)
    if writing:
        await asyncio.sleep(0)
        later = asyncio.create_task(commit.submit(change(3)))  # queued behind the write
        await asyncio.sleep(0)
        waiting.append(later)
    assert commit._writer is not None
    commit._writer.cancel()
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert db.committed == []
    db.release.set()
    assert await commit.submit(change(4)) is True  # a new writer for what comes next
