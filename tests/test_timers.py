"""SLA deadlines and auto-close with an injected clock: every state combination, exactly once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.events import EventType
from domain.lifecycle import Caller, Priority, Status, TicketChanges
from domain.policies import TimePolicy
from domain.tickets import TicketService
from domain.timers import (
    WAKEUP_MARGIN,
    close_resolved_due,
    fire_sla_breaches,
    sla_wakeup_delay,
)
from tests.conftest import T0, Clock

SLA = timedelta(seconds=60)
AUTO_CLOSE = timedelta(seconds=300)
USER = Caller("user-1", email="user@example.com")
ADMIN = Caller("agent-1", is_admin=True)


@pytest.fixture
def sessions_pool_size() -> int:
    return 4  # the concurrent-sweep tests run up to four sweeps at once


class World:
    """Drives the ticket service and the timers at chosen moments."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], db: Any) -> None:
        self.sessions = sessions
        self.db = db
        self.clock = Clock()
        self.service = TicketService(TimePolicy(SLA, AUTO_CLOSE), clock=self.clock)

    async def create(self, priority: Priority = Priority.URGENT) -> str:
        async with self.sessions() as s:
            view = await self.service.create(
                s,
                USER,
                subject="Down",
                body="Everything is down",
                category=None,
                priority=priority,
            )
            await s.commit()
            return view.ticket.id

    async def patch(self, ticket_id: str, **change: Any) -> None:
        async with self.sessions() as s:
            await self.service.update_as_admin(s, ticket_id, ADMIN, TicketChanges(**change))
            await s.commit()

    async def admin_reply(self, ticket_id: str) -> None:
        async with self.sessions() as s:
            await self.service.reply_as_admin(s, ticket_id, ADMIN, body="On it")
            await s.commit()

    async def user_reply(self, ticket_id: str) -> None:
        async with self.sessions() as s:
            await self.service.reply_as_owner(s, ticket_id, USER, body="Still broken")
            await s.commit()

    async def fire_sla(self, seconds: float) -> list[str]:
        async with self.sessions() as s:
            fired = await fire_sla_breaches(s, self.clock.at(seconds))
            await s.commit()
            return fired

    async def auto_close(self, seconds: float) -> list[str]:
        async with self.sessions() as s:
            closed = await close_resolved_due(s, self.clock.at(seconds), after=AUTO_CLOSE)
            await s.commit()
            return closed

    def breaches(self, ticket_id: str) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM ticket_events WHERE ticket_id = %s AND type = "
            "'ticket.sla_breached'",
            (ticket_id,),
        ).fetchone()
        return int(row[0])

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        cur = self.db.execute("SELECT * FROM tickets WHERE id = %s", (ticket_id,))
        names = [c.name for c in cur.description or []]
        return dict(zip(names, cur.fetchone() or (), strict=True))


@pytest.fixture
def world(sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]) -> World:
    return World(sessions, db)


# -- SLA --------------------------------------------------------------------------------------


async def test_unmet_deadline_breaches_exactly_once_at_the_deadline(world: World) -> None:
    ticket_id = await world.create()
    assert world.ticket(ticket_id)["sla_due_at"] == T0 + SLA
    assert await world.fire_sla(59.999) == []
    assert len(await world.fire_sla(60)) == 1
    assert await world.fire_sla(61) == []
    assert await world.fire_sla(3600) == []
    assert world.breaches(ticket_id) == 1
    assert world.ticket(ticket_id)["sla_breached_at"] == T0 + SLA


async def test_first_admin_reply_meets_the_sla(world: World) -> None:
    ticket_id = await world.create()
    world.clock.at(59)
    await world.admin_reply(ticket_id)
    assert await world.fire_sla(120) == []
    assert world.ticket(ticket_id)["sla_due_at"] == T0 + SLA  # kept for display
    assert world.breaches(ticket_id) == 0


async def test_downgrade_stops_the_clock(world: World) -> None:
    ticket_id = await world.create()
    world.clock.at(30)
    await world.patch(ticket_id, priority=Priority.HIGH)
    assert world.ticket(ticket_id)["sla_due_at"] is None
    assert await world.fire_sla(600) == []


@pytest.mark.parametrize("status", [Status.RESOLVED, Status.CLOSED])
async def test_resolving_or_closing_stops_the_clock(world: World, status: Status) -> None:
    ticket_id = await world.create()
    world.clock.at(30)
    await world.patch(ticket_id, status=status)
    assert await world.fire_sla(600) == []
    assert world.breaches(ticket_id) == 0


async def test_in_progress_keeps_counting(world: World) -> None:
    ticket_id = await world.create()
    world.clock.at(10)
    await world.patch(ticket_id, status=Status.IN_PROGRESS, assignee_id="agent-1")
    assert len(await world.fire_sla(60)) == 1


async def test_re_urgent_after_downgrade_gets_a_new_deadline(world: World) -> None:
    ticket_id = await world.create()
    world.clock.at(10)
    await world.patch(ticket_id, priority=Priority.NORMAL)
    world.clock.at(20)
    await world.patch(ticket_id, priority=Priority.URGENT)
    assert world.ticket(ticket_id)["sla_due_at"] == T0 + timedelta(seconds=80)
    assert await world.fire_sla(79) == []  # the old deadline (60) no longer counts
    assert len(await world.fire_sla(80)) == 1


async def test_upgrade_to_urgent_starts_the_clock_then(world: World) -> None:
    ticket_id = await world.create(Priority.NORMAL)
    assert world.ticket(ticket_id)["sla_due_at"] is None
    world.clock.at(100)
    await world.patch(ticket_id, priority=Priority.URGENT)
    assert await world.fire_sla(159) == []
    assert len(await world.fire_sla(160)) == 1


