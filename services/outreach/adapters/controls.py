"""The kill switch in the outreach database: one row per paused scope (`all` or an
intent), an append-only log of every pause and resume (who, when, why), and the loop
through which every worker obeys it within OUTREACH_CONTROLS_REFRESH_S."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, Float, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.clock import wall_now
from common.metrics import SENDING_PAUSED
from common.schemas import Intent
from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.domain.guards import GroupShare
from services.outreach.domain.ramp import GLOBAL, Paused, Ramp, ReleaseBudget

log = logging.getLogger(__name__)
SCOPES = (GLOBAL, *(i.value for i in Intent))


class SendingControl(Base):
    __tablename__ = "sending_controls"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)  # all | an intent
    paused: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ramp_minutes: Mapped[float] = mapped_column(Float, default=0.0)


class SendingControlLog(Base):
    __tablename__ = "sending_control_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    scope: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))  # pause | resume
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    ramp_minutes: Mapped[float] = mapped_column(Float, default=0.0)


class ControlError(ValueError):
    pass


@dataclass(frozen=True)
class ControlState:
    scope: str
    paused: bool
    reason: str
    actor: str
    changed_at: datetime
    ramp_minutes: float

    def as_json(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "paused": self.paused,
            "reason": self.reason,
            "actor": self.actor,
            "changed_at": self.changed_at.isoformat(),
            "ramp_minutes": self.ramp_minutes,
        }


class SendingControls:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        now: Callable[[], datetime] = wall_now,
    ) -> None:
        self.sessions = sessions
        self.now = now

    async def pause(self, scope: str, *, actor: str, reason: str) -> ControlState:
        if not reason.strip():
            raise ControlError("say why sending is paused (--reason)")
        return await self._set(scope, True, actor=actor, reason=reason.strip(), ramp=0.0)

    async def resume(self, scope: str, *, actor: str, ramp_minutes: float) -> ControlState:
        if ramp_minutes < 0:
            raise ControlError("the ramp cannot be negative")
        return await self._set(scope, False, actor=actor, reason="", ramp=ramp_minutes)

    async def _set(
        self, scope: str, paused: bool, *, actor: str, reason: str, ramp: float
    ) -> ControlState:
        if scope not in SCOPES:
            raise ControlError(f"scope must be one of {', '.join(SCOPES)}")
        if not actor.strip():
            raise ControlError("who is doing this? (an actor is required)")
        now = self.now()
        async with self.sessions() as s, s.begin():
            row = await s.get(SendingControl, scope)
            if row is None:
                row = SendingControl(scope=scope)
                s.add(row)
            row.paused, row.reason, row.actor = paused, reason, actor
            row.changed_at, row.ramp_minutes = now, ramp
            s.add(
                SendingControlLog(
                    at=now,
                    scope=scope,
                    action="pause" if paused else "resume",
                    actor=actor,
                    reason=reason,
                    ramp_minutes=ramp,
                )
            )
        log.warning(
            "sending_%s scope=%s actor=%s reason=%s ramp_minutes=%s",
            "paused" if paused else "resumed", scope, actor, reason, ramp,
        )  # fmt: skip
        return ControlState(scope, paused, reason, actor, now, ramp)

    async def state(self) -> list[ControlState]:
        async with self.sessions() as s:
            rows = (
                await s.execute(select(SendingControl).order_by(SendingControl.scope))
            ).scalars()
            return [
                ControlState(r.scope, r.paused, r.reason, r.actor, r.changed_at, r.ramp_minutes)
                for r in rows
            ]

    async def history(self, limit: int = 50) -> list[SendingControlLog]:
        async with self.sessions() as s:
            rows = await s.execute(
                select(SendingControlLog).order_by(SendingControlLog.id.desc()).limit(limit)
            )
            return list(rows.scalars())


class ControlsWatcher:
    """Keeps a worker's `Paused` in step with the store (called every refresh)."""

    def __init__(
        self,
        controls: SendingControls,
        paused: Paused,
        full_rate_per_s: float,
        share: GroupShare | None = None,
    ) -> None:
        self.controls = controls
        self.paused = paused
        self.full_rate_per_s = full_rate_per_s
        self.share = share  # the ramp is the group's: this worker's part of it
        self._seen: dict[str, tuple[bool, datetime]] = {}  # scope → the last state applied
        for scope in SCOPES:
            SENDING_PAUSED.labels(scope).set(0)

    async def refresh(self) -> None:
        states = await self.controls.state()
        paused = {s.scope for s in states if s.paused}
        self.paused.all = GLOBAL in paused
        self.paused.intents = paused - {GLOBAL}
        for state in states:
            SENDING_PAUSED.labels(state.scope).set(1 if state.paused else 0)
            if state.paused:
                self.paused.ramps.pop(state.scope, None)
            elif state.ramp_minutes > 0 and self._seen.get(state.scope) != (
                False,
                state.changed_at,
            ):  # a resume not applied yet: start its ramp
                self.paused.ramps[state.scope] = ReleaseBudget(
                    Ramp(state.changed_at, state.ramp_minutes, self.full_rate_per_s),
                    share=self.share,
                )
            self._seen[state.scope] = (state.paused, state.changed_at)
