"""Dramatiq actors. Thin: load by id, call a domain service, commit, hand on follow-up messages.

Run a pool per queue, e.g. ``dramatiq workers.actors --queues notifications -p 2 -t 8``.
Every actor is idempotent: messages may arrive twice (at-least-once delivery).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec

import dramatiq
import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from domain import events
from domain.delivery import Outcome, deliver_batch, plan_deliveries
from domain.models import TicketEvent
from domain.outbox import (
    DISPATCH_ACTOR,
    EVENTS_QUEUE,
    MAINTENANCE_QUEUE,
    NOTIFICATIONS_QUEUE,
    SLA_QUEUE,
    SLA_SWEEP_QUEUE,
    claim_events_to_publish,
    mark_published,
)
from domain.timers import close_resolved_due, fire_sla_breaches, sla_wakeup_delay
from workers.broker import broker  # noqa: F401  (the broker must exist before any actor)
from workers.runtime import runtime

log = structlog.get_logger("workers.actors")

P = ParamSpec("P")
DB_DOWN_RETRY_MS = 2_000


def retry_soon_if_database_down(
    fn: Callable[P, Awaitable[None]],
) -> Callable[P, Awaitable[None]]:
    """A database outage is not the message's fault: retry it every two seconds rather than on
    the actor's growing backoff, so work resumes within moments of PostgreSQL coming back."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await fn(*args, **kwargs)
        except (OperationalError, PoolTimeout) as exc:
            log.warning("actor.database_unavailable", actor=fn.__name__, error=type(exc).__name__)
            raise dramatiq.Retry("database unavailable", delay=DB_DOWN_RETRY_MS) from exc

    return wrapper


OUTBOX_BATCH = 500
TIMER_BATCH = 1000
DELIVERY_BATCH = 25  # ledger rows per delivery message (an event's recipients, usually all)


@dramatiq.actor(
    actor_name=DISPATCH_ACTOR,
    queue_name=EVENTS_QUEUE,
    max_retries=10,
    min_backoff=500,
    max_backoff=30_000,
    time_limit=30_000,
)
@retry_soon_if_database_down
async def dispatch_event(event_id: str) -> None:
    """Record who must hear of an event (ledger rows) and queue their delivery in one message."""
    rt = runtime()
    async with rt.sessionmaker() as session:
        plan = await plan_deliveries(session, event_id, rt.delivery, rt.clock())
        wakeup = _sla_wakeup(plan.event, rt.clock())
        await session.commit()
    pending = plan.pending
    # One message per batch of an event's recipients, not per recipient: a Dramatiq hop and a
    # transaction per email cost more CPU than the email itself.
    for start in range(0, len(pending), DELIVERY_BATCH):
        deliver_notifications.send(pending[start : start + DELIVERY_BATCH])
    if wakeup is not None:
        ticket_id, delay = wakeup
        # A hint, not the truth: the deadline lives in PostgreSQL and the sweep backs this up.
        check_sla_deadline.send_with_options(args=(ticket_id,), delay=_ms(delay) + 5)


def _sla_wakeup(event: TicketEvent | None, now: datetime) -> tuple[str, timedelta] | None:
    if event is None or event.type not in (events.TICKET_CREATED, events.TICKET_UPDATED):
        return None
    delay = sla_wakeup_delay(event.payload or {}, now)
    return (event.ticket_id, delay) if delay is not None else None


async def _publish_new_events(event_ids: list[str]) -> None:
    """Hand events a worker just committed to the dispatcher and mark them published."""
    if not event_ids:
        return
    rt = runtime()
    async with rt.sessionmaker() as session:
        await _dispatch_and_mark(session, event_ids)


async def _dispatch_and_mark(session: AsyncSession, event_ids: Sequence[str]) -> list[str]:
    """Queue a dispatch message per event, then mark published (and commit) what reached the
    broker, also when the broker fails part way: the rest waits for the outbox sweep."""
    sent: list[str] = []
    try:
        for event_id in event_ids:
            dispatch_event.send(event_id)
            sent.append(event_id)
    finally:
        await mark_published(session, sent, runtime().clock())
        await session.commit()
    return sent


