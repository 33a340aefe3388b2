"""The ticket aggregate on its own, without a database: each method checks the transition table,
sets every timestamp, arms or disarms the SLA clock and returns exactly the events it caused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.errors import InvalidTransition, TicketClosed
from domain.events import EventType, NewEvent
from domain.lifecycle import (
    Caller,
    CloseReason,
    Priority,
    Status,
    TicketChanges,
    Trigger,
)
from domain.models import Ticket
from domain.policies import TimePolicy
from tests.conftest import T0

MINUTE = timedelta(minutes=1)
POLICY = TimePolicy(sla_urgent=timedelta(minutes=30), auto_close_after=timedelta(days=7))
OWNER = Caller("user-1", email="user@example.com")
AGENT = Caller("agent-1", is_admin=True)


def new_ticket(priority: Priority = Priority.URGENT) -> Ticket:
    ticket, _, _ = Ticket.open(
        OWNER,
        subject="Down",
        body="Everything is down",
        category=None,
        priority=priority,
        now=T0,
        policy=POLICY,
    )
    return ticket


def types(events: list[NewEvent]) -> list[str]:
    return [e.type.value for e in events]


def test_open_urgent_starts_the_clock_and_announces_the_deadline() -> None:
    ticket, message, events = Ticket.open(
        OWNER, subject="S", body="B", category=None, priority=Priority.URGENT, now=T0, policy=POLICY
    )
    assert ticket.status == Status.OPEN and ticket.created_at == ticket.updated_at == T0
    assert ticket.sla_due_at == T0 + POLICY.sla_urgent
    assert message.ticket_id == ticket.id and not message.is_admin
    [created] = events
    assert created.type is EventType.TICKET_CREATED
    assert created.payload == {
        "message_id": message.id,
        "priority": "urgent",
        "sla_due_at": (T0 + POLICY.sla_urgent).isoformat(),
    }
    assert new_ticket(Priority.NORMAL).sla_due_at is None


def test_agent_reply_meets_the_clock_once() -> None:
    ticket = new_ticket()
    _, events = ticket.reply_as_agent(AGENT, "On it", now=T0 + MINUTE)
    _, _ = ticket.reply_as_agent(AGENT, "Still on it", now=T0 + 2 * MINUTE)
    assert types(events) == ["message.created"]
    assert ticket.first_admin_reply_at == T0 + MINUTE
    assert ticket.updated_at == T0 + 2 * MINUTE
    assert not ticket.on_sla_clock
    assert ticket.breach(now=T0 + timedelta(hours=1)) == []  # met: never breached


def test_owner_reply_to_resolved_reopens_restarts_the_clock_and_cancels_auto_close() -> None:
    ticket = new_ticket()
    ticket.change(TicketChanges(status=Status.RESOLVED), AGENT, now=T0 + MINUTE, policy=POLICY)
    assert ticket.resolved_at == T0 + MINUTE and ticket.sla_due_at is None
    later = T0 + 2 * MINUTE
    message, events = ticket.reply_as_owner(OWNER, "Not fixed", now=later, policy=POLICY)
    assert types(events) == ["message.created", "ticket.updated"]
    assert events[1].payload["changes"] == {"status": {"old": "resolved", "new": "open"}}
    assert ticket.status == Status.OPEN and ticket.resolved_at is None
    assert ticket.sla_due_at == later + POLICY.sla_urgent
    assert ticket.auto_close(now=later + timedelta(days=30), policy=POLICY) == []
    assert message.author_id == OWNER.user_id


def test_change_applies_fields_then_closes() -> None:
    ticket = new_ticket()
    now = T0 + MINUTE
    events = ticket.change(
        TicketChanges(status=Status.CLOSED, priority=Priority.LOW, assignee_id="agent-1"),
        AGENT,
        now=now,
        policy=POLICY,
    )
    assert types(events) == ["ticket.updated", "ticket.closed"]
    assert events[0].payload["changes"] == {
        "priority": {"old": "urgent", "new": "low"},
        "assignee_id": {"old": None, "new": "agent-1"},
    }
    assert events[1].payload == {"reason": "admin", "previous_status": "open"}
    assert ticket.status == Status.CLOSED and ticket.closed_at == now
    assert ticket.sla_due_at is None  # downgraded, then closed: off the clock
    with pytest.raises(TicketClosed):
        ticket.change(TicketChanges(priority=Priority.HIGH), AGENT, now=now, policy=POLICY)
    with pytest.raises(TicketClosed):
        ticket.reply_as_owner(OWNER, "hello?", now=now, policy=POLICY)


def test_a_change_to_the_same_values_changes_nothing() -> None:
    ticket = new_ticket()
    events = ticket.change(
        TicketChanges(status=Status.OPEN, priority=Priority.URGENT),
        AGENT,
        now=T0 + MINUTE,
        policy=POLICY,
    )
    assert events == [] and ticket.updated_at == T0


def test_refused_transitions_leave_the_ticket_untouched() -> None:
    ticket = new_ticket()
    with pytest.raises(InvalidTransition):
        ticket.close(OWNER, Trigger.AUTO_CLOSE, CloseReason.AUTO, now=T0 + MINUTE, policy=POLICY)
    assert ticket.status == Status.OPEN and ticket.closed_at is None


def test_timers_fire_once_at_their_moment() -> None:
    ticket = new_ticket()
    due = T0 + POLICY.sla_urgent
    assert ticket.breach(now=due - timedelta(milliseconds=1)) == []
    [breached] = ticket.breach(now=due + timedelta(milliseconds=250))
    assert breached.payload == {"sla_due_at": "2026-03-15T10:30:00Z", "late_ms": 250}
    assert ticket.breach(now=due + MINUTE) == []

    ticket.change(TicketChanges(status=Status.RESOLVED), AGENT, now=due, policy=POLICY)
    assert ticket.auto_close(now=due + POLICY.auto_close_after - MINUTE, policy=POLICY) == []
    [closed] = ticket.auto_close(now=due + POLICY.auto_close_after, policy=POLICY)
    assert closed.payload == {"reason": "auto", "previous_status": "resolved"}
    assert closed.actor_id is None
    assert ticket.status == Status.CLOSED and ticket.resolved_at is None
