"""The outreach database: delivery ledger and template store share one engine.

SQLite (a file under the data dir) by default, PostgreSQL in production through
`OUTREACH_DATABASE_URL`. URLs are given in their plain form (`sqlite:///path`,
`postgresql://user@host/db`) and mapped to the async drivers here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, event, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from common.schema_lock import file_lock, sqlite_lock_path


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite would hand them back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def async_url(url: str) -> str:
    if url.startswith("sqlite:///") or url.startswith("sqlite://"):
        return url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def create_engine(url: str) -> AsyncEngine:
    # hide_parameters: errors name the statement, never the values bound to it (an
    # address, a message body).
    # A server's connections may go stale (a restart, a failover): each is pinged when
    # taken from the pool. A SQLite file's cannot, and the ping cost a statement per use.
    sqlite = async_url(url).startswith("sqlite")
    engine = create_async_engine(async_url(url), pool_pre_ping=not sqlite, hide_parameters=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the studio read while a worker writes; a busy timeout instead of
            # "database is locked" when two processes share the file.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
_LOCK_KEY = 0x6F757472  # pg_advisory_lock key of outreach's schema upgrades ("outr")


async def create_schema(engine: AsyncEngine) -> None:
    """Upgrade the database to the newest migration (services/outreach/migrations).

    Workers and the studio sharing a database may start at once: they upgrade one after
    the other, under an advisory lock on PostgreSQL and a file lock beside a SQLite file.
    A database made before outreach had migrations (tables, no version) is adopted at
    the first revision, which is the schema it has."""
    if engine.dialect.name == "sqlite":
        with file_lock(sqlite_lock_path(engine.url.database)):
            async with engine.connect() as conn:
                await conn.run_sync(_upgrade)
        return
    async with engine.connect() as conn:
        await conn.exec_driver_sql(f"SELECT pg_advisory_lock({_LOCK_KEY})")
        try:
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_KEY})")


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    tables = set(inspect(connection).get_table_names())
    if "deliveries" in tables and "alembic_version" not in tables:
        command.stamp(config, "0001")
    command.upgrade(config, "head")
    connection.commit()
