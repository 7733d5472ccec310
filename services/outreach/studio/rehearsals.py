"""Rehearsals asked for in the studio (docs/studio.md, "Rehearsals"), in outreach's
database beside the accounts: who asked to rehearse which draft on which period, and
what became of it — queued, running, done with the command's JSON report, or failed with
what it said. Kept in the database, not in a studio's memory, so that every studio
replica shows the same rehearsals and runs each one once (rehearser.py).

A run is claimed by one studio process (`runner`: its host, process and a random part),
which stamps `beat_at` while it runs. A row left running by a process that is gone — its
host restarted the studio, or its stamp is old — is failed by whichever studio sees it:
its rehearsal's processes went with it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.studio.accounts import USERNAME_MAX, AuditEntry
from services.outreach.studio.rehearsal_view import DONE, FAILED, INTERRUPTED, QUEUED, RUNNING


class RehearsalRow(Base):
    __tablename__ = "rehearsals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    requested_by: Mapped[str] = mapped_column(String(USERNAME_MAX))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    template_version_id: Mapped[int] = mapped_column(Integer)  # the draft's row
    template_key: Mapped[str] = mapped_column(String(200))  # kind/channel/locale
    template_version: Mapped[int] = mapped_column(Integer)  # its number in that key
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued … done | failed
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    beat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def kind(self) -> str:
        return self.template_key.split("/")[0]

    @property
    def locale(self) -> str:
        return self.template_key.split("/")[-1]


class RehearsalStore:
    """The rehearsals table. Every method is its own transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def request(
        self, row: RehearsalRow, record: Callable[[RehearsalRow], AuditEntry]
    ) -> RehearsalRow:
        """A queued rehearsal, with its audit entry in the same transaction."""
        row.status = QUEUED
        async with self.sessions() as s, s.begin():
            s.add(row)
            await s.flush()  # its id, for the entry
            s.add(record(row))
        return row

    async def get(self, rehearsal_id: int) -> RehearsalRow | None:
        async with self.sessions() as s:
            return await s.get(RehearsalRow, rehearsal_id)

    async def recent(self, limit: int) -> list[RehearsalRow]:
        async with self.sessions() as s:
            stmt = select(RehearsalRow).order_by(RehearsalRow.id.desc()).limit(limit)
            return list((await s.execute(stmt)).scalars())

    async def claim(self, runner: str, now: datetime) -> RehearsalRow | None:
        """The oldest queued rehearsal, now `runner`'s — unless one is running anywhere
        (one at a time: each replays the shop's input through a whole pipeline)."""
        async with self.sessions() as s, s.begin():
            oldest = await s.scalar(
                select(RehearsalRow.id)
                .where(RehearsalRow.status == QUEUED)
                .order_by(RehearsalRow.id)
                .limit(1)
            )
            if oldest is None:
                return None
            running = select(RehearsalRow.id).where(RehearsalRow.status == RUNNING).exists()
            taken = await s.execute(
                update(RehearsalRow)
                .where(RehearsalRow.id == oldest, RehearsalRow.status == QUEUED, ~running)
                .values(status=RUNNING, runner=runner, started_at=now, beat_at=now)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return await s.get(RehearsalRow, oldest, populate_existing=True)

    async def beat(self, rehearsal_id: int, runner: str, now: datetime) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(RehearsalRow)
                .where(RehearsalRow.id == rehearsal_id, RehearsalRow.runner == runner,
                       RehearsalRow.status == RUNNING)
                .values(beat_at=now)
            )  # fmt: skip

    async def finish(
        self,
        rehearsal_id: int,
        runner: str,
        now: datetime,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Done with its report, or failed with `error`; False if the run was no longer
        this runner's (failed meanwhile as left behind)."""
        async with self.sessions() as s, s.begin():
            done = await s.execute(
                update(RehearsalRow)
                .where(RehearsalRow.id == rehearsal_id, RehearsalRow.runner == runner,
                       RehearsalRow.status == RUNNING)
                .values(status=DONE if error is None else FAILED, report=report, error=error,
                        finished_at=now)
            )  # fmt: skip
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    async def fail_left_behind(
        self, stale_before: datetime, now: datetime, *, host: str | None = None
    ) -> int:
        """Fail the runs left running by a studio that is gone: any whose last stamp is
        older than `stale_before`, and with `host` (a studio that has just started there)
        every run of an earlier process on that host. How many."""
        gone = [RehearsalRow.beat_at < stale_before, RehearsalRow.beat_at.is_(None)]
        if host is not None:
            gone.append(RehearsalRow.runner.startswith(f"{host}/", autoescape=True))
        async with self.sessions() as s, s.begin():
            done = await s.execute(
                update(RehearsalRow)
                .where(RehearsalRow.status == RUNNING, or_(*gone))
                .values(status=FAILED, error=INTERRUPTED, finished_at=now)
                .execution_options(synchronize_session=False)
            )
            return int(done.rowcount)  # type: ignore[attr-defined]
