"""Domain events: recorded in ``ticket_events`` in the writer's transaction, published later."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from domain.ids import new_id
from domain.models import TicketEvent

TICKET_CREATED = "ticket.created"
MESSAGE_CREATED = "message.created"
TICKET_UPDATED = "ticket.updated"
TICKET_CLOSED = "ticket.closed"
TICKET_SLA_BREACHED = "ticket.sla_breached"

_PENDING_KEY = "pending_event_ids"


def record_event(
    session: AsyncSession,
    *,
    ticket_id: str,
    type: str,
    actor_id: str | None,
    actor_is_admin: bool,
    payload: dict[str, Any],
    now: datetime,
    add: bool = True,
) -> TicketEvent:
    """Add one event row to the session's transaction and remember it for publishing after commit.

    The request id of the HTTP request that caused it (bound in structlog's context) is kept on
    the row, so logs of the notification it triggers can be traced back. ``add=False`` leaves
    the row out of the session for a caller that inserts it with its own statement.
    """
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    event = TicketEvent(
        id=new_id(),
        ticket_id=ticket_id,
        type=type,
        actor_id=actor_id,
        actor_is_admin=actor_is_admin,
        payload=payload,
        request_id=request_id,
        created_at=now,
        published_at=None,
        publish_count=0,
        completed_at=None,
    )
    if add:
        session.add(event)
    session.info.setdefault(_PENDING_KEY, []).append(event.id)
    return event


def take_pending_event_ids(session: AsyncSession) -> list[str]:
    """The ids of events recorded in this session since the last call (call after commit)."""
    ids: list[str] = session.info.pop(_PENDING_KEY, [])
    return ids
