"""The outbox: ``ticket_events`` rows that still have to reach the workers, and their progress.

An event is *published* when it has been handed to the broker, and *completed* when its handler
has recorded that everything it had to do is done. The sweep publishes what was never published
and re-publishes what was published long ago but never completed (a broker that restarted empty,
a worker killed mid-message), so an event can be delayed but never lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import TicketEvent

# The queues, each consumed by its own worker pool (see the Procfile), and the actors that a
# process sends to by name because it does not declare them: the API sends every event to the
# dispatcher, and each pool declares only its own actors.
EVENTS_QUEUE = "events"
NOTIFICATIONS_QUEUE = "notifications"
MAINTENANCE_QUEUE = "maintenance"
SLA_QUEUE = "sla"
# The SLA backstop sweep has a queue of its own (consumed by the sla pool too): a burst of due
# wake-ups on the sla queue would otherwise hold it back, and it breaches them in batches.
SLA_SWEEP_QUEUE = "sla_sweeps"
# Webhook deliveries have their own queue and pool: a host app's receiver that hangs or fails
# holds up only its own deliveries, never the team's emails and Slack messages.
WEBHOOKS_QUEUE = "webhooks"
ALL_QUEUES = (
    EVENTS_QUEUE,
    NOTIFICATIONS_QUEUE,
    WEBHOOKS_QUEUE,
    MAINTENANCE_QUEUE,
    SLA_QUEUE,
    SLA_SWEEP_QUEUE,
)
DISPATCH_ACTOR = "dispatch_events"  # on EVENTS_QUEUE; its one argument: a list of event ids
# Events per dispatch message at most. Under load the publishers send what has piled up in
# batches: a queue hop (enqueue, fetch, ack) and a transaction per event cost more CPU than
# planning the event itself. When idle a batch is one event, so nothing waits to fill one.
DISPATCH_BATCH = 20
DELIVER_ACTOR = "deliver_notifications"  # on NOTIFICATIONS_QUEUE
DELIVER_WEBHOOKS_ACTOR = "deliver_webhooks"  # on WEBHOOKS_QUEUE
SLA_CHECK_ACTOR = "check_sla_deadline"  # on SLA_QUEUE


async def claim_events_to_publish(
    session: AsyncSession,
    *,
    now: datetime,
    unpublished_grace: timedelta,
    republish_after: timedelta,
    limit: int,
) -> Sequence[str]:
    """Lock (SKIP LOCKED, oldest first) up to ``limit`` events that need publishing.

    ``unpublished_grace`` leaves the API a moment to publish its own events first;
    ``republish_after`` is how long a published event may stay unhandled before it is sent again.
    """
    query = (
        select(TicketEvent.id)
        .where(
            TicketEvent.completed_at.is_(None),
            or_(
                (TicketEvent.published_at.is_(None))
                & (TicketEvent.created_at <= now - unpublished_grace),
                # Each re-publish waits twice as long as the one before (capped at 32x): a
                # long backlog is not flooded with copies of events still waiting their turn.
                TicketEvent.published_at
                + republish_after * func.power(2, func.least(TicketEvent.publish_count - 1, 5))
                <= now,
            ),
        )
        .order_by(TicketEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.scalars(query)).all()


# Built once: the ORM's bulk UPDATE with an IN list cost the API more CPU per create than the
# create itself (py-spy, bench.pipeline at 40 tickets/s). Each event keeps its own time.
_MARK_PUBLISHED = text(
    """
    UPDATE ticket_events AS e
    SET published_at = s.published_at, publish_count = e.publish_count + 1
    FROM unnest(CAST(:ids AS varchar[]), CAST(:times AS timestamptz[])) AS s (id, published_at)
    WHERE e.id = s.id AND e.completed_at IS NULL
    """
)


async def mark_published(session: AsyncSession, event_ids: Sequence[str], now: datetime) -> None:
    await mark_each_published(session, [(event_id, now) for event_id in event_ids])


async def mark_each_published(session: AsyncSession, sent: Sequence[tuple[str, datetime]]) -> None:
    """Record when each event was handed to the broker (completed events are left alone)."""
    if not sent:
        return
    ids, times = zip(*sent, strict=True)
    await session.execute(_MARK_PUBLISHED, {"ids": list(ids), "times": list(times)})
