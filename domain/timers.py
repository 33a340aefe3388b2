"""Timers kept in PostgreSQL: the first-response SLA of urgent tickets and auto-close of resolved
ones. The sweeps apply the ticket's own rules (``Ticket.breach``, ``Ticket.auto_close``) in bulk,
through their SQL twins defined next to them in domain/models.py. Firing is a conditional
update, so a timer fires at most once, never after it was met or cancelled, and any number of
duplicated messages or concurrent sweeps change nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain import events
from domain.events import EventType, NewEvent
from domain.models import (
    AUTO_CLOSE_DUE,
    AUTO_CLOSE_SET,
    SLA_BREACH_DUE,
    SLA_BREACH_SET,
    Ticket,
    auto_closed_payload,
    breach_payload,
)

# The due rows are picked in a CTE: PostgreSQL runs a locking CTE exactly once, whereas an
# ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` subquery may be re-run per row and, among
# equal deadlines, pick different rows each time (closing more than ``limit`` in one batch).
#
# The statements are built once, with bind parameters, on the table (Core) rather than through
# the ORM: building the statement and its cache key and going through the ORM's bulk-update
# machinery cost more CPU than running it.

_tickets = cast(Table, Ticket.__table__)
_t = _tickets.c


def _fire(due_rule: Any, order_by: Any, sets: dict[str, Any]) -> Any:
    """Apply ``sets`` to the rows ``due_rule`` selects, ``order_by`` first, ``limit`` at most."""
    due = (
        select(_t.id)
        .where(due_rule)
        .order_by(order_by, _t.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return update(_tickets).where(_t.id == due.c.id, due_rule).values(**sets)


_FIRE_SLA = _fire(SLA_BREACH_DUE, _t.sla_due_at, SLA_BREACH_SET).returning(_t.id, _t.sla_due_at)
_CLOSE_DUE = _fire(AUTO_CLOSE_DUE, _t.resolved_at, AUTO_CLOSE_SET).returning(_t.id)


async def fire_sla_breaches(
    session: AsyncSession, now: datetime, *, limit: int = 1000
) -> list[str]:
    """Mark as breached the urgent tickets whose deadline passed unmet (oldest deadline first,
    at most ``limit``, rows locked with SKIP LOCKED), with one ``ticket.sla_breached`` event
    each, published after the caller commits. Returns the events' ids."""
    fired = (await session.execute(_FIRE_SLA, {"now": now, "limit": limit})).all()
    return await events.write(
        session,
        [
            NewEvent(ticket_id, EventType.TICKET_SLA_BREACHED, breach_payload(due_at, now), now)
            for ticket_id, due_at in fired
        ],
    )


async def close_resolved_due(
    session: AsyncSession, now: datetime, *, after: timedelta, limit: int = 1000
) -> list[str]:
    """Close up to ``limit`` tickets resolved for at least ``after`` with no user activity since
    (a user reply reopens a ticket and clears ``resolved_at``), with one ``ticket.closed`` event
    each, published after the caller commits. Returns the events' ids."""
    params = {"now": now, "cutoff": now - after, "limit": limit}
    closed = list((await session.execute(_CLOSE_DUE, params)).scalars())
    return await events.write(
        session,
        [
            NewEvent(ticket_id, EventType.TICKET_CLOSED, auto_closed_payload(), now)
            for ticket_id in closed
        ],
    )


# Wake-up messages are held in worker memory until due, so only near deadlines get one; the
# sweep catches the rest (and anything whose message was lost).
WAKEUP_HORIZON = timedelta(hours=1)
# The breach condition is ``due <= now``: a wake-up that lands a tick early finds nothing due
# and leaves the ticket to the sweep. Waking a few milliseconds late avoids that.
WAKEUP_MARGIN = timedelta(milliseconds=5)
_ANNOUNCE_DEADLINES = (EventType.TICKET_CREATED, EventType.TICKET_UPDATED)


def sla_wakeup_delay(event_type: str, payload: dict[str, Any], now: datetime) -> timedelta | None:
    """How long to wait before checking the deadline an event announces (events that arm the
    clock carry ``sla_due_at``), if a wake-up message is worth sending."""
    raw = payload.get("sla_due_at")
    if event_type not in _ANNOUNCE_DEADLINES or not isinstance(raw, str):
        return None
    try:
        due = datetime.fromisoformat(raw)
    except ValueError:
        return None
    delay = max(due - now, timedelta(0))
    return delay + WAKEUP_MARGIN if delay <= WAKEUP_HORIZON else None
