"""Initial schema: tickets, messages, ticket_events (outbox + audit trail), deliveries (ledger).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("requester_email", sa.String(320)),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("category", sa.String(16)),
        sa.Column("assignee_id", sa.String(255)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("resolved_at", TZ),
        sa.Column("closed_at", TZ),
        sa.Column("first_admin_reply_at", TZ),
        sa.Column("sla_due_at", TZ),
        sa.Column("sla_breached_at", TZ),
        sa.CheckConstraint(
            "status IN ('open','in_progress','resolved','closed')", name="tickets_status_valid"
        ),
        sa.CheckConstraint(
            "priority IN ('low','normal','high','urgent')", name="tickets_priority_valid"
        ),
        sa.CheckConstraint(
            "category IS NULL OR category IN ('billing','technical','account','other')",
            name="tickets_category_valid",
        ),
    )
    # The user list and the admin list are both "newest first".
    op.create_index(
        "tickets_user_created", "tickets", ["user_id", sa.text("created_at DESC"), sa.text("id DESC")]
    )
    op.create_index(
        "tickets_status_created", "tickets", ["status", sa.text("created_at DESC"), sa.text("id DESC")]
    )
    op.create_index("tickets_created", "tickets", [sa.text("created_at DESC"), sa.text("id DESC")])
    # Timer sweeps only look at tickets whose timer is still armed.
    op.create_index(
        "tickets_sla_armed",
        "tickets",
        ["sla_due_at"],
        postgresql_where=sa.text(
            "sla_due_at IS NOT NULL AND sla_breached_at IS NULL AND first_admin_reply_at IS NULL"
        ),
    )
    op.create_index(
        "tickets_resolved_due",
        "tickets",
        ["resolved_at"],
        postgresql_where=sa.text("status = 'resolved'"),
    )

    op.create_table(
        "messages",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column(
            "ticket_id",
            sa.String(26),
            sa.ForeignKey("tickets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("author_id", sa.String(255), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("messages_ticket", "messages", ["ticket_id", "created_at"])

    op.create_table(
        "ticket_events",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column(
            "ticket_id",
            sa.String(26),
            sa.ForeignKey("tickets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("actor_id", sa.String(255)),
        sa.Column("actor_is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("published_at", TZ),
        sa.Column("publish_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed_at", TZ),
    )
    op.create_index("ticket_events_ticket", "ticket_events", ["ticket_id", "id"])
    # The outbox sweep reads only what is not yet handled; keep that index small.
    op.create_index(
        "ticket_events_unhandled",
        "ticket_events",
        ["id"],
        postgresql_where=sa.text("completed_at IS NULL"),
    )

    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column(
            "event_id",
            sa.String(26),
            sa.ForeignKey("ticket_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("sent_at", TZ),
        sa.UniqueConstraint("event_id", "channel", "recipient", name="deliveries_once"),
        sa.CheckConstraint("status IN ('pending','sent','failed')", name="deliveries_status_valid"),
    )
    op.create_index(
        "deliveries_failed", "deliveries", ["updated_at"], postgresql_where=sa.text("status = 'failed'")
    )


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("ticket_events")
    op.drop_table("messages")
    op.drop_table("tickets")
