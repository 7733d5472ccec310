"""Experiments and outcomes (docs/outcomes.md): each decision records the arm of every
experiment that covers it, each customer's first exposure to an experiment is kept
(experiment_exposures), and what happened to customers afterwards (outcome_events), for
the outcome report.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("experiments", sa.JSON(), nullable=True))
    op.create_table(
        "outcome_events",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_outcome_events_customer_id", "outcome_events", ["customer_id"])
    op.create_index("ix_outcome_events_order_id", "outcome_events", ["order_id"])
    op.create_index("ix_outcome_events_at", "outcome_events", ["at"])
    op.create_table(
        "experiment_exposures",
        sa.Column("experiment", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=True),
        sa.Column("message_kind", sa.String(length=64), nullable=False),
        sa.Column("intent", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("experiment", "customer_id"),
    )
    op.create_index("ix_experiment_exposures_customer_id", "experiment_exposures", ["customer_id"])
    op.create_index("ix_experiment_exposures_at", "experiment_exposures", ["at"])


def downgrade() -> None:
    op.drop_table("experiment_exposures")
    op.drop_table("outcome_events")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("experiments")
