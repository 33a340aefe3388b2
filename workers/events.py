"""The events pool: who must hear of each event, recorded in the ledger and queued for delivery.

Run: ``dramatiq workers.events --queues events``. A message may arrive twice (at-least-once
delivery); planning an event again adds nothing.
"""

from __future__ import annotations

import dramatiq

from domain.delivery import plan_deliveries
from domain.outbox import (
    DELIVER_ACTOR,
    DELIVER_WEBHOOKS_ACTOR,
    DISPATCH_ACTOR,
    EVENTS_QUEUE,
    NOTIFICATIONS_QUEUE,
    SLA_CHECK_ACTOR,
    SLA_QUEUE,
    WEBHOOKS_QUEUE,
)
from domain.timers import sla_wakeup_delay
from workers.broker import send_by_name
from workers.runtime import runtime

DELIVERY_BATCH = 25  # ledger rows per delivery message (an event's recipients, usually all)


@dramatiq.actor(
    actor_name=DISPATCH_ACTOR,
    queue_name=EVENTS_QUEUE,
    max_retries=10,
    min_backoff=500,
    max_backoff=30_000,
    time_limit=30_000,
)
async def dispatch_events(event_ids: list[str]) -> None:
    """Record who must hear of each event (ledger rows) and queue their delivery: the rows of
    all the events in as few messages as DELIVERY_BATCH allows."""
    rt = runtime()
    now = rt.clock()
    async with rt.sessionmaker() as session:
        # Events are locked in one order, so two batches that share events cannot deadlock.
        plans = [
            await plan_deliveries(session, event_id, rt.delivery, now)
            for event_id in sorted(set(event_ids))
        ]
        await session.commit()
    # One message per batch of recipients, not per recipient or per event: a Dramatiq hop and a
    # transaction per email cost more CPU than the email itself. Webhooks go to their own pool.
    for queue, actor, webhooks in (
        (NOTIFICATIONS_QUEUE, DELIVER_ACTOR, False),
        (WEBHOOKS_QUEUE, DELIVER_WEBHOOKS_ACTOR, True),
    ):
        pending = [row for plan in plans for row in plan.pending_for(webhooks=webhooks)]
        for start in range(0, len(pending), DELIVERY_BATCH):
            send_by_name(queue, actor, pending[start : start + DELIVERY_BATCH])
    for plan in plans:
        event = plan.event
        wakeup = sla_wakeup_delay(event.type, event.payload or {}, now) if event else None
        if event is not None and wakeup is not None:
            # A hint, not the truth: the deadline lives in PostgreSQL and the sweep backs it up.
            delay_ms = int(wakeup.total_seconds() * 1000)
            send_by_name(SLA_QUEUE, SLA_CHECK_ACTOR, event.ticket_id, delay_ms=delay_ms)
