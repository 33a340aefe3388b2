"""Notification delivery with a ledger: one row per (event, channel, recipient), sent at most once
as far as the ledger knows, retried on transient failures, stopped on permanent ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, cast

import structlog
from sqlalchemy import Table, bindparam, exists, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.ids import new_id
from domain.models import Delivery, Message, Staff, Ticket, TicketEvent
from domain.notifications import Audience, Notice, Recipient, recipients_for, render

log = structlog.get_logger("domain.delivery")

PENDING, SENT, FAILED = "pending", "sent", "failed"


class TransientDeliveryError(Exception):
    """Try again later (connection refused, SMTP 4xx, HTTP 5xx/429)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(Exception):
    """Retrying will not help (SMTP 5xx reject, HTTP 4xx): record it for an operator."""


class Channel(Protocol):
    """Sends one notice. Raises TransientDeliveryError or PermanentDeliveryError on failure."""

    async def send(self, notice: Notice) -> None: ...


@dataclass(frozen=True)
class DeliveryConfig:
    team_emails: Sequence[str]
    sender: str
    channels: Mapping[str, Channel]
    max_attempts: int = 20


class Outcome(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"  # already sent/failed, or another worker holds it right now
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    retry_after_s: float | None = None
    error: str | None = None


# The statements of the hot path are built once, with bind parameters: building a statement and
# its cache key costs more CPU than running it against a local PostgreSQL. Updates go through
# the tables (Core), not the ORM's unit of work.
_deliveries = cast(Table, Delivery.__table__)
_events = cast(Table, TicketEvent.__table__)

_LOAD_EVENT = (
    select(TicketEvent, Ticket, Staff.email)
    .outerjoin(Ticket, Ticket.id == TicketEvent.ticket_id)
    .outerjoin(Staff, Staff.user_id == Ticket.assignee_id)
    .where(TicketEvent.id == bindparam("event_id"))
    .with_for_update(of=TicketEvent)
    .execution_options(populate_existing=True)  # the locked row as it is now
)
_PENDING_OF_EVENT = select(_deliveries.c.id).where(
    _deliveries.c.event_id == bindparam("event_id"), _deliveries.c.status == PENDING
)
# New ledger rows and the ones still pending, in one statement and so one snapshot. Only the
# recipients without a row yet are inserted: an insert that met an existing row would wait for
# a delivery updating that row (uncommitted) while this transaction holds the event lock, and
# that delivery next waits for the event lock: a deadlock whenever a re-published event is
# planned again while its deliveries finish. The statement does not see its own inserts, so the
# pending rows are those it inserted plus the earlier pending ones. The rows go in as arrays:
# the statement's text is the same whatever the number of recipients (prepared once).
_INSERT_AND_LIST_PENDING = text(
    """
    WITH existing AS (
        SELECT id, channel, recipient, status FROM deliveries WHERE event_id = :event_id
    ), inserted AS (
        INSERT INTO deliveries
            (id, event_id, channel, recipient, status, attempts, created_at, updated_at)
        SELECT r.id, :event_id, r.channel, r.recipient, 'pending', 0, :now, :now
        FROM unnest(
            CAST(:ids AS varchar[]), CAST(:channels AS varchar[]), CAST(:recipients AS varchar[])
        ) AS r (id, channel, recipient)
        WHERE NOT EXISTS (
            SELECT 1 FROM existing e WHERE e.channel = r.channel AND e.recipient = r.recipient
        )
        ON CONFLICT (event_id, channel, recipient) DO NOTHING
        RETURNING id
    )
    SELECT id FROM inserted
    UNION ALL
    SELECT id FROM existing WHERE status = 'pending'
    """
)
_LOAD_DELIVERY = (
    select(
        Delivery.event_id,
        Delivery.channel,
        Delivery.recipient,
        Delivery.status,
        Delivery.attempts,
        TicketEvent,
        Ticket,
        Message,
    )
    .select_from(Delivery)
    .outerjoin(TicketEvent, TicketEvent.id == Delivery.event_id)
    .outerjoin(Ticket, Ticket.id == TicketEvent.ticket_id)
    .outerjoin(Message, Message.id == TicketEvent.payload["message_id"].astext)
    .where(Delivery.id == bindparam("delivery_id"))
    .with_for_update(of=Delivery, skip_locked=True)
)
_RECORD_RETRY = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery_id"))
    .values(
        attempts=bindparam("attempts"), updated_at=bindparam("now"), last_error=bindparam("error")
    )
)
_RECORD_SENT = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery_id"))
    .values(
        status=SENT,
        attempts=bindparam("attempts"),
        updated_at=bindparam("now"),
        sent_at=bindparam("now"),
    )
)
_RECORD_FAILED = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery_id"))
    .values(
        status=FAILED,
        attempts=bindparam("attempts"),
        updated_at=bindparam("now"),
        last_error=bindparam("error"),
    )
)
_LOCK_OPEN_EVENT = (
    select(_events.c.id)
    .where(_events.c.id == bindparam("event_id"), _events.c.completed_at.is_(None))
    .with_for_update()
)
_COMPLETE_EVENT = (
    update(_events)
    .where(
        _events.c.id == bindparam("event_id"),
        _events.c.completed_at.is_(None),
        ~exists().where(
            _deliveries.c.event_id == bindparam("event_id"), _deliveries.c.status == PENDING
        ),
    )
    .values(completed_at=bindparam("now"))
)


