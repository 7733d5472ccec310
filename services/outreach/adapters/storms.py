"""Storms in outreach's database (domain/storms.py): every incident counted in the scopes
of its cause (`storm_members`), the storms those counts made (`storms`) and every
operator's decision about one (`storm_log`: who, when, what, with which note). Counted
here, not in a worker's memory, so that every worker sees the same storm however the
incidents were spread over them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import JSON, Index, Integer, String, Text, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.domain import storms as domain
from services.outreach.domain.storms import Action, State, Storm, StormPolicy

HOLDING = (State.AWAITING.value, State.HELD.value)
#: How many of a scope's incidents before a new storm are read to find where it began.
LOOK_BACK = 10_000


class StormMember(Base):
    __tablename__ = "storm_members"
    __table_args__ = (
        Index("ix_storm_members_scope_at", "scope", "at"),
        Index("ix_storm_members_at", "at"),
    )

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the incident was detected
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    order_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))


class StormRow(Base):
    __tablename__ = "storms"
    __table_args__ = (Index("ix_storms_scope_seq", "scope", "seq", unique=True),)

    storm_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(Integer)  # the scope's first storm, second, …
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    formed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    awaiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    notes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StormLogRow(Base):
    __tablename__ = "storm_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    storm_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(16))  # approve | hold | cancel | note
    actor: Mapped[str] = mapped_column(String(200))
    before: Mapped[str] = mapped_column(String(16))
    after: Mapped[str] = mapped_column(String(16))
    notes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class LogEntry:
    at: datetime
    action: str
    actor: str
    before: str
    after: str
    notes: Mapping[str, str]
    reason: str


def storm_id_of(scope: str, seq: int) -> str:
    return "st-" + hashlib.sha256(f"{scope}#{seq}".encode()).hexdigest()[:16]


def as_storm(row: StormRow) -> Storm:
    """A storm's row as the domain's Storm."""
    return Storm(
        storm_id=row.storm_id,
        scope=row.scope,
        started_at=row.started_at,
        last_at=row.last_at,
        size=row.size,
        state=State(row.state),
        notes=dict(row.notes or {}),
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        formed_at=row.formed_at,
        awaiting_since=row.awaiting_since,
    )


class StormsPort(Protocol):
    """What outreach's delivery needs of the storms: `StormStore` (these tables), or
    `InMemoryStormStore` (adapters/memory_storms.py: a replay in one process)."""

    policy: StormPolicy

    async def record(
        self,
        scope: str,
        *,
        incident_id: str,
        customer_id: str,
        order_id: str | None,
        kind: str,
        at: datetime,
    ) -> Storm | None: ...

    async def storms_of(self, incident_ids: Iterable[str]) -> dict[str, Storm]: ...

    async def holding(self) -> list[str]: ...

    async def get(self, storm_id: str) -> Storm | None: ...

    async def recent(self, limit: int = 100) -> list[Storm]: ...

    async def forget_customer(self, customer_id: str) -> int: ...

    async def forget_before(self, wall_now: datetime, retention: timedelta) -> int: ...

    async def awaiting_since(self) -> datetime | None: ...

    async def open_by_state(self, now: datetime) -> dict[str, int]: ...


class StormStore:
    """The storm tables. Every method is its own transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], policy: StormPolicy) -> None:
        self.sessions = sessions
        self.policy = policy
        bind = sessions.kw.get("bind")
        assert isinstance(bind, AsyncEngine)
        self._sqlite = bind.dialect.name == "sqlite"
        insert: Any = sqlite_insert if self._sqlite else postgresql_insert
        self._insert_member = insert(StormMember).on_conflict_do_nothing()
        self._insert_storm = insert(StormRow).on_conflict_do_nothing()

    # --- counting ------------------------------------------------------------------

    async def record(
        self,
        scope: str,
        *,
        incident_id: str,
        customer_id: str,
        order_id: str | None,
        kind: str,
        at: datetime,
    ) -> Storm | None:
        """Count an incident detected at `at` in its `scope` (the same incident again
        changes nothing) and return the storm it belongs to, as it is now, if any.

        One worker at a time counts a scope (on PostgreSQL an advisory lock for the
        transaction; SQLite has one writer anyway), and the storm's row is locked
        against an operator's decision: no burst is missed because two workers each
        counted one short, and no count writes over a cancel."""
        async with self.sessions() as s, s.begin():
            if not self._sqlite:
                await s.execute(select(func.pg_advisory_xact_lock(func.hashtext(scope))))
            member = dict(scope=scope, incident_id=incident_id, at=at,
                          customer_id=customer_id, order_id=order_id, kind=kind)  # fmt: skip
            added = await s.execute(self._insert_member.values(**member))
            new = bool(getattr(added, "rowcount", 1))
            return await self._count(s, scope, at, new)

    async def _count(self, s: AsyncSession, scope: str, at: datetime, new: bool) -> Storm | None:
        """The incident at `at` joins the storm whose time covers it (the newest two
        are enough: a storm starts after the one before it ended), or its scope's
        counts around `at` make a new one."""
        latest = list(
            (
                await s.execute(
                    select(StormRow)
                    .where(StormRow.scope == scope)
                    .order_by(StormRow.seq.desc())
                    .limit(2)
                    .with_for_update()
                )
            ).scalars()
        )
        for n, row in enumerate(latest):
            floor = latest[n + 1].last_at + self.policy.quiet if n + 1 < len(latest) else None
            if self._joins(row, at, floor):
                return await self._join(s, row, at, new, floor)
        if latest and at <= latest[0].last_at + self.policy.quiet:
            return None  # between two storms, or before the first one
        return await self._form(s, scope, at, latest[0] if latest else None)

    def _joins(self, row: StormRow, at: datetime, floor: datetime | None) -> bool:
        """Does a storm take an incident at `at`: from a quiet time before its start (a
        late one; not back into the storm before it) to a quiet time after its last
        moment at the storm's rate."""
        quiet = self.policy.quiet
        after_floor = floor is None or at > floor
        return after_floor and row.started_at - quiet <= at <= row.last_at + quiet

    async def _join(
        self, s: AsyncSession, row: StormRow, at: datetime, new: bool, floor: datetime | None
    ) -> Storm:
        """A storm grows by one incident; it lasts on (`last_at`) only while incidents
        still come at its rate, so a steady trickle afterwards lets it end."""
        if new:
            row.size += 1
        row.started_at = min(row.started_at, at)
        if at > row.last_at and await self._hot(s, row.scope, at):
            row.last_at = at
        state = domain.state_for_size(State(row.state), row.size, self.policy)
        if state is not State(row.state):
            row.state, row.awaiting_since = state.value, at
        return as_storm(row)

    async def _hot(self, s: AsyncSession, scope: str, at: datetime) -> bool:
        """Did `rate` incidents of the scope come within the window up to `at`?"""
        recent = (
            select(StormMember.at)
            .where(
                StormMember.scope == scope,
                StormMember.at > at - self.policy.window,
                StormMember.at <= at,
            )
            .limit(self.policy.rate)
            .subquery()
        )
        return int(await s.scalar(select(func.count()).select_from(recent)) or 0) >= (
            self.policy.rate
        )

    async def _form(
        self, s: AsyncSession, scope: str, at: datetime, before: StormRow | None
    ) -> Storm | None:
        """A new storm, if the scope's incidents around `at` came at the rate."""
        policy = self.policy
        floor = before.last_at + policy.quiet if before is not None else None
        times = await self._times(s, scope, at - policy.window, at + policy.window, floor)
        formed = domain.formed_at(times, policy)
        if formed is None:
            return None
        started = domain.started_at(
            await self._times(s, scope, None, formed, floor), formed, policy
        )
        seq = before.seq + 1 if before is not None else 1
        last = max(times)
        size = await self._size(s, scope, started, last)
        state = domain.state_for_size(State.FLOWING, size, policy)
        row = dict(storm_id=storm_id_of(scope, seq), scope=scope, seq=seq, started_at=started,
                   formed_at=formed, last_at=last, size=size, state=state.value, notes={},
                   awaiting_since=formed if state is State.AWAITING else None)  # fmt: skip
        await s.execute(self._insert_storm.values(**row))
        made = await s.scalar(select(StormRow).where(StormRow.scope == scope, StormRow.seq == seq))
        return None if made is None else as_storm(made)

    async def _size(self, s: AsyncSession, scope: str, start: datetime, end: datetime) -> int:
        return int(
            await s.scalar(
                select(func.count()).where(
                    StormMember.scope == scope, StormMember.at >= start, StormMember.at <= end
                )
            )
            or 0
        )

    async def _times(
        self,
        s: AsyncSession,
        scope: str,
        start: datetime | None,
        end: datetime,
        floor: datetime | None,
    ) -> list[datetime]:
        """The scope's incident times in (start, end] after `floor`; with no start, the
        latest ones up to `end` (as far back as a storm's start is looked for)."""
        query = select(StormMember.at).where(StormMember.scope == scope, StormMember.at <= end)
        if start is not None:
            query = query.where(StormMember.at > start)
        if floor is not None:
            query = query.where(StormMember.at > floor)
        if start is None:
            query = query.order_by(StormMember.at.desc()).limit(LOOK_BACK)
        return sorted((await s.execute(query)).scalars())

    # --- what a message's incident belongs to ---------------------------------------

    async def storms_of(self, incident_ids: Iterable[str]) -> dict[str, Storm]:
        """The storm each incident belongs to; incidents in none are left out."""
        ids = list(set(incident_ids))
        if not ids:
            return {}
        async with self.sessions() as s:
            members = (
                await s.execute(
                    select(StormMember.incident_id, StormMember.scope, StormMember.at).where(
                        StormMember.incident_id.in_(ids)
                    )
                )
            ).all()
            if not members:
                return {}
            scopes = {m.scope for m in members}
            rows = (
                await s.execute(
                    select(StormRow).where(StormRow.scope.in_(scopes)).order_by(StormRow.seq.desc())
                )
            ).scalars()
            by_scope: dict[str, list[Storm]] = {}
            for row in rows:
                by_scope.setdefault(row.scope, []).append(as_storm(row))
        found: dict[str, Storm] = {}
        for m in members:
            for storm in by_scope.get(m.scope, ()):
                if storm.covers(m.at, self.policy):
                    found[m.incident_id] = storm
                    break
        return found

    async def holding(self) -> list[str]:
        """The storms whose messages wait (awaiting approval, or held)."""
        async with self.sessions() as s:
            return list(
                (
                    await s.execute(select(StormRow.storm_id).where(StormRow.state.in_(HOLDING)))
                ).scalars()
            )

    # --- operators -----------------------------------------------------------------

    async def get(self, storm_id: str) -> Storm | None:
        async with self.sessions() as s:
            row = await s.get(StormRow, storm_id)
            return None if row is None else as_storm(row)

    async def recent(self, limit: int = 100) -> list[Storm]:
        """The storms, the latest first."""
        async with self.sessions() as s:
            rows = await s.execute(select(StormRow).order_by(StormRow.last_at.desc()).limit(limit))
            return [as_storm(r) for r in rows.scalars()]

    async def act(
        self,
        storm_id: str,
        action: Action,
        actor: str,
        at: datetime,
        *,
        notes: Mapping[str, str] | None = None,
        reason: str = "",
    ) -> Storm:
        """An operator's decision: approve, hold, cancel, or only change the note (a note
        given with the action replaces the storm's; none keeps it). Logged."""
        async with self.sessions() as s, s.begin():
            row = await s.get(StormRow, storm_id, with_for_update=True)
            if row is None:
                raise domain.StormError(f"no storm {storm_id!r}")
            before = State(row.state)
            state = domain.after(before, action)
            kept = dict(row.notes or {}) if notes is None else dict(notes)
            await s.execute(
                update(StormRow)
                .where(StormRow.storm_id == storm_id)
                .values(state=state.value, notes=kept, decided_by=actor, decided_at=at)
            )
            s.add(StormLogRow(storm_id=storm_id, at=at, action=action.value, actor=actor,
                              before=before.value, after=state.value, notes=kept,
                              reason=reason))  # fmt: skip
        found = await self.get(storm_id)
        assert found is not None
        return found

    async def log(self, storm_id: str) -> list[LogEntry]:
        async with self.sessions() as s:
            rows = await s.execute(
                select(StormLogRow).where(StormLogRow.storm_id == storm_id).order_by(StormLogRow.id)
            )
            return [
                LogEntry(r.at, r.action, r.actor, r.before, r.after, dict(r.notes or {}), r.reason)
                for r in rows.scalars()
            ]

    async def members(self, storm: Storm, limit: int = 10_000) -> list[StormMember]:
        """The incidents counted in `storm`, the earliest first."""
        end = storm.last_at + self.policy.quiet
        async with self.sessions() as s:
            rows = await s.execute(
                select(StormMember)
                .where(
                    StormMember.scope == storm.scope,
                    StormMember.at >= storm.started_at,
                    StormMember.at <= end,
                )
                .order_by(StormMember.at, StormMember.incident_id)
                .limit(limit)
            )
            found = list(rows.scalars())
            for row in found:
                s.expunge(row)
            return found

    async def forget_customer(self, customer_id: str) -> int:
        """An erasure: the customer's incidents leave the counts (a storm keeps its size)."""
        async with self.sessions() as s, s.begin():
            done = await s.execute(
                delete(StormMember).where(StormMember.customer_id == customer_id)
            )
            return int(getattr(done, "rowcount", 0) or 0)

    async def forget_before(self, wall_now: datetime, retention: timedelta) -> int:
        """The retention: incidents detected longer than `retention` ago leave the
        counts — ago from now, or from the newest incident counted, whichever is
        earlier (a replay of older days keeps what it counts)."""
        async with self.sessions() as s, s.begin():
            newest = await s.scalar(select(func.max(StormMember.at)))
            if newest is None:
                return 0
            before = min(wall_now, newest) - retention
            done = await s.execute(delete(StormMember).where(StormMember.at < before))
            return int(getattr(done, "rowcount", 0) or 0)

    async def awaiting_since(self) -> datetime | None:
        """Since when the storm that has waited longest for approval waits (None: none)."""
        async with self.sessions() as s:
            return await s.scalar(
                select(func.min(StormRow.awaiting_since)).where(
                    StormRow.state == State.AWAITING.value
                )
            )

    async def open_by_state(self, now: datetime) -> dict[str, int]:
        """How many storms are not over (incidents came within the quiet time), by
        state; a storm that holds messages counts until it is decided, however old."""
        since = now - self.policy.quiet
        async with self.sessions() as s:
            rows = await s.execute(
                select(StormRow.state, func.count())
                .where((StormRow.last_at >= since) | StormRow.state.in_(HOLDING))
                .group_by(StormRow.state)
            )
            counts = {state.value: 0 for state in State}
            counts.update({state: int(n) for state, n in rows.all()})
            return counts


__all__ = [
    "HOLDING",
    "LogEntry",
    "StormLogRow",
    "StormMember",
    "StormRow",
    "StormStore",
    "StormsPort",
    "as_storm",
]
