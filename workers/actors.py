"""Dramatiq actors. Thin: load by id, call a domain service, commit, hand on follow-up messages.

Run a pool per queue, e.g. ``dramatiq workers.actors --queues notifications -p 2 -t 8``.
Every actor is idempotent: messages may arrive twice (at-least-once delivery).
"""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import structlog

from domain.delivery import Outcome, deliver, plan_deliveries
from domain.outbox import (
    DISPATCH_ACTOR,
    EVENTS_QUEUE,
    MAINTENANCE_QUEUE,
    NOTIFICATIONS_QUEUE,
    claim_events_to_publish,
    mark_published,
)
from workers.broker import broker  # noqa: F401  (the broker must exist before any actor)
from workers.runtime import runtime

log = structlog.get_logger("workers.actors")

OUTBOX_BATCH = 500


@dramatiq.actor(
    actor_name=DISPATCH_ACTOR,
    queue_name=EVENTS_QUEUE,
    max_retries=10,
    min_backoff=500,
    max_backoff=30_000,
    time_limit=30_000,
)
async def dispatch_event(event_id: str) -> None:
    """Record who must hear of an event (ledger rows) and queue one delivery per recipient."""
    rt = runtime()
    async with rt.sessionmaker() as session:
        pending = await plan_deliveries(session, event_id, rt.delivery, rt.clock())
        await session.commit()
    for delivery_id in pending:
        deliver_notification.send(delivery_id)


@dramatiq.actor(
    queue_name=NOTIFICATIONS_QUEUE,
    # ~20 attempts with backoff capped at a minute: an SMTP or Slack outage of several minutes
    # still delivers; after that the ledger marks the delivery failed for an operator.
    max_retries=25,
    min_backoff=1_000,
    max_backoff=60_000,
    time_limit=60_000,
)
async def deliver_notification(delivery_id: str) -> None:
    """Send one notification unless the ledger says it was already sent (or given up on)."""
    rt = runtime()
    async with rt.sessionmaker() as session:
        result = await deliver(session, delivery_id, rt.delivery, rt.clock())
        await session.commit()
    if result.outcome is Outcome.RETRY:
        delay_ms = int(result.retry_after_s * 1000) if result.retry_after_s is not None else None
        raise dramatiq.Retry(result.error or "transient delivery failure", delay=delay_ms)


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
            sent: list[str] = []
            try:
                for event_id in ids:
                    dispatch_event.send(event_id)
                    sent.append(event_id)
            finally:
                # Whatever reached the broker is marked; the rest waits for the next sweep.
                await mark_published(session, sent, rt.clock())
                await session.commit()
        total += len(sent)
        if len(ids) < OUTBOX_BATCH:
            break
    if total:
        log.info("outbox.published", count=total)
