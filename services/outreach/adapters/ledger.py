"""The delivery ledger: one row per decision, its state machine, and an outbox of changes.

States (docs/delivery.md has the diagram):

    decided ─┬─> suppressed                      (a rule said no)
             ├─> scheduled ──> sending ...       (quiet hours, or sending paused)
             │       └──────> suppressed         (resolved meanwhile, expired)
             └─> sending ─┬─> sent ──> delivered | failed (provider webhooks)
                          ├─> failed             (permanent error, no fallback left)
                          └─> sending (next channel, on a permanent error)

The row is written in `sending` *before* the provider is called, so a crash between the
call and the commit leaves evidence: the row is in doubt, and is reconciled (by the
provider webhook carrying our decision id) instead of being sent blindly again.

Every change appends to `delivery_events`; a relay publishes unpublished rows to
`outreach.messages` (a transactional outbox), so no state change is lost to a crash
between the database commit and the Kafka send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Text, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.outreach.adapters.db import Base, UTCDateTime

TERMINAL = frozenset({"suppressed", "sent", "delivered", "failed"})
STATES = ("decided", "scheduled", "sending", *sorted(TERMINAL))


class Delivery(Base):
    __tablename__ = "deliveries"

    decision_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    order_id: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    cause_type: Mapped[str] = mapped_column(String(32))
    cause_id: Mapped[str] = mapped_column(String(128), index=True)
    cause_kind: Mapped[str] = mapped_column(String(64))
    intent: Mapped[str] = mapped_column(String(32))
    message_kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rule: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    time_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    template_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    template_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    body_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    body_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    outbox: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fallbacks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    offer_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class DeliveryEvent(Base):
    """Append-only history of every state change; also the outbox to `outreach.messages`."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    decision_id: Mapped[str] = mapped_column(String(64), index=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    published: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class ResolvedCause(Base):
    __tablename__ = "resolved_causes"

    cause_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    resolved_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolution: Mapped[str] = mapped_column(String(64))


