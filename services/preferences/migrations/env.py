"""Alembic environment for the preferences database (sync driver, run at start-up)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from services.preferences.adapters.store import Base

config = context.config
target_metadata = Base.metadata

connectable = engine_from_config(
    config.get_section(config.config_ini_section) or {},
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
