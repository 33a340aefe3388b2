"""Timers kept in PostgreSQL: the SLA clocks (the first-response deadline on the ticket, and the
warnings and other targets' clocks in ``sla_clocks``) and auto-close of resolved tickets. The
sweeps apply the rules of the ticket and its clocks (``Ticket.breach``, ``SlaClock.warn``,
``SlaClock.breach``, ``Ticket.auto_close``) in bulk, through their SQL twins defined next to
them in domain/models.py and domain/sla_clocks.py. Firing is a conditional
update, so a timer fires at most once, never after it was met or cancelled, and any number of
duplicated messages or concurrent sweeps change nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
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
from domain.sla_clocks import (
    CLOCK_BREACH_DUE,
    CLOCK_BREACH_SET,
    CLOCK_WARN_DUE,
    CLOCK_WARN_SET,
    OPEN_STATES,
    ClockState,
    SlaClock,
    clock_breach_payload,
    warning_payload,
)
from domain.sla_policy import Target

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
        # NO KEY UPDATE, not UPDATE: the key is not changed, and a plain FOR UPDATE would block
        # the KEY SHARE lock that every foreign-key check on the ticket takes (the clock sweep
        # inserting its events), which deadlocked the two sweeps.
        .with_for_update(skip_locked=True, key_share=True)
        .cte("due")
    )
    return update(_tickets).where(_t.id == due.c.id, due_rule).values(**sets)


_clocks = cast(Table, SlaClock.__table__)
_c = _clocks.c

# The first-response breach marks the ticket (its historical columns) only: the clock sweep
# marks the ticket's first-response clock at the same deadline by itself. A statement that
# locked tickets and then waited for clock rows deadlocked against the clock sweep; each sweep
# now locks rows of one table only (SKIP LOCKED), and writers lock the ticket, then its clocks.
_FIRE_SLA = _fire(SLA_BREACH_DUE, _t.sla_due_at, SLA_BREACH_SET).returning(_t.id, _t.sla_due_at)
_CLOSE_DUE = _fire(AUTO_CLOSE_DUE, _t.resolved_at, AUTO_CLOSE_SET).returning(_t.id)


# Warnings and breaches of clocks in ONE statement, so a sweep updates each clock row once: a
# second update of a row this transaction already changed makes PostgreSQL re-check the foreign
# key (a KEY SHARE lock on the ticket), which waits for writers holding the ticket and deadlocks
# with them. The due rows are chosen (and locked, SKIP LOCKED) with what is due of each.
_due_clocks = (
    select(
        _c.ticket_id,
        _c.target,
        CLOCK_WARN_DUE.label("warn"),
        CLOCK_BREACH_DUE.label("breach"),
    )
    .where(or_(CLOCK_WARN_DUE, CLOCK_BREACH_DUE))
    .order_by(_c.due_at, _c.ticket_id, _c.target)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
    .cte("due")
)
_when = _due_clocks.c
_FIRE_CLOCKS = (
    update(_clocks)
    .where(
        _c.ticket_id == _when.ticket_id,
        _c.target == _when.target,
        or_(CLOCK_WARN_DUE, CLOCK_BREACH_DUE),
    )
    .values(
        {key: case((_when.warn, value), else_=_c[key]) for key, value in CLOCK_WARN_SET.items()}
        | {
            key: case((_when.breach, value), else_=_c[key])
            for key, value in CLOCK_BREACH_SET.items()
        }
    )
    .returning(
        _c.ticket_id,
        _c.target,
        _c.generation,
        _c.due_at,
        _c.warn_at,
        _when.warn,
        _when.breach,
    )
)


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


async def fire_sla_clocks(session: AsyncSession, now: datetime, *, limit: int = 1000) -> list[str]:
    """Send the warnings that are due (a share of a target elapsed) and breach the clocks
    whose deadline passed, each at most once per clock (rows locked with SKIP LOCKED,
    conditional updates), with one event each, published after the caller commits; a
    first-response clock is only marked (its event is the ticket's own, fire_sla_breaches).
    Returns the events' ids (of at most ``limit`` clocks)."""
    fired = (await session.execute(_FIRE_CLOCKS, {"now": now, "limit": limit})).all()
    new_events: list[NewEvent] = []
    # As SlaClock.warn then SlaClock.breach would, for each clock (both may be due at once).
    for ticket_id, target, generation, due_at, warn_at, warned, breached in fired:
        if warned:
            payload = warning_payload(target, generation, due_at, warn_at, now)
            new_events.append(NewEvent(ticket_id, EventType.TICKET_SLA_WARNING, payload, now))
        if breached and target != Target.FIRST_RESPONSE:
            payload = clock_breach_payload(target, generation, due_at, now)
            new_events.append(NewEvent(ticket_id, EventType.TICKET_SLA_BREACHED, payload, now))
    return await events.write(session, new_events)


_OPEN_CLOCK_STATES = sorted(s.value for s in OPEN_STATES)


async def tickets_planned_by_another_policy(
    session: AsyncSession, fingerprint: str, *, limit: int = 500
) -> list[str]:
    """Tickets with an open clock planned under another SLA policy (a process started with a
    changed SLA_POLICY_FILE), to re-plan one by one (TicketService.replan_for_policy). Clocks
    from before policies existed (no fingerprint) are left as they were planned."""
    query = (
        select(_c.ticket_id)
        .where(
            _c.state.in_(_OPEN_CLOCK_STATES),
            _c.policy.is_not(None),
            _c.policy != fingerprint,
        )
        .distinct()
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


# What auto-close does to the closed tickets' clocks (``Ticket._settle_clocks``): resolution is
# met when the ticket was resolved; response clocks still open have nothing left to measure.
_CLOSED_IDS = func.unnest(bindparam("ids", type_=ARRAY(String)))
_MEET_RESOLUTION = (
    update(_clocks)
    .where(
        _c.ticket_id.in_(select(_CLOSED_IDS)),
        _c.target == Target.RESOLUTION.value,
        _c.state.in_(_OPEN_CLOCK_STATES),
    )
    .values(
        state=ClockState.MET.value,
        met_at=func.coalesce(_c.paused_at, bindparam("now")),
        paused_at=None,
    )
)
_DROP_RESPONSE_CLOCKS = delete(_clocks).where(
    _c.ticket_id.in_(select(_CLOSED_IDS)),
    _c.target != Target.RESOLUTION.value,
    _c.state.in_(_OPEN_CLOCK_STATES),
)


async def close_resolved_due(
    session: AsyncSession, now: datetime, *, after: timedelta, limit: int = 1000
) -> list[str]:
    """Close up to ``limit`` tickets resolved for at least ``after`` with no user activity since
    (a user reply reopens a ticket and clears ``resolved_at``), with one ``ticket.closed`` event
    each, published after the caller commits. Returns the events' ids."""
    params = {"now": now, "cutoff": now - after, "limit": limit}
    closed = list((await session.execute(_CLOSE_DUE, params)).scalars())
    if closed:
        await session.execute(_MEET_RESOLUTION, {"ids": closed, "now": now})
        await session.execute(_DROP_RESPONSE_CLOCKS, {"ids": closed})
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
