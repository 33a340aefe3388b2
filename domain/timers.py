"""Timers kept in PostgreSQL: the first-response SLA of urgent tickets and auto-close of resolved
ones. Firing is a conditional update, so a timer fires at most once, never after it was met or
cancelled, and any number of duplicated messages or concurrent sweeps change nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    Integer,
    String,
    Table,
    and_,
    any_,
    bindparam,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from domain import events
from domain.ids import isoformat_z, new_id
from domain.lifecycle import Priority, Status
from domain.models import Ticket
from domain.policies import SLA_ACTIVE_STATUSES

# The due rows are picked in a CTE: PostgreSQL runs a locking CTE exactly once, whereas an
# ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` subquery may be re-run per row and, among
# equal deadlines, pick different rows each time (closing more than ``limit`` in one batch).
#
# The statements are built once, with bind parameters, on the table (Core) rather than through
# the ORM: a wake-up message fires one timer, and building the statement and its cache key and
# going through the ORM's bulk-update machinery cost more CPU than running it.

_tickets = cast(Table, Ticket.__table__)
_t = _tickets.c

# A first-response deadline that has passed unmet and not yet fired; a resolved ticket due to
# close (``cutoff`` = now - the auto-close delay).
_SLA_DUE = and_(
    _t.sla_due_at <= bindparam("now"),
    _t.sla_breached_at.is_(None),
    _t.first_admin_reply_at.is_(None),
    _t.priority == Priority.URGENT.value,
    _t.status.in_(sorted(s.value for s in SLA_ACTIVE_STATUSES)),
)
# 'resolved' is written into the statement, not bound: then even a generic plan of the prepared
# statement can use the partial index on resolved_at (WHERE status = 'resolved').
_RESOLVED_DUE = and_(
    _t.status == literal(Status.RESOLVED.value, literal_execute=True),
    _t.resolved_at <= bindparam("cutoff"),
)


def _fire_sla(*where: Any) -> Any:
    """Breach the due timers (``where`` narrows them), oldest deadline first, ``limit`` at most."""
    due = (
        select(_t.id)
        .where(_SLA_DUE, *where)
        .order_by(_t.sla_due_at, _t.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        update(_tickets)
        .where(_t.id == due.c.id, _SLA_DUE)
        .values(sla_breached_at=bindparam("now"))
        .returning(_t.id, _t.sla_due_at)
    )


_FIRE_SLA = _fire_sla()
_FIRE_SLA_OF = _fire_sla(_t.id == any_(bindparam("ticket_ids", type_=ARRAY(String))))


def _close_due() -> Any:
    """Close the resolved tickets due, oldest resolution first, ``limit`` at most."""
    due = (
        select(_t.id)
        .where(_RESOLVED_DUE)
        .order_by(_t.resolved_at, _t.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        update(_tickets)
        .where(_t.id == due.c.id, _RESOLVED_DUE)
        .values(
            status=Status.CLOSED.value,
            closed_at=bindparam("now"),
            updated_at=bindparam("now"),
            resolved_at=None,
        )
        .returning(_t.id)
    )


_CLOSE_DUE = _close_due()


async def fire_sla_breaches(
    session: AsyncSession,
    now: datetime,
    *,
    ticket_ids: Sequence[str] | None = None,
    limit: int = 1000,
) -> list[str]:
    """Mark as breached the urgent tickets whose deadline passed unmet (oldest deadline first,
    at most ``limit``, rows locked with SKIP LOCKED); record one ``ticket.sla_breached`` event
    each. ``ticket_ids`` restricts it to those tickets (a wake-up message for one timer).
    Returns the new event ids, to publish after the caller commits."""
    params: dict[str, Any] = {"now": now, "limit": limit}
    statement = _FIRE_SLA
    if ticket_ids is not None:
        statement = _FIRE_SLA_OF
        params["ticket_ids"] = list(ticket_ids)
    fired = await session.execute(statement, params)
    rows = [
        (ticket_id, {"sla_due_at": isoformat_z(due_at), "late_ms": _ms(now - due_at)})
        for ticket_id, due_at in fired.all()
        if due_at is not None  # always set: the condition requires it
    ]
    return await _insert_events(
        session,
        events.TICKET_SLA_BREACHED,
        now,
        [ticket_id for ticket_id, _ in rows],
        [json.dumps(payload) for _, payload in rows],
    )


async def close_resolved_due(
    session: AsyncSession, now: datetime, *, after: timedelta, limit: int = 1000
) -> list[str]:
    """Close up to ``limit`` tickets resolved for at least ``after`` with no user activity since
    (a user reply reopens a ticket and clears ``resolved_at``). One ``ticket.closed`` event with
    reason ``auto`` each. Returns the new event ids, to publish after the caller commits."""
    closed = await session.execute(_CLOSE_DUE, {"now": now, "cutoff": now - after, "limit": limit})
    ticket_ids = list(closed.scalars())
    return await _insert_events(
        session, events.TICKET_CLOSED, now, ticket_ids, [_AUTO_CLOSED_PAYLOAD] * len(ticket_ids)
    )


_AUTO_CLOSED_PAYLOAD = json.dumps({"reason": "auto", "previous_status": Status.RESOLVED.value})

# All of a batch's events in one statement: the rows go in as arrays, so the text is the same
# whatever the batch size (prepared once), and no per-row statement or ORM bookkeeping is paid.
_INSERT_EVENTS = text(
    """
    INSERT INTO ticket_events
        (id, ticket_id, type, actor_id, actor_is_admin, payload, request_id, created_at,
         publish_count)
    SELECT e.id, e.ticket_id, :type, NULL, false, e.payload, NULL, :now, 0
    FROM unnest(
        CAST(:ids AS varchar[]), CAST(:ticket_ids AS varchar[]), CAST(:payloads AS jsonb[])
    ) AS e (id, ticket_id, payload)
    """
)


async def _insert_events(
    session: AsyncSession,
    type: str,
    now: datetime,
    ticket_ids: Sequence[str],
    payloads: Sequence[str],
) -> list[str]:
    """Record one event of ``type`` per ticket (``payloads``: JSON text, in the same order);
    returns the new event ids, in that order."""
    if not ticket_ids:
        return []
    ids = [new_id() for _ in ticket_ids]
    await session.execute(
        _INSERT_EVENTS,
        {
            "type": type,
            "now": now,
            "ids": ids,
            "ticket_ids": list(ticket_ids),
            "payloads": list(payloads),
        },
    )
    return ids


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


# Wake-up messages are held in worker memory until due, so only near deadlines get one; the
# sweep catches the rest (and anything whose message was lost).
WAKEUP_HORIZON = timedelta(hours=1)


def sla_wakeup_delay(payload: dict[str, Any], now: datetime) -> timedelta | None:
    """How long until the deadline an event announces, if a wake-up message is worth sending."""
    raw = payload.get("sla_due_at")
    if not isinstance(raw, str):
        return None
    try:
        due = datetime.fromisoformat(raw)
    except ValueError:
        return None
    delay = max(due - now, timedelta(0))
    return delay if delay <= WAKEUP_HORIZON else None
