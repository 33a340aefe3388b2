"""SLA clocks: one row per ticket and SLA target (domain/sla_clocks.py), with partial indexes for
the sweep's two rules, and a first-response row for every ticket that has a deadline today (so
the admin view shows it from the start).

Revision ID: 0006_sla_clocks
Revises: 0005_webhooks
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_sla_clocks"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sla_clocks",
        sa.Column(
            "ticket_id",
            sa.String(26),
            sa.ForeignKey("tickets.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("target", sa.String(16), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("allowed_s", sa.Double, nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.Column("warn_at", TZ),
        sa.Column("warned_at", TZ),
        sa.Column("breached_at", TZ),
        sa.Column("met_at", TZ),
        sa.Column("paused_at", TZ),
        # Fingerprint of the policy that planned the clock (NULL: planned before policies).
        sa.Column("policy", sa.String(16)),
        sa.CheckConstraint(
            "target IN ('first_response','next_response','resolution')",
            name="sla_clocks_target_valid",
        ),
        sa.CheckConstraint(
            "state IN ('running','paused','met','breached')", name="sla_clocks_state_valid"
        ),
    )
    # The sweep reads only running clocks with something left to fire; keep those indexes small.
    op.create_index(
        "sla_clocks_warn_due",
        "sla_clocks",
        ["warn_at"],
        postgresql_where=sa.text("state = 'running' AND warned_at IS NULL AND breached_at IS NULL"),
    )
    op.create_index(
        "sla_clocks_breach_due",
        "sla_clocks",
        ["due_at"],
        postgresql_where=sa.text("state = 'running' AND breached_at IS NULL"),
    )
    # Today's first-response deadlines become clocks; their start is unknown, so it is taken as
    # the ticket's creation (only the display and a later re-plan read it).
    op.execute(
        """
        INSERT INTO sla_clocks (ticket_id, target, state, generation, started_at, allowed_s,
                                due_at, breached_at, met_at)
        SELECT id, 'first_response',
               CASE WHEN sla_breached_at IS NOT NULL THEN 'breached'
                    WHEN first_admin_reply_at IS NOT NULL THEN 'met'
                    WHEN status IN ('open', 'in_progress') THEN 'running'
                    ELSE 'met' END,
               1, created_at, greatest(extract(epoch FROM sla_due_at - created_at), 0),
               sla_due_at, sla_breached_at, first_admin_reply_at
        FROM tickets WHERE sla_due_at IS NOT NULL
        """
    )


def downgrade() -> None:
    op.drop_index("sla_clocks_breach_due", table_name="sla_clocks")
    op.drop_index("sla_clocks_warn_due", table_name="sla_clocks")
    op.drop_table("sla_clocks")
