"""Remedies (docs/remedies.md): the remedy policy's versions, the budget spent per
period, and each decision's grant (its remedy or why none, its code, its redemption).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remedy_policies",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=64), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_index("ix_remedy_policies_status", "remedy_policies", ["status"])
    op.create_table(
        "remedy_budgets",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("spent_cents", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("period"),
    )
    op.create_table(
        "remedy_grants",
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=True),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("value", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("cost_cents", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redeemed_order_id", sa.String(length=200), nullable=True),
        sa.Column("context", sa.String(length=120), nullable=True),
        sa.Column("arm", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("decision_id"),
        sa.UniqueConstraint("code"),
    )
    op.create_index("ix_remedy_grants_customer_id", "remedy_grants", ["customer_id"])
    op.create_index("ix_remedy_grants_period", "remedy_grants", ["period"])
    op.create_index("ix_remedy_grants_granted_at", "remedy_grants", ["granted_at"])
    op.create_index(
        "ix_remedy_grants_context_granted_at", "remedy_grants", ["context", "granted_at"]
    )


def downgrade() -> None:
    op.drop_table("remedy_grants")
    op.drop_table("remedy_budgets")
    op.drop_table("remedy_policies")
