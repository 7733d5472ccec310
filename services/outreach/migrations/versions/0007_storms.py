"""Storms (docs/storms.md): incidents counted by the scope of their cause, the storms
they made, every operator's decision about one, and on each message the storm its
incident belongs to.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storm_members",
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("incident_id", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("scope", "incident_id"),
    )
    op.create_index("ix_storm_members_incident_id", "storm_members", ["incident_id"])
    op.create_index("ix_storm_members_customer_id", "storm_members", ["customer_id"])
    op.create_index("ix_storm_members_scope_at", "storm_members", ["scope", "at"])
    op.create_index("ix_storm_members_at", "storm_members", ["at"])
    op.create_table(
        "storms",
        sa.Column("storm_id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("formed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("awaiting_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("storm_id"),
    )
    op.create_index("ix_storms_scope_seq", "storms", ["scope", "seq"], unique=True)
    op.create_index("ix_storms_last_at", "storms", ["last_at"])
    op.create_index("ix_storms_state", "storms", ["state"])
    op.create_table(
        "storm_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("storm_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("before", sa.String(length=16), nullable=False),
        sa.Column("after", sa.String(length=16), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_storm_log_storm_id", "storm_log", ["storm_id"])
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("storm_id", sa.String(length=32), nullable=True))
        batch.create_index("ix_deliveries_storm_id", ["storm_id"])


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_storm_id")
        batch.drop_column("storm_id")
    op.drop_table("storm_log")
    op.drop_table("storms")
    op.drop_table("storm_members")