@dramatiq.actor(
    queue_name=SLA_QUEUE, max_retries=5, min_backoff=200, max_backoff=5_000, time_limit=30_000
)
@retry_soon_if_database_down
async def check_sla_deadline(ticket_id: str) -> None:
    """Wake-up for one urgent ticket's deadline: breach it if it is due and still unmet."""
    rt = runtime()
    async with rt.sessionmaker() as session:
        fired = await fire_sla_breaches(session, rt.clock(), ticket_ids=[ticket_id])
        await session.commit()
    await _publish_new_events(fired)


@dramatiq.actor(
    queue_name=SLA_SWEEP_QUEUE,
    max_retries=0,
    time_limit=60_000,
    max_age=5_000,  # the scheduler sends one every fraction of a second; old ones are moot
)
async def sweep_sla_deadlines() -> None:
    """Backstop: breach every urgent ticket whose deadline passed unmet (lost wake-ups too)."""
    rt = runtime()
    while True:
        async with rt.sessionmaker() as session:
            fired = await fire_sla_breaches(session, rt.clock(), limit=TIMER_BATCH)
            await session.commit()
        await _publish_new_events(fired)
        if len(fired) < TIMER_BATCH:
            break


@dramatiq.actor(
    queue_name=MAINTENANCE_QUEUE,
    max_retries=0,
    time_limit=600_000,
    max_age=60_000,
)
async def close_resolved_tickets_due() -> None:
    """Close resolved tickets that saw no user activity for AUTO_CLOSE_SECONDS, in batches."""
    rt = runtime()
    after = timedelta(seconds=rt.settings.auto_close_seconds)
    total = 0
    while True:
        async with rt.sessionmaker() as session:
            closed = await close_resolved_due(session, rt.clock(), after=after, limit=TIMER_BATCH)
            await session.commit()
        await _publish_new_events(closed)
        total += len(closed)
        if len(closed) < TIMER_BATCH:
            break
    if total:
        log.info("auto_close.closed", count=total)


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


_DELIVERY_OPTIONS: dict[str, Any] = dict(
    queue_name=NOTIFICATIONS_QUEUE,
    # ~20 attempts with backoff capped at a minute: an SMTP or Slack outage of several minutes
    # still delivers; after that the ledger marks the delivery failed for an operator.
    max_retries=25,
    min_backoff=1_000,
    max_backoff=60_000,
    time_limit=60_000,
)


@dramatiq.actor(**_DELIVERY_OPTIONS)
@retry_soon_if_database_down
async def deliver_notifications(delivery_ids: list[str]) -> None:
    """Send the notifications of these ledger rows, skipping what the ledger shows as done.

    A retry runs the whole message again: the rows already sent or failed are skipped.
    """
    await _deliver(delivery_ids)


@dramatiq.actor(**_DELIVERY_OPTIONS)
@retry_soon_if_database_down
async def deliver_notification(delivery_id: str) -> None:
    """One ledger row per message, as releases before batching sent them: kept so that messages
    already queued by such a release are still delivered after an upgrade."""
    await _deliver([delivery_id])


async def _deliver(delivery_ids: list[str]) -> None:
    rt = runtime()
    async with rt.sessionmaker() as session:
        results = await deliver_batch(session, delivery_ids, rt.delivery, rt.clock())
        await session.commit()
    retries = [r for r in results if r.outcome is Outcome.RETRY]
    if retries:
        waits = [r.retry_after_s for r in retries if r.retry_after_s is not None]
        delay_ms = int(max(waits) * 1000) if waits else None
        raise dramatiq.Retry(retries[0].error or "transient delivery failure", delay=delay_ms)


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
            sent = await _dispatch_and_mark(session, ids)
        total += len(sent)
        if len(ids) < OUTBOX_BATCH:
            break
    if total:
        log.info("outbox.published", count=total)
