"""Admin search: text-search documents of subjects and messages (GIN-indexed), and indexes for
the queue's assignee and SLA-due filters.

Each document is a stored tsvector kept by a trigger, so ranking reads it instead of parsing
the text again for every hit (to_tsvector costs ~20-70 us per message here, ts_rank on a
stored vector a few). A trigger rather than a generated column: every writer, including the
single-statement create (domain/ticket_sql.py), inserts all mapped columns, and a generated
column refuses a value, even NULL; the trigger overwrites whatever was sent.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tickets", sa.Column("search_vector", TSVECTOR))
    op.add_column("messages", sa.Column("search_vector", TSVECTOR))
    # Subjects weigh more than message bodies (weight A against the default D) in ts_rank.
    op.execute(
        """
        CREATE FUNCTION tickets_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search_vector := setweight(to_tsvector('pg_catalog.english', NEW.subject), 'A');
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER tickets_search_vector BEFORE INSERT OR UPDATE OF subject ON tickets"
        " FOR EACH ROW EXECUTE FUNCTION tickets_search_vector()"
    )
    op.execute(
        "CREATE TRIGGER messages_search_vector BEFORE INSERT OR UPDATE OF body ON messages"
        " FOR EACH ROW EXECUTE FUNCTION"
        " tsvector_update_trigger(search_vector, 'pg_catalog.english', body)"
    )
    op.execute(
        "UPDATE tickets SET search_vector ="
        " setweight(to_tsvector('pg_catalog.english', subject), 'A')"
    )
    op.execute("UPDATE messages SET search_vector = to_tsvector('pg_catalog.english', body)")
    op.create_index("tickets_search", "tickets", ["search_vector"], postgresql_using="gin")
    op.create_index("messages_search", "messages", ["search_vector"], postgresql_using="gin")
    op.create_index(
        "tickets_assignee_created",
        "tickets",
        ["assignee_id", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("assignee_id IS NOT NULL"),
    )
    op.create_index(
        "tickets_sla_due",
        "tickets",
        ["sla_due_at"],
        postgresql_where=sa.text("sla_due_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("tickets_sla_due", table_name="tickets")
    op.drop_index("tickets_assignee_created", table_name="tickets")
    op.drop_index("messages_search", table_name="messages")
    op.drop_index("tickets_search", table_name="tickets")
    op.execute("DROP TRIGGER messages_search_vector ON messages")
    op.execute("DROP TRIGGER tickets_search_vector ON tickets")
    op.execute("DROP FUNCTION tickets_search_vector()")
    op.drop_column("messages", "search_vector")
    op.drop_column("tickets", "search_vector")
