"""Fenced claims, leases and revisions: what the ledger needs so that no fault sends a
message twice (docs/reliability.md).

- deliveries.revision: the revision of its cause a message speaks of (newer supersedes);
- deliveries.lease_until / claimed_at: wall-clock lease of intermediate states and the
  time of the last claim (`attempts` is the fence: it grows with every claim);
- deliveries.failures: provider calls failed other than by throttling;
- deliveries.expires_at: when a message not yet sent is given up;
- leases: one worker at a time relays the ledger's events to outreach.messages;
- workers: which workers are up, and since when (were the webhooks reachable?).

Rows left in an intermediate state by an older version get a lease that has already run
out, so the sweeper settles them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_index("ix_workers_seen_at", "workers", ["seen_at"], unique=False)
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_deliveries_lease_until", ["lease_until"], unique=False)
    op.execute(
        "UPDATE deliveries SET lease_until = updated_at WHERE status IN ('decided', 'sending')"
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_lease_until")
        batch.drop_column("expires_at")
        batch.drop_column("failures")
        batch.drop_column("claimed_at")
        batch.drop_column("lease_until")
        batch.drop_column("revision")
    op.drop_index("ix_workers_seen_at", table_name="workers")
    op.drop_table("workers")
    op.drop_table("leases")
