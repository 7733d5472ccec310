"""The outreach database as it was before migrations: the delivery ledger, its events
and resolved causes, the template store, the kill switch, and the studio's accounts.

A database created before outreach had migrations (by `create_all`) is adopted at this
revision (stamped) and upgraded from here.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=True),
        sa.Column("cause_type", sa.String(length=32), nullable=False),
        sa.Column("cause_id", sa.String(length=128), nullable=False),
        sa.Column("cause_kind", sa.String(length=64), nullable=False),
        sa.Column("intent", sa.String(length=32), nullable=False),
        sa.Column("message_kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("time_zone", sa.String(length=64), nullable=True),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("template_key", sa.String(length=200), nullable=True),
        sa.Column("template_version", sa.Integer(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("outbox", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("fallbacks", sa.JSON(), nullable=False),
        sa.Column("offer_code", sa.String(length=64), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("decision_id"),
    )
    op.create_index(op.f("ix_deliveries_cause_id"), "deliveries", ["cause_id"], unique=False)
    op.create_index(op.f("ix_deliveries_customer_id"), "deliveries", ["customer_id"], unique=False)
    op.create_index(op.f("ix_deliveries_order_id"), "deliveries", ["order_id"], unique=False)
    op.create_index(
        op.f("ix_deliveries_provider_message_id"),
        "deliveries",
        ["provider_message_id"],
        unique=False,
    )
    op.create_index(op.f("ix_deliveries_request_id"), "deliveries", ["request_id"], unique=True)
    op.create_index(op.f("ix_deliveries_send_at"), "deliveries", ["send_at"], unique=False)
    op.create_index(op.f("ix_deliveries_sent_at"), "deliveries", ["sent_at"], unique=False)
    op.create_index(op.f("ix_deliveries_status"), "deliveries", ["status"], unique=False)
    op.create_table(
        "delivery_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        op.f("ix_delivery_events_customer_id"), "delivery_events", ["customer_id"], unique=False
    )
    op.create_index(
        op.f("ix_delivery_events_decision_id"), "delivery_events", ["decision_id"], unique=False
    )
    op.create_index(
        op.f("ix_delivery_events_published"), "delivery_events", ["published"], unique=False
    )
    op.create_table(
        "resolved_causes",
        sa.Column("cause_id", sa.String(length=128), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolution", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("cause_id"),
    )
    op.create_table(
        "sending_control_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ramp_minutes", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_sending_control_log_at"), "sending_control_log", ["at"], unique=False)
    op.create_table(
        "sending_controls",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ramp_minutes", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )
    op.create_table(
        "studio_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_studio_audit_action"), "studio_audit", ["action"], unique=False)
    op.create_index(op.f("ix_studio_audit_actor"), "studio_audit", ["actor"], unique=False)
    op.create_index(op.f("ix_studio_audit_at"), "studio_audit", ["at"], unique=False)
    op.create_index(op.f("ix_studio_audit_target"), "studio_audit", ["target"], unique=False)
    op.create_table(
        "studio_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_studio_sessions_expires_at"), "studio_sessions", ["expires_at"], unique=False
    )
    op.create_index(
        op.f("ix_studio_sessions_username"), "studio_sessions", ["username"], unique=False
    )
    op.create_table(
        "studio_test_sends",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("send_key", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("template_key", sa.String(length=200), nullable=False),
        sa.Column("based_on_version", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("to", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("outbox", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("send_key"),
    )
    op.create_index(
        op.f("ix_studio_test_sends_actor"), "studio_test_sends", ["actor"], unique=False
    )
    op.create_index(op.f("ix_studio_test_sends_at"), "studio_test_sends", ["at"], unique=False)
    op.create_table(
        "studio_users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "template_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "template_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_kind", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_kind", "channel", "locale", "version"),
    )
    op.create_index(
        op.f("ix_template_versions_message_kind"),
        "template_versions",
        ["message_kind"],
        unique=False,
    )
    op.create_index(
        op.f("ix_template_versions_status"), "template_versions", ["status"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_template_versions_status"), table_name="template_versions")
    op.drop_index(op.f("ix_template_versions_message_kind"), table_name="template_versions")
    op.drop_table("template_versions")
    op.drop_table("template_revision")
    op.drop_table("studio_users")
    op.drop_index(op.f("ix_studio_test_sends_at"), table_name="studio_test_sends")
    op.drop_index(op.f("ix_studio_test_sends_actor"), table_name="studio_test_sends")
    op.drop_table("studio_test_sends")
    op.drop_index(op.f("ix_studio_sessions_username"), table_name="studio_sessions")
    op.drop_index(op.f("ix_studio_sessions_expires_at"), table_name="studio_sessions")
    op.drop_table("studio_sessions")
    op.drop_index(op.f("ix_studio_audit_target"), table_name="studio_audit")
    op.drop_index(op.f("ix_studio_audit_at"), table_name="studio_audit")
    op.drop_index(op.f("ix_studio_audit_actor"), table_name="studio_audit")
    op.drop_index(op.f("ix_studio_audit_action"), table_name="studio_audit")
    op.drop_table("studio_audit")
    op.drop_table("sending_controls")
    op.drop_index(op.f("ix_sending_control_log_at"), table_name="sending_control_log")
    op.drop_table("sending_control_log")
    op.drop_table("resolved_causes")
    op.drop_index(op.f("ix_delivery_events_published"), table_name="delivery_events")
    op.drop_index(op.f("ix_delivery_events_decision_id"), table_name="delivery_events")
    op.drop_index(op.f("ix_delivery_events_customer_id"), table_name="delivery_events")
    op.drop_table("delivery_events")
    op.drop_index(op.f("ix_deliveries_status"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_sent_at"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_send_at"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_request_id"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_provider_message_id"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_order_id"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_customer_id"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_cause_id"), table_name="deliveries")
    op.drop_table("deliveries")
