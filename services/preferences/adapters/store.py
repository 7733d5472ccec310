"""Preferences storage: SQLAlchemy 2 (async) on SQLite by default, PostgreSQL in production.

The schema is owned by Alembic (services/preferences/migrations); `migrate()` upgrades to
head at start-up. Consent records are only ever inserted. Erasure deletes the customer
row, rewrites their consent records under a pseudonym (kept as the legal record) and
leaves a tombstone so that a replayed upsert cannot bring the person back.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from sqlalchemy import (
    Boolean,
    DateTime,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    delete,
    func,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from common.clock import wall_now
from common.schema_lock import file_lock, sqlite_lock_path
from services.preferences.adapters.change_feed import NOTIFY_CHANNEL, Change
from services.preferences.domain.model import ConsentRecord, Customer


class Base(DeclarativeBase):
    pass


class CustomerRow(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    first_name: Mapped[str] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(32), nullable=True)
    locale: Mapped[str] = mapped_column(String(35))
    time_zone: Mapped[str] = mapped_column(String(64))
    quiet_start: Mapped[str] = mapped_column(String(5), default="21:00")
    quiet_end: Mapped[str] = mapped_column(String(5), default="08:00")
    channel_order: Mapped[str] = mapped_column(String(64), default="email,sms,whatsapp")
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConsentRow(Base):
    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    category: Mapped[str] = mapped_column(String(16))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    evidence: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TombstoneRow(Base):
    __tablename__ = "tombstones"

    pseudonym: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProcessedEventRow(Base):
    """Input event ids already applied (a redelivered event has no second effect)."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def async_url(url: str) -> str:
    if url.startswith("sqlite://"):
        return url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def sync_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


_LOCK_KEY = 0x70726566  # pg_advisory_lock key of preferences' schema upgrades ("pref")


def migrate(url: str) -> None:
    """Upgrade the schema to the newest Alembic revision (idempotent), one process at a
    time (common/schema_lock.py): replicas and the migrations Job may start together."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    config = Config()
    config.set_main_option(
        "script_location", str(Path(__file__).resolve().parents[1] / "migrations")
    )
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    target = make_url(sync_url(url))
    if target.get_backend_name() == "sqlite":
        with file_lock(sqlite_lock_path(target.database)):
            command.upgrade(config, "head")
        return
    engine = create_engine(target, poolclass=NullPool)
    try:
        with engine.connect() as conn:  # holds the lock while alembic upgrades on its own
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_LOCK_KEY})")
            try:
                command.upgrade(config, "head")
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
    finally:
        engine.dispose()


def _hhmm(t: time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def _time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _load_query() -> Select[Any]:
    """A customer row joined with their consent records, oldest first (none: one row of
    NULLs on the consent side; an unknown customer: no rows)."""
    customer, consent = CustomerRow.__table__.c, ConsentRow.__table__.c
    return (
        select(
            *customer,
            consent.id.label("consent_id"),
            consent.channel.label("consent_channel"),
            consent.category,
            consent.granted,
            consent.source,
            consent.occurred_at,
            consent.evidence,
        )
        .select_from(
            CustomerRow.__table__.outerjoin(
                ConsentRow.__table__, consent.customer_id == customer.customer_id
            )
        )
        .where(customer.customer_id == bindparam("customer_id"))
        .order_by(consent.id)
    )


def _customer(rows: Sequence[Mapping[str, Any]]) -> Customer | None:
    if not rows:
        return None
    row = rows[0]
    return Customer(
        customer_id=row["customer_id"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        email=row["email"],
        phone=row["phone"],
        locale=row["locale"],
        time_zone=row["time_zone"],
        quiet_start=_time(row["quiet_start"]),
        quiet_end=_time(row["quiet_end"]),
        channel_order=tuple(c for c in row["channel_order"].split(",") if c),
        consents=[
            ConsentRecord(
                r["consent_channel"],
                r["category"],
                r["granted"],
                r["source"],
                _aware(r["occurred_at"]),
                r["evidence"],
            )
            for r in rows
            if r["consent_id"] is not None
        ],
        version=row["version"],
    )


_DISCONNECTS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
)


def postgres_dsn(url: str) -> str:
    """The database URL as asyncpg takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(False)


