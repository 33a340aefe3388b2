"""An operator's view: the delivery ledger (what was sent, what failed for good), a hand retry
of a failed delivery, and a ticket's audit trail with the notifications each change caused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain import events
from domain.delivery import LedgerStatus
from domain.errors import NotFound, NotRetryable
from domain.events import EventType, NewEvent
from domain.ids import is_valid_id
from domain.lifecycle import Caller
from domain.models import Delivery, Ticket, TicketEvent
from domain.tickets import Page


async def list_deliveries(
    session: AsyncSession,
    *,
    page: int,
    per_page: int,
    status: LedgerStatus | None = None,
    channel: str | None = None,
    ticket_id: str | None = None,
) -> Page:
    """Ledger rows, newest first, each with its event's type and ticket."""
    where: list[Any] = []
    if status is not None:
        where.append(Delivery.status == status.value)
    if channel is not None:
        where.append(Delivery.channel == channel)
    if ticket_id is not None:
        where.append(TicketEvent.ticket_id == ticket_id)
    query = (
        select(
            Delivery.id,
            Delivery.event_id,
            TicketEvent.type.label("event_type"),
            TicketEvent.ticket_id,
            Delivery.channel,
            Delivery.recipient,
            Delivery.status,
            Delivery.attempts,
            Delivery.last_error,
            Delivery.created_at,
            Delivery.updated_at,
            Delivery.sent_at,
            func.count().over().label("total"),
        )
        .join(TicketEvent, TicketEvent.id == Delivery.event_id)
        .where(*where)
        .order_by(Delivery.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    rows = (await session.execute(query)).all()
    total = int(rows[0].total) if rows else 0
    if not rows and page > 1:
        count = (
            select(func.count())
            .select_from(Delivery)
            .join(TicketEvent, TicketEvent.id == Delivery.event_id)
            .where(*where)
        )
        total = int(await session.scalar(count) or 0)
    return Page(items=cast(Any, rows), page=page, per_page=per_page, total=total)


async def retry_delivery(
    session: AsyncSession, delivery_id: str, caller: Caller, now: datetime
) -> tuple[Delivery, TicketEvent]:
    """Send a delivery that failed for good once more, through the normal pipeline: the row is
    pending again (with a fresh count of attempts and its last error kept), its event is no
    longer complete and is published again after commit, and the retry is in the audit trail.
    """
    if not is_valid_id(delivery_id):
        raise NotFound("delivery")
    # Row, then event: the order the notifications pool locks them in.
    delivery = await session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFound("delivery")
    if delivery.status != LedgerStatus.FAILED:
        raise NotRetryable(delivery.status)
    event = await session.get(TicketEvent, delivery.event_id, with_for_update=True)
    if event is None:  # the foreign key cascades: cannot happen while the row exists
        raise NotFound("delivery")
    delivery.status = LedgerStatus.PENDING.value
    delivery.attempts = 0
    delivery.updated_at = now
    event.completed_at = None
    await session.flush()
    payload = {
        "delivery_id": delivery.id,
        "event_id": event.id,
        "channel": delivery.channel,
        "recipient": delivery.recipient,
    }
    retried = NewEvent(
        event.ticket_id, EventType.DELIVERY_RETRIED, payload, now, caller.user_id, True
    )
    await events.write(session, [retried])
    events.publish_again_after_commit(session, [event.id])
    return delivery, event


@dataclass(frozen=True)
class HistoryEntry:
    event: TicketEvent
    deliveries: Sequence[Delivery]


async def ticket_history(
    session: AsyncSession, ticket_id: str, *, page: int, per_page: int
) -> tuple[Page, list[HistoryEntry]]:
    """The ticket's events, oldest first, each with the notifications it caused."""
    if not is_valid_id(ticket_id) or await session.get(Ticket, ticket_id) is None:
        raise NotFound()
    query = (
        select(TicketEvent, func.count().over().label("total"))
        .where(TicketEvent.ticket_id == ticket_id)
        .order_by(TicketEvent.id)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    rows = (await session.execute(query)).all()
    found = [event for event, _ in rows]
    total = int(rows[0].total) if rows else 0
    if not rows and page > 1:  # past the last page: no row carries the total
        count = select(func.count()).where(TicketEvent.ticket_id == ticket_id)
        total = int(await session.scalar(count) or 0)
    caused: dict[str, list[Delivery]] = {event.id: [] for event in found}
    if found:
        delivered = await session.scalars(
            select(Delivery)
            .where(Delivery.event_id.in_(list(caused)))
            .order_by(Delivery.channel, Delivery.recipient)
        )
        for delivery in delivered:
            caused[delivery.event_id].append(delivery)
    entries = [HistoryEntry(event, caused[event.id]) for event in found]
    return Page(items=cast(Any, found), page=page, per_page=per_page, total=total), entries
