"""Handing events that a worker committed to the events pool, as the API does with its own."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from domain.events import take_pending_event_ids
from domain.outbox import DISPATCH_ACTOR, DISPATCH_BATCH, EVENTS_QUEUE, mark_published
from workers.broker import send_by_name
from workers.runtime import runtime


async def commit_and_publish(session: AsyncSession) -> None:
    """Commit the session, then send the events it wrote to the dispatcher and mark them
    published (persist, then publish, as the API does)."""
    await session.commit()
    event_ids = take_pending_event_ids(session)
    if event_ids:
        await publish_and_mark(session, event_ids)


async def publish_and_mark(session: AsyncSession, event_ids: Sequence[str]) -> list[str]:
    """Queue dispatch messages (DISPATCH_BATCH events each), then mark published (and commit)
    what reached the broker, also when the broker fails part way: the rest waits for the
    outbox sweep."""
    sent: list[str] = []
    try:
        for start in range(0, len(event_ids), DISPATCH_BATCH):
            batch = list(event_ids[start : start + DISPATCH_BATCH])
            send_by_name(EVENTS_QUEUE, DISPATCH_ACTOR, batch)
            sent += batch
    finally:
        await mark_published(session, sent, runtime().clock())
        await session.commit()
    return sent
