"""Notification delivery with a ledger: one row per (event, channel, recipient), sent at most once
as far as the ledger knows, retried on transient failures, stopped on permanent ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import structlog
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
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


async def plan_deliveries(
    session: AsyncSession, event_id: str, config: DeliveryConfig, now: datetime
) -> list[str]:
    """Record a ledger row for everyone who must hear of the event; return the pending row ids.

    Idempotent: running it again for the same event adds nothing and returns what is still
    pending. An event with nothing left pending is marked completed.
    """
    event = await session.get(TicketEvent, event_id, with_for_update=True)
    if event is None or event.completed_at is not None:
        return []
    if event.published_at is None:
        event.published_at = now  # picked up before the publisher could mark it
    ticket = await session.get(Ticket, event.ticket_id)
    if ticket is None:
        event.completed_at = now
        return []
    audience = Audience(
        team_emails=config.team_emails,
        email_enabled="email" in config.channels,
        slack_enabled="slack" in config.channels,
        assignee_email=await _staff_email(session, ticket.assignee_id),
    )
    recipients = recipients_for(event, ticket, audience)
    if recipients:
        await session.execute(
            insert(Delivery)
            .values(
                [
                    {
                        "id": new_id(),
                        "event_id": event.id,
                        "channel": r.channel,
                        "recipient": r.address,
                        "status": PENDING,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for r in recipients
                ]
            )
            .on_conflict_do_nothing(index_elements=["event_id", "channel", "recipient"])
        )
    pending = (
        await session.scalars(
            select(Delivery.id).where(Delivery.event_id == event.id, Delivery.status == PENDING)
        )
    ).all()
    if not pending:
        event.completed_at = now
    return list(pending)


async def deliver(
    session: AsyncSession, delivery_id: str, config: DeliveryConfig, now: datetime
) -> DeliveryResult:
    """Send one ledger row's notification unless the ledger says it is done.

    The row stays locked during the send, so a duplicate message for the same delivery waits
    for this one or skips; the caller commits the result.
    """
    delivery = (
        await session.scalars(
            select(Delivery).where(Delivery.id == delivery_id).with_for_update(skip_locked=True)
        )
    ).first()
    if delivery is None or delivery.status != PENDING:
        return DeliveryResult(Outcome.SKIPPED)
    event = await session.get(TicketEvent, delivery.event_id)
    ticket = await session.get(Ticket, event.ticket_id) if event else None
    bound = log.bind(
        event_id=delivery.event_id,
        ticket_id=ticket.id if ticket else None,
        channel=delivery.channel,
        delivery_id=delivery.id,
        request_id=event.request_id if event else None,
    )
    if event is None or ticket is None:
        return await _finish(
            session, delivery, FAILED, "event or ticket no longer exists", now, bound
        )
    channel = config.channels.get(delivery.channel)
    if channel is None:
        return await _finish(session, delivery, FAILED, "channel is not configured", now, bound)
    message_id = (event.payload or {}).get("message_id")
    message = await session.get(Message, message_id) if message_id else None
    notice = render(
        event,
        ticket,
        Recipient(delivery.channel, delivery.recipient),
        message=message,
        sender=config.sender,
    )
    delivery.attempts += 1
    delivery.updated_at = now
    try:
        await channel.send(notice)
    except PermanentDeliveryError as exc:
        return await _finish(session, delivery, FAILED, str(exc), now, bound)
    except TransientDeliveryError as exc:
        delivery.last_error = str(exc)[:2000]
        if delivery.attempts >= config.max_attempts:
            return await _finish(
                session,
                delivery,
                FAILED,
                f"gave up after {delivery.attempts} attempts: {exc}",
                now,
                bound,
            )
        bound.warning(
            "delivery.attempt", outcome="retry", attempt=delivery.attempts, error=str(exc)
        )
        return DeliveryResult(Outcome.RETRY, retry_after_s=exc.retry_after_s, error=str(exc))
    delivery.sent_at = now
    return await _finish(session, delivery, SENT, None, now, bound)


async def _finish(
    session: AsyncSession,
    delivery: Delivery,
    status: str,
    error: str | None,
    now: datetime,
    bound: structlog.stdlib.BoundLogger,
) -> DeliveryResult:
    delivery.status = status
    delivery.updated_at = now
    if error is not None:
        delivery.last_error = error[:2000]
    if status == SENT:
        bound.info("delivery.attempt", outcome="sent", attempt=delivery.attempts)
    else:
        bound.error("delivery.attempt", outcome="failed", attempt=delivery.attempts, error=error)
    await session.flush()
    await complete_event_if_done(session, delivery.event_id, now)
    return DeliveryResult(Outcome.SENT if status == SENT else Outcome.FAILED, error=error)


async def complete_event_if_done(session: AsyncSession, event_id: str, now: datetime) -> bool:
    """Mark the event completed when none of its deliveries is pending (event row locked first,
    so two deliveries finishing at once cannot both miss the moment)."""
    event = await session.get(TicketEvent, event_id, with_for_update=True, populate_existing=True)
    if event is None or event.completed_at is not None:
        return False
    pending = await session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.event_id == event_id, Delivery.status == PENDING)
    )
    if pending:
        return False
    event.completed_at = now
    return True


async def _staff_email(session: AsyncSession, user_id: str | None) -> str | None:
    if not user_id:
        return None
    email: str | None = await session.scalar(select(Staff.email).where(Staff.user_id == user_id))
    return email