async def _keep_session(connection: Any) -> None:
    """The read pool's connections only ever run one autocommit SELECT: no session state
    to reset on release, so no reset query (a round trip per call otherwise)."""


class _PostgresReads:
    """GetContactPlan's read on PostgreSQL through asyncpg itself: its own small pool,
    the statement compiled once from the SQLAlchemy query and prepared per connection.
    Writes stay on SQLAlchemy (one transaction each, far rarer than reads)."""

    def __init__(self, url: str, max_size: int) -> None:
        self.dsn = postgres_dsn(url)
        self.max_size = max_size
        self.sql = str(_load_query().compile(dialect=PGDialect_asyncpg()))  # type: ignore[no-untyped-call]
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def pool(self) -> Any:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=1, max_size=self.max_size, reset=_keep_session
                    )
        return self._pool

    async def load(self, customer_id: str) -> list[Any]:
        pool = await self.pool()
        for attempt in (1, 2):
            try:
                async with pool.acquire() as conn:
                    return list(await conn.fetch(self.sql, customer_id))
            except _DISCONNECTS:
                # A pooled connection found dead (the database restarted, an operator
                # ended the session): the pool replaces it; the read is tried once more.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


class PreferencesStorePort(Protocol):
    """The customer store as preferences uses it: `PreferencesStore` on SQL (SQLite,
    PostgreSQL), `adapters/memory_store.py`'s `InMemoryPreferencesStore` for unit tests;
    tests/contract/test_preferences_store.py holds the two to the same behaviour."""

    def pseudonym(self, customer_id: str) -> str: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...
    async def load(self, customer_id: str) -> Customer | None: ...
    async def is_erased(self, customer_id: str) -> bool: ...
    async def seen(self, event_id: str) -> bool: ...
    async def save(
        self,
        customer: Customer,
        new_consents: list[ConsentRecord],
        event_id: str | None = None,
        kind: str = "upserted",
    ) -> Change: ...
    async def mark_processed(self, event_id: str) -> None: ...
    async def erase(self, customer_id: str, event_id: str | None = None) -> bool: ...


def pseudonym(salt: str, customer_id: str) -> str:
    """What stands for an erased customer in the consent history and the tombstones."""
    return hmac.new(salt.encode(), customer_id.encode(), hashlib.sha256).hexdigest()


def minutes(moment: time) -> time:
    """A quiet-hours bound as the store keeps it: to the minute."""
    return _time(_hhmm(moment))