async def plan_deliveries(
    session: AsyncSession, event_id: str, config: DeliveryConfig, now: datetime
) -> list[str]:
    """Record a ledger row for everyone who must hear of the event; return the pending row ids.

    Idempotent: running it again for the same event adds nothing and returns what is still
    pending. An event with nothing left pending is marked completed.

    At most three statements: the event (locked) with its ticket and the assignee's email; the
    ledger rows inserted and the pending ones read back; the event's update at commit.
    """
    loaded = (await session.execute(_LOAD_EVENT, {"event_id": event_id})).first()
    if loaded is None:
        return []
    event, ticket, assignee_email = loaded
    if event.completed_at is not None:
        return []
    if event.published_at is None:
        event.published_at = now  # picked up before the publisher could mark it
    if ticket is None:
        event.completed_at = now
        return []
    audience = Audience(
        team_emails=config.team_emails,
        email_enabled="email" in config.channels,
        slack_enabled="slack" in config.channels,
        assignee_email=assignee_email if ticket.assignee_id else None,
    )
    recipients = recipients_for(event, ticket, audience)
    if recipients:
        params = {
            "event_id": event.id,
            "now": now,
            "ids": [new_id() for _ in recipients],
            "channels": [r.channel for r in recipients],
            "recipients": [r.address for r in recipients],
        }
        pending = (await session.scalars(_INSERT_AND_LIST_PENDING, params)).all()
    else:
        pending = (await session.scalars(_PENDING_OF_EVENT, {"event_id": event.id})).all()
    if not pending:
        event.completed_at = now
    return list(pending)


async def deliver(
    session: AsyncSession, delivery_id: str, config: DeliveryConfig, now: datetime
) -> DeliveryResult:
    """Send one ledger row's notification unless the ledger says it is done.

    The row stays locked during the send, so a duplicate message for the same delivery waits
    for this one or skips; the caller commits the result.

    One statement loads the row (locked) with its event, ticket and message; the result is
    written with one UPDATE, plus the event's completion check when the row is finished.
    """
    loaded = (await session.execute(_LOAD_DELIVERY, {"delivery_id": delivery_id})).first()
    if loaded is None:
        return DeliveryResult(Outcome.SKIPPED)
    event_id, channel_name, recipient, status, attempts, event, ticket, message = loaded
    if status != PENDING:
        return DeliveryResult(Outcome.SKIPPED)
    row = _Row(delivery_id, event_id, attempts)
    bound = log.bind(
        event_id=event_id,
        ticket_id=ticket.id if ticket else None,
        channel=channel_name,
        delivery_id=delivery_id,
        request_id=event.request_id if event else None,
    )
    if event is None or ticket is None:
        return await _finish(session, row, FAILED, "event or ticket no longer exists", now, bound)
    channel = config.channels.get(channel_name)
    if channel is None:
        return await _finish(session, row, FAILED, "channel is not configured", now, bound)
    notice = render(
        event,
        ticket,
        Recipient(channel_name, recipient),
        message=message,
        sender=config.sender,
    )
    row.attempts += 1
    try:
        await channel.send(notice)
    except PermanentDeliveryError as exc:
        return await _finish(session, row, FAILED, str(exc), now, bound)
    except TransientDeliveryError as exc:
        if row.attempts >= config.max_attempts:
            return await _finish(
                session,
                row,
                FAILED,
                f"gave up after {row.attempts} attempts: {exc}",
                now,
                bound,
            )
        await session.execute(
            _RECORD_RETRY,
            {
                "delivery_id": delivery_id,
                "attempts": row.attempts,
                "now": now,
                "error": str(exc)[:2000],
            },
        )
        bound.warning("delivery.attempt", outcome="retry", attempt=row.attempts, error=str(exc))
        return DeliveryResult(Outcome.RETRY, retry_after_s=exc.retry_after_s, error=str(exc))
    return await _finish(session, row, SENT, None, now, bound)


@dataclass
class _Row:
    """The ledger row being worked on (read once, written once)."""

    id: str
    event_id: str
    attempts: int


async def _finish(
    session: AsyncSession,
    row: _Row,
    status: str,
    error: str | None,
    now: datetime,
    bound: structlog.stdlib.BoundLogger,
) -> DeliveryResult:
    params = {"delivery_id": row.id, "attempts": row.attempts, "now": now}
    if status == SENT:
        await session.execute(_RECORD_SENT, params)
    else:
        await session.execute(_RECORD_FAILED, {**params, "error": (error or "")[:2000]})
    if status == SENT:
        bound.info("delivery.attempt", outcome="sent", attempt=row.attempts)
    else:
        bound.error("delivery.attempt", outcome="failed", attempt=row.attempts, error=error)
    await complete_event_if_done(session, row.event_id, now)
    return DeliveryResult(Outcome.SENT if status == SENT else Outcome.FAILED, error=error)


async def complete_event_if_done(session: AsyncSession, event_id: str, now: datetime) -> bool:
    """Mark the event completed when none of its deliveries is pending (event row locked first,
    so two deliveries finishing at once cannot both miss the moment).

    The lock is its own statement on purpose: the conditional UPDATE that follows starts after
    the lock is granted, so under READ COMMITTED it sees what the previous holder committed.
    """
    if await session.scalar(_LOCK_OPEN_EVENT, {"event_id": event_id}) is None:
        return False
    done = await session.execute(_COMPLETE_EVENT, {"event_id": event_id, "now": now})
    return bool(getattr(done, "rowcount", 0))
