"""Every hand-off of a customer and what the agent did with it, for the studio's
conversation view (docs/conversations.md, "The conversation view").

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("handoff_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=True),
        sa.Column("order_ids", sa.JSON(), nullable=False),
        sa.Column("risk_score", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("summary_local", sa.Text(), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("incident", sa.JSON(), nullable=True),
        sa.Column("reply_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("agent", sa.String(length=200), nullable=True),
        sa.Column("ticket_id", sa.String(length=64), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scrubbed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("handoff_id"),
    )
    op.create_index("ix_handoffs_customer_id", "handoffs", ["customer_id"])
    op.create_index("ix_handoffs_requested_at", "handoffs", ["requested_at"])


def downgrade() -> None:
    op.drop_table("handoffs")
