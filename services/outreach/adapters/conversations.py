"""Customers' replies, in outreach's database beside the ledger: the text (personal
data: erased with the customer, scrubbed after the ledger's retention), how it was read,
the message it answers, and whether everything it set in motion has been handed over
(`done`: its event published, its opt-out and hand-off sent). A reply not done is taken
up again by the worker's sweep (services/outreach/conversations.py).

Beside them, every hand-off of the customer (from a reply or from the churn-risk score)
and what the agent did with it, as `support.handoffs` and `support.resolutions` said:
the studio's conversation view reads both tables with the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.ledger import ErasedCustomer


class ReplyRow(Base):
    __tablename__ = "replies"

    reply_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    decision_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    command: Mapped[str | None] = mapped_column(String(8), nullable=True)
    intent: Mapped[str] = mapped_column(String(32))
    tone: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[list[str]] = mapped_column(JSON, default=list)
    language: Mapped[str] = mapped_column(String(8))
    classifier: Mapped[str] = mapped_column(String(64))
    handoff_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    survey_score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    done: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    scrubbed: Mapped[bool] = mapped_column(Boolean, default=False)


class ReplyStore:
    """The replies table. Every method is its own transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def record(self, row: ReplyRow) -> ReplyRow:
        """Keep a reply; a reply already kept (the provider retried its webhook) is
        returned as it was kept, and nothing changes."""
        async with self.sessions() as s, s.begin():
            kept = await s.get(ReplyRow, row.reply_id)
            if kept is not None:
                s.expunge(kept)
                return kept
            s.add(row)
        return row

    async def get(self, reply_id: str) -> ReplyRow | None:
        async with self.sessions() as s:
            return await s.get(ReplyRow, reply_id)

    async def of_customer(self, customer_id: str, limit: int = 50) -> list[ReplyRow]:
        """The customer's latest replies, oldest first."""
        async with self.sessions() as s:
            rows = await s.scalars(
                select(ReplyRow)
                .where(ReplyRow.customer_id == customer_id)
                .order_by(ReplyRow.received_at.desc())
                .limit(limit)
            )
            return list(reversed(rows.all()))

    async def latest(self, limit: int = 100) -> list[ReplyRow]:
        """The latest replies of anyone, newest first (the studio's list)."""
        async with self.sessions() as s:
            rows = await s.scalars(
                select(ReplyRow).order_by(ReplyRow.received_at.desc()).limit(limit)
            )
            return list(rows.all())

    async def not_done(self, received_before: datetime, limit: int = 100) -> list[ReplyRow]:
        async with self.sessions() as s:
            rows = await s.scalars(
                select(ReplyRow)
                .where(ReplyRow.done.is_(False), ReplyRow.received_at < received_before)
                .order_by(ReplyRow.received_at)
                .limit(limit)
            )
            return list(rows.all())

    async def finish(self, reply_id: str) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(update(ReplyRow).where(ReplyRow.reply_id == reply_id).values(done=True))

    async def erase(self, customer_id: str) -> int:
        """customer.erased: the customer's replies go, text and all."""
        async with self.sessions() as s, s.begin():
            result: Any = await s.execute(
                delete(ReplyRow).where(ReplyRow.customer_id == customer_id)
            )
            return int(result.rowcount or 0)

    async def scrub_before(self, cutoff: datetime) -> int:
        """The retention: replies received before `cutoff` keep their label, not their
        text."""
        async with self.sessions() as s, s.begin():
            result: Any = await s.execute(
                update(ReplyRow)
                .where(
                    ReplyRow.received_at < cutoff,
                    ReplyRow.done.is_(True),
                    ReplyRow.scrubbed.is_(False),
                )
                .values(text=None, scrubbed=True)
            )
            return int(result.rowcount or 0)


class HandoffRow(Base):
    """One hand-off and its outcome. Either record may arrive first (two topics): the
    row is made by whichever comes, and the other fills its half."""

    __tablename__ = "handoffs"

    handoff_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    trigger: Mapped[str | None] = mapped_column(String(16), nullable=True)
    order_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    risk_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary_local: Mapped[str | None] = mapped_column(Text, nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    incident: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reply_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    agent: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ticket_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    scrubbed: Mapped[bool] = mapped_column(Boolean, default=False)


#: What the retention takes from a hand-off (it quotes the customer's reply).
SCRUBBED = frozenset({"summary", "summary_local"})


class HandoffStore:
    """The handoffs table. Every method is its own transaction; writing the same record
    twice changes nothing."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def _merge(self, handoff_id: str, customer_id: str, values: dict[str, Any]) -> None:
        """Write one half of a hand-off — never for a customer already erased (this
        consumer may read the topic long after the erasure), and never the summaries
        back into a row the retention scrubbed."""
        async with self.sessions() as s, s.begin():
            if await s.get(ErasedCustomer, customer_id) is not None:
                return
            row = await s.get(HandoffRow, handoff_id, with_for_update=True)
            if row is None:
                s.add(HandoffRow(handoff_id=handoff_id, customer_id=customer_id, **values))
                return
            for name, value in values.items():
                if not (row.scrubbed and name in SCRUBBED):
                    setattr(row, name, value)

    async def requested(self, handoff_id: str, customer_id: str, **values: Any) -> None:
        """support.handoff.requested: who, when, why, the summaries."""
        await self._merge(handoff_id, customer_id, values)

    async def resolved(
        self,
        handoff_id: str,
        customer_id: str,
        *,
        outcome: str,
        resolved_at: datetime,
        agent: str | None,
        ticket_id: str | None,
    ) -> None:
        """support.handoff.resolved: what the agent did (the latest outcome counts)."""
        values = dict(outcome=outcome, resolved_at=resolved_at, agent=agent, ticket_id=ticket_id)
        await self._merge(handoff_id, customer_id, values)

    async def of_customer(self, customer_id: str, limit: int = 50) -> list[HandoffRow]:
        async with self.sessions() as s:
            rows = await s.scalars(
                select(HandoffRow)
                .where(HandoffRow.customer_id == customer_id)
                .order_by(HandoffRow.requested_at.desc())
                .limit(limit)
            )
            return list(reversed(rows.all()))

    async def latest(self, limit: int = 100) -> list[HandoffRow]:
        """The latest hand-offs of anyone, newest first (the studio's list)."""
        async with self.sessions() as s:
            rows = await s.scalars(
                select(HandoffRow)
                .where(HandoffRow.requested_at.is_not(None))
                .order_by(HandoffRow.requested_at.desc())
                .limit(limit)
            )
            return list(rows.all())

    async def erase(self, customer_id: str) -> int:
        """customer.erased: the customer's hand-offs go, summaries and all."""
        async with self.sessions() as s, s.begin():
            result: Any = await s.execute(
                delete(HandoffRow).where(HandoffRow.customer_id == customer_id)
            )
            return int(result.rowcount or 0)

    async def scrub_before(self, cutoff: datetime) -> int:
        """The retention: hand-offs asked for before `cutoff` keep why and what became of
        them, not the summaries (they quote the customer's reply)."""
        async with self.sessions() as s, s.begin():
            result: Any = await s.execute(
                update(HandoffRow)
                .where(HandoffRow.requested_at < cutoff, HandoffRow.scrubbed.is_(False))
                .values(summary=None, summary_local=None, scrubbed=True)
            )
            return int(result.rowcount or 0)
