"""outreach's schema is owned by its migrations (services/outreach/migrations): a fresh
database upgrades to exactly the tables the code declares, a database made before there
were migrations is adopted, and workers starting at once upgrade it once (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from services.outreach.adapters.db import create_engine, create_schema
from services.outreach.adapters.schema import all_tables
from tests.e2e.stack import ROOT

pytestmark = pytest.mark.integration


async def differences(engine) -> list:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), all_tables())
        )


async def test_a_fresh_database_gets_exactly_the_declared_schema(database_url):
    engine = create_engine(database_url)
    try:
        await create_schema(engine)
        await create_schema(engine)  # idempotent
        assert await differences(engine) == []
    finally:
        await engine.dispose()


async def test_a_database_from_before_migrations_is_adopted_and_upgraded(database_url):
    from alembic import command
    from alembic.config import Config

    from services.outreach.adapters.db import MIGRATIONS

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:

            def old_schema(sync):
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = sync
                command.upgrade(config, "0001")
                sync.execute(text("DROP TABLE alembic_version"))  # as create_all left it
                sync.execute(
                    text(
                        "INSERT INTO deliveries (decision_id, request_id, customer_id, "
                        "cause_type, cause_id, cause_kind, intent, message_kind, severity, "
                        "category, status, rule, decided_at, updated_at, outbox, attempts, "
                        "fallbacks, request) VALUES ('d-1', 'r-1', 'c-1', 'incident', 'i-1', "
                        "'delivery_late', 'apology', 'delivery_late', 'warning', 'service', "
                        "'sending', '', :t, :t, false, 1, '[]', '{}')"
                    ),
                    {"t": datetime(2026, 3, 1, tzinfo=UTC)},
                )
                sync.commit()

            await conn.run_sync(old_schema)
        await create_schema(engine)
        assert await differences(engine) == []
        async with engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT revision, failures, lease_until FROM deliveries"))
            ).one()
        # A send an older version left in flight gets a lease that already ran out.
        assert row[0] == 1 and row[1] == 0 and row[2] is not None
    finally:
        await engine.dispose()


def test_workers_starting_at_once_upgrade_one_after_the_other(database_url):
    script = (
        "import asyncio, sys\n"
        "from services.outreach.adapters.db import create_engine, create_schema\n"
        "async def main():\n"
        "    engine = create_engine(sys.argv[1])\n"
        "    await create_schema(engine)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    engine = create_engine(database_url)

    async def check():
        try:
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            assert "deliveries" in tables and "leases" in tables
            assert await differences(engine) == []
        finally:
            await engine.dispose()

    asyncio.run(check())