class PreferencesStore:
    def __init__(self, url: str, pseudonym_salt: str, read_pool_size: int = 10) -> None:
        self.url = url
        self.salt = pseudonym_salt
        # No pre-ping (a round trip before every checkout, ~40 % of a GetContactPlan's
        # CPU): connections are recycled after 30 minutes, and `load` retries a read on a
        # connection found dead; a write on one fails and is retried by its caller.
        # hide_parameters: errors name the statement, never a customer's values.
        self.engine: AsyncEngine = create_async_engine(
            async_url(url), pool_recycle=1800, hide_parameters=True
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._load_query = _load_query()
        self._pg = (
            _PostgresReads(url, max_size=read_pool_size)
            if self.engine.dialect.name == "postgresql"
            else None
        )

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()
        await self.engine.dispose()

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return True

    def pseudonym(self, customer_id: str) -> str:
        return pseudonym(self.salt, customer_id)

    async def load(self, customer_id: str) -> Customer | None:
        """The customer with their consent history, in one round trip: the hot path of
        GetContactPlan. On PostgreSQL it goes straight to asyncpg (a prepared statement,
        no SQLAlchemy: a third of the CPU); elsewhere one joined Core SELECT."""
        if self._pg is not None:
            return _customer(await self._pg.load(customer_id))
        for attempt in (1, 2):
            try:
                async with self.engine.connect() as conn:
                    result = await conn.execute(self._load_query, {"customer_id": customer_id})
                    rows = [row._mapping for row in result]
                break
            except DBAPIError as exc:
                # Without a pre-ping a pooled connection may be dead (the database
                # restarted): it is dropped from the pool, and the read is tried once more.
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        return _customer(rows)

    async def is_erased(self, customer_id: str) -> bool:
        async with self.sessions() as s:
            return await s.get(TombstoneRow, self.pseudonym(customer_id)) is not None

    async def seen(self, event_id: str) -> bool:
        async with self.sessions() as s:
            return await s.get(ProcessedEventRow, event_id) is not None

    async def save(
        self,
        customer: Customer,
        new_consents: list[ConsentRecord],
        event_id: str | None = None,
        kind: str = "upserted",
    ) -> Change:
        """Write the customer and append the consent records in one transaction; returns
        the change (new version, `kind`). On PostgreSQL the transaction also announces it
        to every process's change feed."""
        now = wall_now()
        async with self.sessions() as s, s.begin():
            row = await s.get(CustomerRow, customer.customer_id)
            if row is None:
                row = CustomerRow(customer_id=customer.customer_id, version=0)
                s.add(row)
            row.first_name = customer.first_name
            row.last_name = customer.last_name
            row.email = customer.email
            row.phone = customer.phone
            row.locale = customer.locale
            row.time_zone = customer.time_zone
            row.quiet_start = _hhmm(customer.quiet_start)
            row.quiet_end = _hhmm(customer.quiet_end)
            row.channel_order = ",".join(customer.channel_order)
            row.version = (row.version or 0) + 1
            row.updated_at = now
            for c in new_consents:
                s.add(
                    ConsentRow(
                        customer_id=customer.customer_id,
                        channel=c.channel,
                        category=c.category,
                        granted=c.granted,
                        source=c.source,
                        occurred_at=c.occurred_at,
                        evidence=c.evidence,
                        recorded_at=now,
                    )
                )
            if event_id is not None:
                s.add(ProcessedEventRow(event_id=event_id, processed_at=now))
            change = Change(customer.customer_id, row.version, kind)
            await self._announce(s, change)
        customer.version = change.version
        return change

    async def mark_processed(self, event_id: str) -> None:
        async with self.sessions() as s, s.begin():
            if await s.get(ProcessedEventRow, event_id) is None:
                s.add(ProcessedEventRow(event_id=event_id, processed_at=wall_now()))

    async def erase(self, customer_id: str, event_id: str | None = None) -> bool:
        pseudonym = self.pseudonym(customer_id)
        now = wall_now()
        async with self.sessions() as s, s.begin():
            existed = await s.get(CustomerRow, customer_id) is not None
            await s.execute(delete(CustomerRow).where(CustomerRow.customer_id == customer_id))
            # The consent history is the legal record: keep it, under the pseudonym only.
            await s.execute(
                update(ConsentRow)
                .where(ConsentRow.customer_id == customer_id)
                .values(customer_id=pseudonym, evidence="")
            )
            if await s.get(TombstoneRow, pseudonym) is None:
                s.add(TombstoneRow(pseudonym=pseudonym, erased_at=now))
            if event_id is not None and await s.get(ProcessedEventRow, event_id) is None:
                s.add(ProcessedEventRow(event_id=event_id, processed_at=now))
            await self._announce(s, Change(customer_id, 0, "erased"))
        return existed

    async def _announce(self, session: AsyncSession, change: Change) -> None:
        """NOTIFY inside the write's transaction: heard on commit, never for a rollback."""
        if self._pg is not None:
            await session.execute(select(func.pg_notify(NOTIFY_CHANNEL, change.payload())))
