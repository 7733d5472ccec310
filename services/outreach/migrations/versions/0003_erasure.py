"""Erasure that reaches the ledger: which customers were erased, and which rows have had
their personal data (address, names, bodies) scrubbed — by an erasure, or by the body
retention (OUTREACH_LEDGER_RETENTION_DAYS). The decision skeleton stays for the audit.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_customers",
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("scrubbed", sa.Boolean(), nullable=False, server_default="0"))
        batch.create_index("ix_deliveries_scrubbed", ["scrubbed"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_scrubbed")
        batch.drop_column("scrubbed")
    op.drop_table("erased_customers")
