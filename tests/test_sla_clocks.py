"""SLA clocks under a policy file, with an injected clock: arming per priority, met on an agent
reply, next response after each user reply, resolution paused while resolved, re-planning on a
priority change, business hours, and warning then breach each exactly once (concurrent sweeps)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.lifecycle import Caller, Priority, Status, TicketChanges
from domain.policies import TimePolicy
from domain.sla_policy import parse_policy
from domain.tickets import TicketService
from domain.timers import (
    close_resolved_due,
    fire_sla_breaches,
    fire_sla_clocks,
    tickets_planned_by_another_policy,
)
from tests.conftest import T0, Clock

USER = Caller("user-1", email="user@example.com")
ADMIN = Caller("agent-1", is_admin=True)
S = timedelta(seconds=1)
POLICY_FILE = """
warn_at = 0.8
[urgent]
first_response = 60
next_response = 120
resolution = 600
[high]
first_response = 100
resolution = 1000
"""
AUTO_CLOSE = timedelta(seconds=5000)


@pytest.fixture
def sessions_pool_size() -> int:
    return 4


class World:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], db: Any, policy_text: str = POLICY_FILE
    ) -> None:
        self.sessions = sessions
        self.db = db
        self.clock = Clock()
        policy = TimePolicy(timedelta(hours=1), AUTO_CLOSE, sla=parse_policy(policy_text))
        self.service = TicketService(policy, clock=self.clock)

    async def create(self, priority: Priority = Priority.URGENT) -> str:
        async with self.sessions() as s:
            view = await self.service.create(
                s, USER, subject="Down", body="help", category=None, priority=priority
            )
            await s.commit()
            return view.ticket.id

    async def patch(self, ticket_id: str, at: float, **change: Any) -> None:
        self.clock.at(at)
        async with self.sessions() as s:
            await self.service.update_as_admin(s, ticket_id, ADMIN, TicketChanges(**change))
            await s.commit()

    async def admin_reply(self, ticket_id: str, at: float) -> None:
        self.clock.at(at)
        async with self.sessions() as s:
            await self.service.reply_as_admin(s, ticket_id, ADMIN, body="On it")
            await s.commit()

    async def user_reply(self, ticket_id: str, at: float) -> None:
        self.clock.at(at)
        async with self.sessions() as s:
            await self.service.reply_as_owner(s, ticket_id, USER, body="Still broken")
            await s.commit()

    async def sweep(self, at: float) -> list[tuple[str, str | None]]:
        """Both sweeps as the sla pool runs them; the (type, target) of each event fired."""
        now = self.clock.at(at)
        async with self.sessions() as s:
            ids = await fire_sla_breaches(s, now) + await fire_sla_clocks(s, now)
            await s.commit()
        return [self.event(i) for i in ids]

    def event(self, event_id: str) -> tuple[str, str | None]:
        row = self.db.execute(
            "SELECT type, payload->>'target' FROM ticket_events WHERE id = %s", (event_id,)
        ).fetchone()
        return (row[0], row[1])

    def clocks(self, ticket_id: str) -> dict[str, dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM sla_clocks WHERE ticket_id = %s", (ticket_id,))
        names = [c.name for c in cur.description or []]
        return {r[1]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        cur = self.db.execute("SELECT * FROM tickets WHERE id = %s", (ticket_id,))
        names = [c.name for c in cur.description or []]
        return dict(zip(names, cur.fetchone() or (), strict=True))

    def sla_events(self, ticket_id: str) -> list[tuple[str, str | None, str | None]]:
        return [
            (r[0], r[1], r[2])
            for r in self.db.execute(
                "SELECT type, payload->>'target', payload->>'generation' FROM ticket_events "
                "WHERE ticket_id = %s AND type LIKE 'ticket.sla_%%' ORDER BY id",
                (ticket_id,),
            )
        ]


@pytest.fixture
def world(sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]) -> World:
    return World(sessions, db)


WARNING, BREACH = "ticket.sla_warning", "ticket.sla_breached"


async def test_an_urgent_ticket_arms_first_response_and_resolution(world: World) -> None:
    ticket_id = await world.create()
    clocks = world.clocks(ticket_id)
    assert set(clocks) == {"first_response", "resolution"}  # next response waits for a reply
    first = clocks["first_response"]
    assert (first["state"], first["due_at"], first["warn_at"]) == (
        "running",
        T0 + 60 * S,
        T0 + 48 * S,
    )
    assert world.ticket(ticket_id)["sla_due_at"] == T0 + 60 * S  # the historical column agrees
    resolution = clocks["resolution"]
    assert (resolution["due_at"], resolution["warn_at"]) == (T0 + 600 * S, T0 + 480 * S)
    # A priority without targets runs no clock.
    assert world.clocks(await world.create(Priority.LOW)) == {}


async def test_warning_then_breach_each_exactly_once(world: World) -> None:
    ticket_id = await world.create()
    assert await world.sweep(47.999) == []
    assert await world.sweep(48) == [(WARNING, "first_response")]
    assert await world.sweep(59) == []
    assert await world.sweep(60) == [(BREACH, None)]  # the historical payload: no target
    assert await world.sweep(61) == []
    assert await world.sweep(480) == [(WARNING, "resolution")]
    assert await world.sweep(600) == [(BREACH, "resolution")]
    assert await world.sweep(10_000) == []
    clocks = world.clocks(ticket_id)
    assert clocks["first_response"]["state"] == "breached"
    assert clocks["first_response"]["breached_at"] == T0 + 60 * S
    assert clocks["resolution"]["state"] == "breached"
    assert world.ticket(ticket_id)["sla_breached_at"] == T0 + 60 * S


async def test_agent_reply_meets_first_response(world: World) -> None:
    ticket_id = await world.create()
    await world.admin_reply(ticket_id, 30)
    first = world.clocks(ticket_id)["first_response"]
    assert (first["state"], first["met_at"]) == ("met", T0 + 30 * S)
    assert await world.sweep(100) == []  # neither warning nor breach for a met clock


async def test_next_response_runs_after_each_user_reply(world: World) -> None:
    ticket_id = await world.create()
    await world.user_reply(ticket_id, 5)  # before any answer: first response covers it
    assert "next_response" not in world.clocks(ticket_id)
    await world.admin_reply(ticket_id, 10)
    await world.user_reply(ticket_id, 20)
    await world.user_reply(ticket_id, 30)  # the oldest unanswered reply sets the deadline
    nr = world.clocks(ticket_id)["next_response"]
    assert (nr["state"], nr["due_at"], nr["generation"]) == ("running", T0 + 140 * S, 1)
    await world.admin_reply(ticket_id, 50)
    assert world.clocks(ticket_id)["next_response"]["state"] == "met"
    await world.user_reply(ticket_id, 60)
    nr = world.clocks(ticket_id)["next_response"]
    assert (nr["state"], nr["due_at"], nr["generation"]) == ("running", T0 + 180 * S, 2)
    # Warned at 60 + 0.8 * 120 = 156, breached at 180, each once, for this generation.
    assert await world.sweep(155.9) == []
    assert await world.sweep(156) == [(WARNING, "next_response")]
    assert await world.sweep(180) == [(BREACH, "next_response")]
    assert await world.sweep(400) == []
    assert [e for e in world.sla_events(ticket_id) if e[1] == "next_response"] == [
        (WARNING, "next_response", "2"),
        (BREACH, "next_response", "2"),
    ]


async def test_resolution_pauses_while_resolved_and_resumes_with_what_was_left(
    world: World,
) -> None:
    ticket_id = await world.create()
    await world.admin_reply(ticket_id, 10)
    await world.patch(ticket_id, 100, status=Status.RESOLVED)
    resolution = world.clocks(ticket_id)["resolution"]
    assert (resolution["state"], resolution["paused_at"]) == ("paused", T0 + 100 * S)
    assert await world.sweep(2000) == []  # paused: nothing fires
    await world.user_reply(ticket_id, 2000)  # "not solved": reopened
    resolution = world.clocks(ticket_id)["resolution"]
    # 100 s were used before the pause; 500 s remain from 2000.
    assert (resolution["state"], resolution["due_at"]) == ("running", T0 + 2500 * S)
    assert resolution["warn_at"] == T0 + 2380 * S  # 480 - 100 = 380 s of warning time left
    # The user's reply that reopened it waits for an answer now.
    assert world.clocks(ticket_id)["next_response"]["state"] == "running"
    await world.patch(ticket_id, 2100, status=Status.CLOSED)
    clocks = world.clocks(ticket_id)
    assert (clocks["resolution"]["state"], clocks["resolution"]["met_at"]) == ("met", T0 + 2100 * S)
    assert "next_response" not in clocks  # nothing left to measure
    assert await world.sweep(10_000) == []


async def test_auto_close_meets_resolution_when_it_was_resolved(world: World) -> None:
    ticket_id = await world.create()
    await world.patch(ticket_id, 100, status=Status.RESOLVED)
    now = T0 + 100 * S + AUTO_CLOSE
    async with world.sessions() as s:
        assert len(await close_resolved_due(s, now, after=AUTO_CLOSE)) == 1
        await s.commit()
    clocks = world.clocks(ticket_id)
    assert (clocks["resolution"]["state"], clocks["resolution"]["met_at"]) == ("met", T0 + 100 * S)
    assert "first_response" not in clocks  # closed unanswered: nothing left to measure


async def test_a_priority_change_re_plans_the_open_clocks(world: World) -> None:
    ticket_id = await world.create()
    await world.patch(ticket_id, 30, priority=Priority.HIGH)
    clocks = world.clocks(ticket_id)
    # Started at T0 either way: 30 s used, so the new 100 s target is due at 100.
    assert clocks["first_response"]["due_at"] == T0 + 100 * S
    assert world.ticket(ticket_id)["sla_due_at"] == T0 + 100 * S
    assert clocks["resolution"]["due_at"] == T0 + 1000 * S
    assert clocks["first_response"]["warn_at"] == T0 + 80 * S
    assert await world.sweep(60) == []  # the urgent deadline no longer counts
    assert await world.sweep(80) == [(WARNING, "first_response")]
    assert await world.sweep(100) == [(BREACH, None)]
    # Down to a priority without targets: the open clocks go, nothing fires.
    other = await world.create()
    await world.patch(other, 10, priority=Priority.LOW)
    assert world.clocks(other) == {}
    assert world.ticket(other)["sla_due_at"] is None


async def test_concurrent_sweeps_fire_each_warning_and_breach_once(world: World) -> None:
    ids = [await world.create() for _ in range(12)]
    now = T0 + 700 * S  # every warning and breach of both clocks is due

    async def sweep() -> list[str]:
        async with world.sessions() as s:
            fired = await fire_sla_breaches(s, now, limit=5) + await fire_sla_clocks(
                s, now, limit=5
            )
            await asyncio.sleep(0.01)
            await s.commit()
            return fired

    rounds = 0
    while rounds < 10:
        results = await asyncio.gather(*[sweep() for _ in range(4)])
        rounds += 1
        if not any(results):
            break
    for ticket_id in ids:
        assert sorted(world.sla_events(ticket_id), key=str) == sorted(
            [
                (WARNING, "first_response", "1"),
                (BREACH, None, None),
                (WARNING, "resolution", "1"),
                (BREACH, "resolution", "1"),
            ],
            key=str,
        )
        clocks = world.clocks(ticket_id)
        assert {c["state"] for c in clocks.values()} == {"breached"}


async def test_business_hours_and_a_holiday(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    weekdays = ", ".join(f'{day} = "09:00-17:00"' for day in ("mon", "tue", "wed", "thu", "fri"))
    calendar = f"""
