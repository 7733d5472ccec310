"""The storm store in memory: `StormStore`'s contract (adapters/storms.py) without a
database, for the rehearsal's replay in one process (replay/), where counting every new
incident in SQLite was half of outreach's time.

The same counting, joining and forming as the tables', over a time-ordered list of each
scope's incidents; tests/contract/test_storm_store.py feeds both the same incidents
and operators' decisions and compares every answer. What it does not have is what a
database gives several workers: one process counts everything here."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from services.outreach.adapters.storms import (
    HOLDING,
    LOOK_BACK,
    LogEntry,
    StormMember,
    StormRow,
    StormsPort,
    as_storm,
    storm_id_of,
)
from services.outreach.domain import storms as domain
from services.outreach.domain.storms import Action, State, Storm, StormPolicy


class InMemoryStormStore:
    def __init__(self, policy: StormPolicy) -> None:
        self.policy = policy
        self._members: dict[str, dict[str, StormMember]] = {}  # scope → incident → member
        self._times: dict[str, list[tuple[float, str]]] = {}  # scope → (at, incident), sorted
        self._scopes_of: dict[str, list[str]] = {}  # incident → its scopes, in order counted
        self._storms: dict[str, list[StormRow]] = {}  # scope → its storms by seq
        self._by_id: dict[str, StormRow] = {}
        self._log: dict[str, list[LogEntry]] = {}

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
        at = at.astimezone(UTC)  # as the tables give it back
        members = self._members.setdefault(scope, {})
        new = incident_id not in members
        if new:
            members[incident_id] = StormMember(scope=scope, incident_id=incident_id, at=at,
                                               customer_id=customer_id, order_id=order_id,
                                               kind=kind)  # fmt: skip
            bisect.insort(self._times.setdefault(scope, []), (at.timestamp(), incident_id))
            self._scopes_of.setdefault(incident_id, []).append(scope)
        latest = self._storms.get(scope, [])[::-1][:2]
        for n, row in enumerate(latest):
            floor = latest[n + 1].last_at + self.policy.quiet if n + 1 < len(latest) else None
            if (floor is None or at > floor) and (
                row.started_at - self.policy.quiet <= at <= row.last_at + self.policy.quiet
            ):
                return self._join(row, at, new)
        if latest and at <= latest[0].last_at + self.policy.quiet:
            return None  # between two storms, or before the first one
        return self._form(scope, at, latest[0] if latest else None)

    def _join(self, row: StormRow, at: datetime, new: bool) -> Storm:
        if new:
            row.size += 1
        row.started_at = min(row.started_at, at)
        if at > row.last_at and self._count(row.scope, at - self.policy.window, at) >= (
            self.policy.rate
        ):
            row.last_at = at
        state = domain.state_for_size(State(row.state), row.size, self.policy)
        if state is not State(row.state):
            row.state, row.awaiting_since = state.value, at
        return as_storm(row)

    def _form(self, scope: str, at: datetime, before: StormRow | None) -> Storm | None:
        policy = self.policy
        floor = before.last_at + policy.quiet if before is not None else None
        times = self._between(scope, at - policy.window, at + policy.window, floor)
        formed = domain.formed_at(times, policy)
        if formed is None:
            return None
        started = domain.started_at(self._between(scope, None, formed, floor), formed, policy)
        seq = before.seq + 1 if before is not None else 1
        last = max(times)
        size = self._count(scope, started, last, closed=True)
        state = domain.state_for_size(State.FLOWING, size, policy)
        row = StormRow(storm_id=storm_id_of(scope, seq), scope=scope, seq=seq,
                       started_at=started, formed_at=formed, last_at=last, size=size,
                       state=state.value, notes={}, decided_by=None, decided_at=None,
                       awaiting_since=formed if state is State.AWAITING else None)  # fmt: skip
        self._storms.setdefault(scope, []).append(row)
        self._by_id[row.storm_id] = row
        return as_storm(row)

    def _count(self, scope: str, start: datetime, end: datetime, *, closed: bool = False) -> int:
        """The scope's incidents in (start, end] — [start, end] when `closed`."""
        times = self._times.get(scope, [])
        first = (start.timestamp(),) if closed else (start.timestamp(), "\U0010ffff")
        return bisect.bisect_right(times, (end.timestamp(), "\U0010ffff")) - bisect.bisect_left(
            times, first
        )

    def _between(
        self, scope: str, start: datetime | None, end: datetime, floor: datetime | None
    ) -> list[datetime]:
        """The scope's incident times in (start, end] after `floor`; with no start, the
        latest LOOK_BACK of them up to `end`."""
        members, times = self._members.get(scope, {}), self._times.get(scope, [])
        low = max((t.timestamp() for t in (start, floor) if t is not None), default=-math.inf)
        stop = bisect.bisect_right(times, (end.timestamp(), "\U0010ffff"))
        begin = bisect.bisect_right(times, (low, "\U0010ffff"))
        if start is None:
            begin = max(begin, stop - LOOK_BACK)
        return [members[incident].at for _, incident in times[begin:stop]]

    # --- what a message's incident belongs to ---------------------------------------

    async def storms_of(self, incident_ids: Iterable[str]) -> dict[str, Storm]:
        found: dict[str, Storm] = {}
        for incident in set(incident_ids):
            for scope in self._scopes_of.get(incident, ()):
                member = self._members[scope].get(incident)
                if member is None:
                    continue
                for row in reversed(self._storms.get(scope, [])):
                    storm = as_storm(row)
                    if storm.covers(member.at, self.policy):
                        found[incident] = storm
                        break
        return found

    async def holding(self) -> list[str]:
        return [r.storm_id for r in self._by_id.values() if r.state in HOLDING]

    # --- operators -----------------------------------------------------------------

    async def get(self, storm_id: str) -> Storm | None:
        row = self._by_id.get(storm_id)
        return None if row is None else as_storm(row)

    async def recent(self, limit: int = 100) -> list[Storm]:
        rows = sorted(self._by_id.values(), key=lambda r: r.last_at, reverse=True)
        return [as_storm(r) for r in rows[:limit]]

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
        row = self._by_id.get(storm_id)
        if row is None:
            raise domain.StormError(f"no storm {storm_id!r}")
        before = State(row.state)
        state = domain.after(before, action)
        kept = dict(row.notes or {}) if notes is None else dict(notes)
        row.state, row.notes, row.decided_by, row.decided_at = state.value, kept, actor, at
        entry = LogEntry(at, action.value, actor, before.value, state.value, kept, reason)
        self._log.setdefault(storm_id, []).append(entry)
        return as_storm(row)

    async def log(self, storm_id: str) -> list[LogEntry]:
        return list(self._log.get(storm_id, ()))

    async def members(self, storm: Storm, limit: int = 10_000) -> list[StormMember]:
        end = storm.last_at + self.policy.quiet
        found = [
            m
            for m in self._members.get(storm.scope, {}).values()
            if storm.started_at <= m.at <= end
        ]
        return sorted(found, key=lambda m: (m.at, m.incident_id))[:limit]

    async def forget_customer(self, customer_id: str) -> int:
        return self._forget(lambda m: m.customer_id == customer_id)

    async def forget_before(self, wall_now: datetime, retention: timedelta) -> int:
        ats = [m.at for members in self._members.values() for m in members.values()]
        if not ats:
            return 0
        before = min(wall_now, max(ats)) - retention
        return self._forget(lambda m: m.at < before)

    def _forget(self, which: object) -> int:
        gone = 0
        for scope, members in self._members.items():
            dropped = [m for m in members.values() if which(m)]  # type: ignore[operator]
            for m in dropped:
                del members[m.incident_id]
                self._scopes_of[m.incident_id].remove(scope)
            if dropped:
                self._times[scope] = sorted((m.at.timestamp(), i) for i, m in members.items())
            gone += len(dropped)
        return gone

    async def awaiting_since(self) -> datetime | None:
        waiting = [
            r.awaiting_since
            for r in self._by_id.values()
            if r.state == State.AWAITING.value and r.awaiting_since is not None
        ]
        return min(waiting, default=None)

    async def open_by_state(self, now: datetime) -> dict[str, int]:
        since = now - self.policy.quiet
        counts = {state.value: 0 for state in State}
        for r in self._by_id.values():
            if r.last_at >= since or r.state in HOLDING:
                counts[r.state] += 1
        return counts


__all__ = ["InMemoryStormStore"]

if TYPE_CHECKING:
    _contract: StormsPort = InMemoryStormStore(StormPolicy())
