"""Outbound webhooks: the endpoints the host app registers (domain/webhooks.py).

Their deliveries live in the existing ledger (``deliveries``, channel ``webhook``, recipient =
the endpoint's id), so nothing else changes.

Revision ID: 0005_webhooks
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0005_webhooks"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event_types", ARRAY(sa.String(64)), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        # Kept in clear: an HMAC key must be at hand to sign with (whsec_ + base64).
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("previous_secret", sa.String(128)),
        sa.Column("previous_secret_expires_at", TZ),
        sa.Column("failing_since", TZ),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.CheckConstraint("cardinality(event_types) > 0", name="webhook_endpoints_wants_events"),
    )
    # The events pool asks, for every event, which enabled endpoints want its type.
    op.create_index(
        "webhook_endpoints_wanted",
        "webhook_endpoints",
        ["event_types"],
        postgresql_using="gin",
        postgresql_where=sa.text("enabled"),
    )


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
