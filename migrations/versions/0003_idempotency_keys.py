"""Idempotency keys: each caller's Idempotency-Key with the response its write got.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        # Keys are the caller's own: the same key from another user is another key.
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("request_path", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # Set in the transaction that claimed the key, before it commits: a committed row always
        # has its response (a write that failed rolled its key back with it).
        sa.Column("status_code", sa.Integer),
        sa.Column("response_body", BYTEA),
    )
    # Expired keys are deleted oldest first, a few with each new key (domain/idempotency.py).
    op.create_index("idempotency_keys_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
