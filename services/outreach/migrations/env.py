"""Alembic environment for the outreach database (ledger, templates, kill switch, studio).

Run by `services.outreach.adapters.db.create_schema` on the connection it hands over in
`config.attributes["connection"]` (under a lock, so that workers and the studio starting
at once upgrade one after the other), or by the `alembic` command with a URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

from services.outreach.adapters.schema import all_tables

config = context.config
target_metadata = all_tables()


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    run(given)
else:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        run(connection)
