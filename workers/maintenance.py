"""The maintenance pool: the outbox sweep and auto-close, each sent by the scheduler.

Run: ``dramatiq workers.maintenance --queues maintenance``. Both are safe to run twice at once
(row locks with SKIP LOCKED, conditional updates).
"""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import structlog

from domain.outbox import MAINTENANCE_QUEUE, claim_events_to_publish
from domain.timers import close_resolved_due
from workers.broker import broker  # noqa: F401  (the broker and its middleware, before any actor)
from workers.publishing import commit_and_publish, publish_and_mark
from workers.runtime import runtime

log = structlog.get_logger("workers.maintenance")

OUTBOX_BATCH = 500  # events published per transaction
AUTO_CLOSE_BATCH = 1000  # tickets closed per transaction


@dramatiq.actor(
    queue_name=MAINTENANCE_QUEUE,
    max_retries=0,
    time_limit=600_000,
    max_age=60_000,
)
async def close_resolved_tickets_due() -> None:
    """Close resolved tickets that saw no user activity for AUTO_CLOSE_SECONDS, in batches."""
    rt = runtime()
    after = rt.tickets.policy.auto_close_after
    total = 0
    while True:
        async with rt.sessionmaker() as session:
            closed = await close_resolved_due(
                session, rt.clock(), after=after, limit=AUTO_CLOSE_BATCH
            )
            await commit_and_publish(session)
        total += len(closed)
        if len(closed) < AUTO_CLOSE_BATCH:
            break
    if total:
        log.info("auto_close.closed", count=total)


@dramatiq.actor(
    queue_name=MAINTENANCE_QUEUE,
    max_retries=0,
    time_limit=60_000,
    max_age=60_000,  # a sweep that waited a minute is stale: the scheduler has sent newer ones
)
async def publish_outbox() -> None:
    """Publish events the API could not, and re-publish those published but never completed."""
    rt = runtime()
    s = rt.settings
    total = 0
    while True:
        async with rt.sessionmaker() as session:
            ids = await claim_events_to_publish(
                session,
                now=rt.clock(),
                unpublished_grace=timedelta(seconds=s.outbox_publish_grace_s),
                republish_after=timedelta(seconds=s.outbox_republish_after_s),
                limit=OUTBOX_BATCH,
            )
            sent = await publish_and_mark(session, ids)
        total += len(sent)
        if len(ids) < OUTBOX_BATCH:
            break
    if total:
        log.info("outbox.published", count=total)