async def test_each_new_deadline_fires_once(world: World) -> None:
    ticket_id = await world.create()
    assert len(await world.fire_sla(60)) == 1
    world.clock.at(70)
    await world.patch(ticket_id, priority=Priority.HIGH)
    world.clock.at(80)
    await world.patch(ticket_id, priority=Priority.URGENT)
    ticket = world.ticket(ticket_id)
    assert ticket["sla_breached_at"] is None and ticket["sla_due_at"] == T0 + timedelta(seconds=140)
    assert await world.fire_sla(139) == []
    assert len(await world.fire_sla(140)) == 1
    assert await world.fire_sla(500) == []
    assert world.breaches(ticket_id) == 2


async def test_reopened_urgent_ticket_is_back_on_the_clock(world: World) -> None:
    ticket_id = await world.create()
    world.clock.at(10)
    await world.patch(ticket_id, status=Status.RESOLVED)
    world.clock.at(200)
    await world.user_reply(ticket_id)  # reopens, never answered by an admin
    assert await world.fire_sla(259) == []
    assert len(await world.fire_sla(260)) == 1


async def test_wakeup_messages_only_for_near_deadlines() -> None:
    now = T0
    created, updated = EventType.TICKET_CREATED, EventType.TICKET_UPDATED
    due_soon = {"sla_due_at": (now + SLA).isoformat()}
    # The wake-up lands just after the deadline (the breach condition is due <= now).
    assert sla_wakeup_delay(created, due_soon, now) == SLA + WAKEUP_MARGIN
    assert sla_wakeup_delay(updated, due_soon, now) == SLA + WAKEUP_MARGIN
    past = {"sla_due_at": (now - SLA).isoformat()}
    assert sla_wakeup_delay(created, past, now) == WAKEUP_MARGIN
    assert (
        sla_wakeup_delay(created, {"sla_due_at": (now + timedelta(days=1)).isoformat()}, now)
        is None
    )
    assert sla_wakeup_delay(created, {}, now) is None
    assert sla_wakeup_delay(created, {"sla_due_at": "not a time"}, now) is None
    # Only the events that arm the clock announce a deadline to wake up for.
    assert sla_wakeup_delay(EventType.MESSAGE_CREATED, due_soon, now) is None


# -- auto-close -------------------------------------------------------------------------------


async def resolved_ticket(world: World, at: float) -> str:
    ticket_id = await world.create(Priority.NORMAL)
    world.clock.at(at)
    await world.patch(ticket_id, status=Status.RESOLVED)
    return ticket_id


async def test_resolved_ticket_closes_when_due_and_not_before(world: World) -> None:
    ticket_id = await resolved_ticket(world, 10)
    assert await world.auto_close(309) == []
    closed = await world.auto_close(310)
    assert len(closed) == 1
    ticket = world.ticket(ticket_id)
    assert ticket["status"] == "closed" and ticket["closed_at"] == T0 + timedelta(seconds=310)
    event = world.db.execute(
        "SELECT type, payload, actor_id FROM ticket_events WHERE id = %s", (closed[0],)
    ).fetchone()
    assert event == ("ticket.closed", {"reason": "auto", "previous_status": "resolved"}, None)
    assert await world.auto_close(1000) == []


async def test_user_reply_reopens_and_cancels_auto_close(world: World) -> None:
    ticket_id = await resolved_ticket(world, 10)
    world.clock.at(100)
    await world.user_reply(ticket_id)
    assert await world.auto_close(10_000) == []
    assert world.ticket(ticket_id)["status"] == "open"


async def test_admin_moving_it_out_of_resolved_cancels_auto_close(world: World) -> None:
    ticket_id = await resolved_ticket(world, 10)
    world.clock.at(100)
    await world.patch(ticket_id, status=Status.IN_PROGRESS)
    assert await world.auto_close(10_000) == []
    # Resolved again later: the clock starts from the new resolution.
    world.clock.at(20_000)
    await world.patch(ticket_id, status=Status.RESOLVED)
    assert await world.auto_close(20_299) == []
    assert len(await world.auto_close(20_300)) == 1


async def test_two_sweeps_at_once_close_each_ticket_once(world: World) -> None:
    ids = [await resolved_ticket(world, 0) for _ in range(30)]
    now = T0 + AUTO_CLOSE + timedelta(seconds=1)

    async def sweep() -> list[str]:
        events: list[str] = []
        while True:
            async with world.sessions() as s:
                batch = await close_resolved_due(s, now, after=AUTO_CLOSE, limit=4)
                await asyncio.sleep(0.05)  # hold the locks a moment, so the sweeps overlap
                await s.commit()
            events += batch
            if not batch:
                return events

    first, second = await asyncio.gather(sweep(), sweep())
    assert len(first) + len(second) == len(ids)
    assert first and second  # both did part of the work
    rows = world.db.execute(
        "SELECT ticket_id, count(*) FROM ticket_events WHERE type = 'ticket.closed' "
        "GROUP BY ticket_id"
    ).fetchall()
    assert sorted(rows) == sorted((i, 1) for i in ids)


async def test_two_sla_sweeps_at_once_breach_each_ticket_once(world: World) -> None:
    ids = [await world.create() for _ in range(20)]
    now = T0 + SLA

    async def sweep() -> list[str]:
        async with world.sessions() as s:
            fired = await fire_sla_breaches(s, now, limit=7)
            await asyncio.sleep(0.01)
            await s.commit()
            return fired

    results = await asyncio.gather(*[sweep() for _ in range(4)])
    assert sum(len(r) for r in results) == len(ids)
    assert all(world.breaches(i) == 1 for i in ids)