class Ledger:
    """Async access to the ledger. Every method runs in its own transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def get(self, decision_id: str) -> Delivery | None:
        async with self.sessions() as s:
            return await s.get(Delivery, decision_id)

    async def by_request(self, request_id: str) -> Delivery | None:
        async with self.sessions() as s:
            result = await s.execute(select(Delivery).where(Delivery.request_id == request_id))
            return result.scalar_one_or_none()

    async def by_provider_id(self, provider_message_id: str) -> Delivery | None:
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery).where(Delivery.provider_message_id == provider_message_id)
            )
            return result.scalar_one_or_none()

    async def latest_to(self, channel: str, address: str) -> Delivery | None:
        """The most recent message to this address (to map an inbound STOP to a customer)."""
        channels = ("sms", "whatsapp") if channel in ("sms", "whatsapp") else (channel,)
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(Delivery.address == address, Delivery.channel.in_(channels))
                .order_by(Delivery.decided_at.desc())
                .limit(1)
            )
            return result.scalar_one_or_none()

    async def count_recent(self, customer_id: str, since: datetime) -> int:
        """Proactive messages to this customer since `since` (sent, or about to be)."""
        async with self.sessions() as s:
            sent = await s.execute(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.customer_id == customer_id,
                    Delivery.status.in_(("sending", "sent", "delivered")),
                    Delivery.sent_at >= since,
                )
            )
            pending = await s.execute(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.customer_id == customer_id,
                    Delivery.status == "scheduled",
                    Delivery.channel.is_not(None),  # held by a pause: not decided yet
                    Delivery.decided_at >= since,
                )
            )
            return int(sent.scalar_one()) + int(pending.scalar_one())

    async def count_by_status(self) -> dict[str, int]:
        """Rows per state (for `outreach_ledger_deliveries`); every state is present,
        and scheduled rows held by a pause are counted apart as `held`."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(Delivery.status, Delivery.send_at.is_(None), func.count()).group_by(
                    Delivery.status, Delivery.send_at.is_(None)
                )
            )
            counts = dict.fromkeys((*STATES, "held"), 0)
            for status, no_time, count in rows:
                key = "held" if status == "scheduled" and no_time else status
                counts[key] = counts.get(key, 0) + int(count)
            return counts

    async def is_resolved(self, cause_id: str) -> bool:
        async with self.sessions() as s:
            return await s.get(ResolvedCause, cause_id) is not None

    async def mark_resolved(self, cause_id: str, at: datetime, resolution: str) -> None:
        async with self.sessions() as s, s.begin():
            if await s.get(ResolvedCause, cause_id) is None:
                s.add(ResolvedCause(cause_id=cause_id, resolved_at=at, resolution=resolution))

    async def open_for_cause(self, cause_id: str) -> list[Delivery]:
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery).where(
                    Delivery.cause_id == cause_id, Delivery.status == "scheduled"
                )
            )
            return list(result.scalars())

    async def create(self, row: Delivery, event: DeliveryEvent) -> bool:
        """Insert a new decision with its first event; False if it already existed."""
        from sqlalchemy.exc import IntegrityError

        try:
            async with self.sessions() as s, s.begin():
                s.add(row)
                s.add(event)
            return True
        except IntegrityError:
            return False

    async def transition(
        self,
        decision_id: str,
        expected: tuple[str, ...],
        event: DeliveryEvent | None,
        **values: Any,
    ) -> bool:
        """Compare-and-set the row's state; the event is recorded in the same transaction.
        False if the row was not in an expected state (another worker moved it)."""
        async with self.sessions() as s, s.begin():
            result = await s.execute(
                update(Delivery)
                .where(Delivery.decision_id == decision_id, Delivery.status.in_(expected))
                .values(**values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if event is not None:
                s.add(event)
            return True

    async def due(self, now: datetime, limit: int = 100) -> list[Delivery]:
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(
                    Delivery.status == "scheduled",
                    Delivery.send_at.is_not(None),
                    Delivery.send_at <= now,
                )
                .order_by(Delivery.send_at)
                .limit(limit)
            )
            return list(result.scalars())

    async def held(self, limit: int = 100) -> list[Delivery]:
        """Scheduled with no time: held by a pause."""
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(Delivery.status == "scheduled", Delivery.send_at.is_(None))
                .limit(limit)
            )
            return list(result.scalars())

    async def in_doubt(self, older_than: datetime, limit: int = 100) -> list[Delivery]:
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(Delivery.status == "sending", Delivery.updated_at <= older_than)
                .limit(limit)
            )
            return list(result.scalars())

    async def unpublished(self, limit: int = 500) -> list[DeliveryEvent]:
        async with self.sessions() as s:
            result = await s.execute(
                select(DeliveryEvent)
                .where(DeliveryEvent.published.is_(False))
                .order_by(DeliveryEvent.id)
                .limit(limit)
            )
            return list(result.scalars())

    async def mark_published(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(DeliveryEvent).where(DeliveryEvent.id.in_(ids)).values(published=True)
            )

    async def history(
        self, customer_id: str | None = None, order_id: str | None = None, limit: int = 200
    ) -> list[Delivery]:
        async with self.sessions() as s:
            query = select(Delivery).order_by(Delivery.decided_at.desc()).limit(limit)
            if customer_id:
                query = query.where(Delivery.customer_id == customer_id)
            if order_id:
                query = query.where(Delivery.order_id == order_id)
            result = await s.execute(query)
            return list(result.scalars())

    async def events_of(self, decision_id: str) -> list[DeliveryEvent]:
        async with self.sessions() as s:
            result = await s.execute(
                select(DeliveryEvent)
                .where(DeliveryEvent.decision_id == decision_id)
                .order_by(DeliveryEvent.id)
            )
            return list(result.scalars())
