"""The outcome events (docs/outcomes.md): what happened to customers after our
decisions — orders, returns, refunds, feedback, support contacts, opt-outs — kept in
outreach's database by the outcome recorder (entrypoints/outcomes.py), read with the
experiments' exposures (each customer's first decision an experiment covered, written
when it is taken) by the outcome report (domain/outcomes.py).

Every fact is kept once (its event id); a refund or a cancellation, which name only
their order, is the customer's who placed it (an order recorded here, or one of our
decisions about it). An erasure removes a customer's facts; they are kept for the
ledger's retention and the longest outcome window after it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, String, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.metrics import OUTCOME_FACTS
from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.ledger import Delivery, ErasedCustomer
from services.outreach.domain import outcomes as domain
from services.outreach.domain.outcomes import Exposure, Fact

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


class ExperimentExposure(Base):
    """A customer's first decision an experiment covered and its arm could act on
    (domain/outcomes.py `exposures`): written when the decision is taken, the first one
    kept — the report measures from it."""

    __tablename__ = "experiment_exposures"

    experiment: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    subject: Mapped[str] = mapped_column(String(200))
    arm: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    decision_id: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    message_kind: Mapped[str] = mapped_column(String(64))
    intent: Mapped[str] = mapped_column(String(32))


class OutcomeStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        assert isinstance(bind, AsyncEngine)
        insert: Any = sqlite_insert if bind.dialect.name == "sqlite" else postgresql_insert
        # On the table, one row at a time: a Core insert, whose rowcount says whether the
        # row was new (the ORM's bulk form has none).
        self._insert = insert(OutcomeEvent.__table__).on_conflict_do_nothing()
        self._insert_exposure = insert(ExperimentExposure).on_conflict_do_nothing()

    async def record(
        self, fact: Fact, then: Callable[[AsyncSession], Awaitable[Any]] | None = None
    ) -> bool:
        """Keep a fact; True when it is new (a second copy of its event changes nothing).
        False too when whose it is is not known (a refund of an order neither recorded
        nor ever written about). `then` runs in the same transaction when it is new (the
        redemption of the codes an order carried: both, or neither)."""
        async with self.sessions() as s, s.begin():
            customer = fact.customer_id or await self._customer_of(s, fact.order_id)
            if customer is None:
                OUTCOME_FACTS.labels(fact.kind, "unknown_customer").inc()
                return False
            erased = await s.get(ErasedCustomer, customer)
            if erased is not None and fact.at <= erased.erased_at:
                OUTCOME_FACTS.labels(fact.kind, "erased").inc()
                return False  # from before an erasure, read after it
            added = await s.execute(
                self._insert.values(
                    event_id=fact.event_id,
                    customer_id=customer,
                    order_id=fact.order_id,
                    at=fact.at,
                    kind=fact.kind,
                    amount=None if fact.amount is None else str(fact.amount),
                    currency=fact.currency,
                    score=fact.score,
                    detail=(fact.detail or None) and fact.detail[:64],
                )
            )
            new = bool(added.rowcount == 1)  # type: ignore[attr-defined]
            if new and then is not None:
                await then(s)
        OUTCOME_FACTS.labels(fact.kind, "kept" if new else "duplicate").inc()
        return new

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
        """An erasure: the customer's facts and exposures go."""
        async with self.sessions() as s, s.begin():
            gone = await s.execute(
                delete(OutcomeEvent).where(OutcomeEvent.customer_id == customer_id)
            )
            await s.execute(
                delete(ExperimentExposure).where(ExperimentExposure.customer_id == customer_id)
            )
        return int(getattr(gone, "rowcount", 0) or 0)

    async def forget_before(self, cutoff: datetime) -> int:
        """The retention: facts and exposures from before `cutoff` go."""
        async with self.sessions() as s, s.begin():
            gone = await s.execute(delete(OutcomeEvent).where(OutcomeEvent.at < cutoff))
            await s.execute(delete(ExperimentExposure).where(ExperimentExposure.at < cutoff))
        return int(getattr(gone, "rowcount", 0) or 0)

    async def expose(self, decided: domain.Decided) -> None:
        """A decision's exposures (the first per experiment and customer is kept)."""
        rows = [
            {
                "experiment": e.experiment,
                "customer_id": e.customer_id,
                "subject": e.subject,
                "arm": e.arm,
                "at": e.at,
                "decision_id": decided.decision_id,
                "order_id": e.order_id,
                "message_kind": e.message_kind,
                "intent": e.intent,
            }
            for found in domain.exposures([decided]).values()
            for e in found
        ]
        if rows:
            async with self.sessions() as s, s.begin():
                await s.execute(self._insert_exposure, rows)

    async def exposures(self, since: datetime, until: datetime) -> dict[str, list[Exposure]]:
        """Per experiment, the customers first exposed between `since` and `until`."""
        query = select(ExperimentExposure).where(
            ExperimentExposure.at >= since, ExperimentExposure.at <= until
        )
        found: dict[str, list[Exposure]] = defaultdict(list)
        async with self.sessions() as s:
            for r in (await s.execute(query)).scalars():
                found[r.experiment].append(
                    Exposure(
                        r.experiment,
                        r.subject,
                        r.customer_id,
                        r.arm,
                        r.at,
                        r.order_id,
                        r.message_kind,
                        r.intent,
                    )
                )
        return dict(found)

    # --- for the report ----------------------------------------------------------------

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
