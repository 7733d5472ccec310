"""Customers' replies (docs/conversations.md): the text, how it was read, the message it
answers, and whether what it set in motion has been handed over.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replies",
        sa.Column("reply_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision_id", sa.String(length=64), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("command", sa.String(length=8), nullable=True),
        sa.Column("intent", sa.String(length=32), nullable=False),
        sa.Column("tone", sa.String(length=16), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("classifier", sa.String(length=64), nullable=False),
        sa.Column("handoff_id", sa.String(length=64), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("scrubbed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("reply_id"),
    )
    op.create_index("ix_replies_customer_id", "replies", ["customer_id"])
    op.create_index("ix_replies_received_at", "replies", ["received_at"])
    op.create_index("ix_replies_decision_id", "replies", ["decision_id"])
    op.create_index("ix_replies_done", "replies", ["done"])


def downgrade() -> None:
    op.drop_table("replies")
