"""The outcome events (docs/outcomes.md): what happened to customers after our
decisions — orders, returns, refunds, feedback, support contacts, opt-outs — kept in
outreach's database by the outcome recorder (entrypoints/outcomes.py), read with the
ledger's decisions by the outcome report (domain/outcomes.py).

Every fact is kept once (its event id); a refund or a cancellation, which name only
their order, is the customer's who placed it (an order recorded here, or one of our
decisions about it). An erasure removes a customer's facts; they are kept for the
ledger's retention and the longest outcome window after it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, String, delete, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.ledger import Delivery
from services.outreach.domain import outcomes as domain
from services.outreach.domain.outcomes import Fact

CHUNK = 500  # customers per query


class OutcomeEvent(Base):
    __tablename__ = "outcome_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    order_id: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[str | None] = mapped_column(String(32), nullable=True)  # a decimal
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(String(64), nullable=True)


class OutcomeStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        assert isinstance(bind, AsyncEngine)
        insert: Any = sqlite_insert if bind.dialect.name == "sqlite" else postgresql_insert
        self._insert = insert(OutcomeEvent).on_conflict_do_nothing()

    async def record(self, fact: Fact) -> bool:
        """Keep a fact (a second copy of its event changes nothing). False: whose it is
        is not known (a refund of an order neither recorded nor ever written about)."""
        async with self.sessions() as s, s.begin():
            customer = fact.customer_id or await self._customer_of(s, fact.order_id)
            if customer is None:
                return False
            await s.execute(
                self._insert,
                [
                    {
                        "event_id": fact.event_id,
                        "customer_id": customer,
                        "order_id": fact.order_id,
                        "at": fact.at,
                        "kind": fact.kind,
                        "amount": None if fact.amount is None else str(fact.amount),
                        "currency": fact.currency,
                        "score": fact.score,
                        "detail": (fact.detail or None) and fact.detail[:64],
                    }
                ],
            )
        return True

    @staticmethod
    async def _customer_of(s: AsyncSession, order_id: str | None) -> str | None:
        if order_id is None:
            return None
        for query in (
            select(OutcomeEvent.customer_id).where(
                OutcomeEvent.order_id == order_id, OutcomeEvent.kind == domain.ORDER
            ),
            select(Delivery.customer_id).where(Delivery.order_id == order_id),
        ):
            found = (await s.execute(query.limit(1))).scalar_one_or_none()
            if found is not None:
                return str(found)
        return None

    async def forget_customer(self, customer_id: str) -> int:
        async with self.sessions() as s, s.begin():
            gone = await s.execute(
                delete(OutcomeEvent).where(OutcomeEvent.customer_id == customer_id)
            )
        return int(getattr(gone, "rowcount", 0) or 0)

    async def forget_before(self, wall: datetime, keep: timedelta) -> int:
        """Facts older than `keep`, counted back from the newest one if that is before
        `wall` (a replay of an old period keeps its facts while it is read)."""
        async with self.sessions() as s, s.begin():
            newest = (await s.execute(select(func.max(OutcomeEvent.at)))).scalar_one_or_none()
            cutoff = min(wall, newest or wall) - keep
            gone = await s.execute(delete(OutcomeEvent).where(OutcomeEvent.at < cutoff))
        return int(getattr(gone, "rowcount", 0) or 0)

    # --- for the report ----------------------------------------------------------------

    async def decisions(self, since: datetime, until: datetime) -> list[domain.Decided]:
        """The decisions of the period that experiments covered."""
        query = select(
            Delivery.decision_id,
            Delivery.customer_id,
            Delivery.order_id,
            Delivery.decided_at,
            Delivery.message_kind,
            Delivery.intent,
            Delivery.status,
            Delivery.experiments,
        ).where(Delivery.decided_at >= since, Delivery.decided_at <= until)
        async with self.sessions() as s:
            rows = (await s.execute(query)).all()
        return [
            domain.Decided(
                decision_id=r.decision_id,
                customer_id=r.customer_id,
                order_id=r.order_id,
                decided_at=r.decided_at,
                message_kind=r.message_kind,
                intent=r.intent,
                status=r.status,
                arms=r.experiments,
            )
            for r in rows
            if r.experiments
        ]

    async def facts(self, customers: Iterable[str], since: datetime) -> dict[str, list[Fact]]:
        """Each customer's facts from `since` on, earliest first."""
        found: dict[str, list[Fact]] = defaultdict(list)
        wanted = sorted(set(customers))
        async with self.sessions() as s:
            for start in range(0, len(wanted), CHUNK):
                chunk: Sequence[str] = wanted[start : start + CHUNK]
                query = (
                    select(OutcomeEvent)
                    .where(OutcomeEvent.customer_id.in_(chunk), OutcomeEvent.at > since)
                    .order_by(OutcomeEvent.at)
                )
                for row in (await s.execute(query)).scalars():
                    found[row.customer_id].append(
                        Fact(
                            row.event_id, row.customer_id, row.order_id, row.at, row.kind,
                            None if row.amount is None else Decimal(row.amount),
                            row.currency, row.score, row.detail,
                        )
                    )  # fmt: skip
        return dict(found)
