"""The outbox sweep's choice of events: unpublished after a grace, unhandled ones again with a
growing pause, handled ones never."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.outbox import claim_events_to_publish
from tests.conftest import T0

GRACE, AFTER = timedelta(seconds=5), timedelta(seconds=60)


def add_event(
    db: Any, event_id: str, *, published_s: float | None, count: int, done: bool = False
) -> None:
    db.execute(
        "INSERT INTO tickets (id, user_id, subject, status, priority, created_at, updated_at) "
        "VALUES (%s, 'u', 's', 'open', 'normal', %s, %s)",
        (event_id, T0, T0),
    )
    db.execute(
        "INSERT INTO ticket_events (id, ticket_id, type, payload, created_at, published_at, "
        "publish_count, completed_at) VALUES (%s, %s, 'ticket.created', '{}', %s, %s, %s, %s)",
        (
            event_id,
            event_id,
            T0,
            None if published_s is None else T0 + timedelta(seconds=published_s),
            count,
            T0 if done else None,
        ),
    )


async def claim(sessions: async_sessionmaker[AsyncSession], at_s: float) -> list[str]:
    async with sessions() as session:
        ids = await claim_events_to_publish(
            session,
            now=T0 + timedelta(seconds=at_s),
            unpublished_grace=GRACE,
            republish_after=AFTER,
            limit=100,
        )
        return sorted(ids)


async def test_which_events_the_sweep_publishes(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    add_event(db, "A" * 26, published_s=None, count=0)  # the API never published it
    add_event(db, "B" * 26, published_s=0, count=1)  # published once, never handled
    add_event(db, "C" * 26, published_s=0, count=3)  # already re-published twice
    add_event(db, "D" * 26, published_s=0, count=1, done=True)  # handled

    assert await claim(sessions, 4) == []
    assert await claim(sessions, 5) == ["A" * 26]
    assert await claim(sessions, 60) == ["A" * 26, "B" * 26]
    assert await claim(sessions, 239) == ["A" * 26, "B" * 26]  # C waits 4 x 60 s
    assert await claim(sessions, 240) == ["A" * 26, "B" * 26, "C" * 26]