[urgent]
first_response = "1h"
[calendar]
timezone = "Europe/Berlin"
hours = {{ {weekdays} }}
holidays = ["2026-03-16"]
"""
    world = World(sessions, db, calendar)
    # Friday 13 March 2026, 16:50 in Berlin (15:50 UTC); Monday the 16th is a holiday.
    world.clock.now = datetime(2026, 3, 13, 15, 50, tzinfo=UTC)
    ticket_id = await world.create()
    due = datetime(2026, 3, 17, 8, 50, tzinfo=UTC)  # Tuesday 09:50 in Berlin
    assert world.ticket(ticket_id)["sla_due_at"] == due
    assert world.clocks(ticket_id)["first_response"]["due_at"] == due
    async with world.sessions() as s:
        assert await fire_sla_breaches(s, due - S) == []
        assert len(await fire_sla_breaches(s, due)) == 1
        await s.commit()


async def test_a_new_policy_re_plans_the_open_clocks_once(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    world = World(sessions, db)
    answered = await world.create()
    await world.admin_reply(answered, 10)  # first response met: stays met
    world.clock.at(0)
    waiting = await world.create()
    world.clock.at(20)
    # Restarted with a new file: urgent first response 30 s, resolution 300 s.
    new = World(sessions, db, "[urgent]\nfirst_response = 30\nresolution = 300\n")
    new.clock.at(20)
    fingerprint = new.service.policy.slas.fingerprint
    async with sessions() as s:
        stale = await tickets_planned_by_another_policy(s, fingerprint)
    assert sorted(stale) == sorted([answered, waiting])
    for ticket_id in stale:
        async with sessions() as s:
            await new.service.replan_for_policy(s, ticket_id)
            await s.commit()
    clocks = world.clocks(waiting)
    # 20 s used of the new 30 s: due at 30; no warnings in the new policy.
    assert (clocks["first_response"]["due_at"], clocks["first_response"]["warn_at"]) == (
        T0 + 30 * S,
        None,
    )
    assert world.ticket(waiting)["sla_due_at"] == T0 + 30 * S
    assert clocks["resolution"]["due_at"] == T0 + 300 * S
    met = world.clocks(answered)["first_response"]
    assert (met["state"], met["due_at"]) == ("met", T0 + 60 * S)  # as it was
    async with sessions() as s:
        assert await tickets_planned_by_another_policy(s, fingerprint) == []
    assert await new.sweep(30) == [(BREACH, None)]


async def test_a_deadline_across_the_spring_change_with_a_warning(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    weekdays = ", ".join(f'{day} = "09:00-17:00"' for day in ("mon", "tue", "wed", "thu", "fri"))
    world = World(
        sessions,
        db,
        f'warn_at = 0.75\n[urgent]\nfirst_response = "2h"\n'
        f'[calendar]\ntimezone = "Europe/Berlin"\nhours = {{ {weekdays} }}\n',
    )
    # Friday 27 March 2026, 16:00 in Berlin (15:00 UTC, winter time); the clocks go forward on
    # Sunday. One open hour on Friday, then Monday from 09:00 summer time (07:00 UTC).
    world.clock.now = datetime(2026, 3, 27, 15, 0, tzinfo=UTC)
    ticket_id = await world.create()
    first = world.clocks(ticket_id)["first_response"]
    assert first["warn_at"] == datetime(2026, 3, 30, 7, 30, tzinfo=UTC)  # 1.5 h: Mon 09:30
    assert first["due_at"] == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)  # 2 h: Mon 10:00
    async with world.sessions() as s:
        before = first["warn_at"] - S
        assert await fire_sla_clocks(s, before) + await fire_sla_breaches(s, before) == []
        assert len(await fire_sla_clocks(s, first["warn_at"])) == 1
        assert len(await fire_sla_breaches(s, first["due_at"])) == 1
        await s.commit()
    assert [e[0] for e in world.sla_events(ticket_id)] == [WARNING, BREACH]
