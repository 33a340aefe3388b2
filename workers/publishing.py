"""Handing events that a worker committed to the events pool, as the API does with its own."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from domain.events import take_pending_event_ids
from domain.outbox import DISPATCH_ACTOR, EVENTS_QUEUE, mark_published
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
    """Queue a dispatch message per event, then mark published (and commit) what reached the
    broker, also when the broker fails part way: the rest waits for the outbox sweep."""
    sent: list[str] = []
    try:
        for event_id in event_ids:
            send_by_name(EVENTS_QUEUE, DISPATCH_ACTOR, event_id)
            sent.append(event_id)
    finally:
        await mark_published(session, sent, runtime().clock())
        await session.commit()
    return sent
