"""The two ticket rules the timer sweeps apply in SQL (domain/models.py: ``SLA_BREACH_DUE``,
``AUTO_CLOSE_DUE`` and what they set) against their Python twins (``Ticket.breach``,
``Ticket.auto_close``), and the SLA clocks' two (domain/sla_clocks.py: ``CLOCK_WARN_DUE``,
``CLOCK_BREACH_DUE``) against ``SlaClock.warn`` and ``SlaClock.breach``: every combination of
the columns they read, fed to both, must end in the same rows and the same events. A change to
one twin alone fails here."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.ids import new_id
from domain.lifecycle import Priority, Status
from domain.models import Ticket
from domain.policies import TimePolicy
from domain.sla_clocks import ClockState, SlaClock
from domain.sla_policy import Target
from domain.timers import close_resolved_due, fire_sla_breaches, fire_sla_clocks

NOW = datetime(2026, 3, 13, 16, 50, tzinfo=UTC)
POLICY = TimePolicy(sla_urgent=timedelta(minutes=5), auto_close_after=timedelta(days=7))
CUTOFF = NOW - POLICY.auto_close_after
SECOND = timedelta(seconds=1)
COLUMNS = [
    "status",
    "priority",
    "updated_at",
    "resolved_at",
    "closed_at",
    "first_admin_reply_at",
    "sla_due_at",
    "sla_breached_at",
]


def every_case() -> list[Ticket]:
    """Each column either rule reads, at the values on both sides of its boundary (and equal)."""
    tickets = []
    for status, priority, replied, due, breached, resolved in itertools.product(
        Status,
        Priority,
        (None, NOW - timedelta(hours=2)),
        (None, NOW - SECOND, NOW, NOW + SECOND),
        (None, NOW - timedelta(minutes=30)),
        (None, CUTOFF - SECOND, CUTOFF, CUTOFF + SECOND),
    ):
        created = NOW - timedelta(days=30)
        tickets.append(
            Ticket(
                id=new_id(),
                user_id="user-1",
                requester_email=None,
                subject="A case",
                status=status.value,
                priority=priority.value,
                category=None,
                assignee_id=None,
                created_at=created,
                updated_at=created,
                resolved_at=resolved,
                closed_at=None,
                first_admin_reply_at=replied,
                sla_due_at=due,
                sla_breached_at=breached,
            )
        )
    return tickets


def row_of(ticket: Ticket) -> dict[str, Any]:
    return {column: getattr(ticket, column) for column in COLUMNS}


async def test_sweeps_in_sql_do_what_the_ticket_methods_do(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    cases = every_case()
    table = cast(Table, Ticket.__table__)
    async with sessions() as session:
        await session.execute(
            insert(table), [{c.name: getattr(t, c.key) for c in table.columns} for t in cases]
        )
        await session.commit()

    # SQL: the sweeps, as the workers run them.
    async with sessions() as session:
        await fire_sla_breaches(session, NOW, limit=len(cases))
        await close_resolved_due(session, NOW, after=POLICY.auto_close_after, limit=len(cases))
        await session.commit()
    db.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
    sql_rows = {r.pop("id"): r for r in db.execute(f"SELECT id, {', '.join(COLUMNS)} FROM tickets")}
    sql_events = {
        (r["ticket_id"], r["type"]): r["payload"]
        for r in db.execute("SELECT ticket_id, type, payload FROM ticket_events")
    }

    # Python: the same cases through the ticket's own methods.
    python_events = {}
    for ticket in cases:
        for event in ticket.breach(now=NOW) + ticket.auto_close(now=NOW, policy=POLICY):
            python_events[(ticket.id, event.type.value)] = event.payload

    assert len(sql_events) == len(python_events)
    assert sql_events == python_events
    mismatched = [t.id for t in cases if sql_rows[t.id] != row_of(t)]
    assert mismatched == []
    # The cases reach both sides of both rules.
    fired_types = {event_type for _, event_type in python_events}
    assert fired_types == {"ticket.sla_breached", "ticket.closed"}
    assert len(python_events) < len(cases)


# -- SLA clocks: the sweep's statement against SlaClock.warn and SlaClock.breach -----------------

CLOCK_COLUMNS = ["state", "warned_at", "breached_at", "due_at", "warn_at"]


def every_clock_case() -> list[tuple[Ticket, SlaClock]]:
    """Each column the clock rules read, on both sides of its boundary (and equal), one ticket
    per clock (the ticket itself has no deadline: only the clock rules can fire)."""
    cases = []
    for state, target, warn_at, warned, due, breached in itertools.product(
        ClockState,
        Target,
        (None, NOW - SECOND, NOW, NOW + SECOND),
        (None, NOW - timedelta(minutes=1)),
        (NOW - SECOND, NOW, NOW + SECOND),
        (None, NOW - timedelta(minutes=1)),
    ):
        created = NOW - timedelta(days=1)
        ticket = Ticket(
            id=new_id(),
            user_id="user-1",
            requester_email=None,
            subject="A clock",
            status="open",
            priority="low",
            category=None,
            assignee_id=None,
            created_at=created,
            updated_at=created,
            resolved_at=None,
            closed_at=None,
            first_admin_reply_at=None,
            sla_due_at=None,
            sla_breached_at=None,
        )
        clock = SlaClock(
            ticket_id=ticket.id,
            target=target.value,
            state=state.value,
            generation=3,
            started_at=NOW - timedelta(hours=1),
            allowed_s=3600.0,
            due_at=due,
            warn_at=warn_at,
            warned_at=warned,
            breached_at=breached,
            met_at=None,
            paused_at=None,
        )
        cases.append((ticket, clock))
    return cases


async def test_the_clock_sweep_in_sql_does_what_the_clock_methods_do(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    cases = every_clock_case()
    tickets, clocks = cast(Table, Ticket.__table__), cast(Table, SlaClock.__table__)
    async with sessions() as session:
        await session.execute(
            insert(tickets),
            [{c.name: getattr(t, c.key) for c in tickets.columns} for t, _ in cases],
        )
        await session.execute(
            insert(clocks),
            [{c.name: getattr(k, c.key) for c in clocks.columns} for _, k in cases],
        )
        await session.commit()

    async with sessions() as session:
        await fire_sla_clocks(session, NOW, limit=len(cases))
        await session.commit()
    db.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
    sql_rows = {
        r.pop("ticket_id"): r
        for r in db.execute(f"SELECT ticket_id, {', '.join(CLOCK_COLUMNS)} FROM sla_clocks")
    }
    sql_events = {
        (r["ticket_id"], r["type"]): r["payload"]
        for r in db.execute("SELECT ticket_id, type, payload FROM ticket_events")
    }

    python_events = {}
    for _, clock in cases:
        for event in clock.warn(NOW) + clock.breach(NOW):
            python_events[(clock.ticket_id, event.type.value)] = event.payload

    assert sql_events == python_events
    mismatched = [
        k.ticket_id
        for _, k in cases
        if sql_rows[k.ticket_id] != {c: getattr(k, c) for c in CLOCK_COLUMNS}
    ]
    assert mismatched == []
    fired_types = {event_type for _, event_type in python_events}
    assert fired_types == {"ticket.sla_warning", "ticket.sla_breached"}
    # A first-response clock is marked, never announced (the ticket's own breach event is).
    assert any(k.target == "first_response" and k.state == "breached" for _, k in cases)
