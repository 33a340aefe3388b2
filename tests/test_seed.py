"""`helpdesk seed` gives a newcomer something to look at: example tickets in every status, with
replies, written like real requests (their events wait in the outbox for the workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg

from domain.settings import Settings


def test_seed_fills_the_database_through_the_service(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "APP_ENV": "development"}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "seed", "--tickets", "12"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "created 12 example tickets" in done.stdout
    statuses = dict(db.execute("SELECT status, count(*) FROM tickets GROUP BY status").fetchall())
    assert set(statuses) == {"open", "in_progress", "resolved", "closed"}
    assert sum(statuses.values()) == 12
    replies = db.execute("SELECT count(*) FROM messages WHERE is_admin").fetchone()
    assert replies is not None and replies[0] >= 6
    unpublished = db.execute("SELECT count(*) FROM ticket_events WHERE published_at IS NULL")
    assert unpublished.fetchone() == db.execute("SELECT count(*) FROM ticket_events").fetchone()
