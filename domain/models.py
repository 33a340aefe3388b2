"""SQLAlchemy models: tickets, their messages, the event outbox/audit trail and the delivery ledger.

The schema itself is owned by the Alembic migrations; these classes map it. ``Ticket`` is also
the aggregate that enforces the ticket's lifecycle: every change to a ticket goes through one of
its methods, which checks the transition table, sets the timestamps, arms or disarms the SLA
clock and returns the events it caused. The two rules the timer sweeps must apply in bulk are
written twice, in Python on the class and in SQL right after it; tests/test_rule_twins.py feeds
both the same cases.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    literal,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship

from domain.base import ID, TZ, Base
from domain.errors import TicketClosed
from domain.events import EventType, NewEvent
from domain.ids import isoformat_z, new_id
from domain.lifecycle import (
    Caller,
    CloseReason,
    Priority,
    Status,
    TicketChanges,
    Trigger,
    check_transition,
)
from domain.policies import TimePolicy
from domain.sla_clocks import OPEN_STATES, ClockState, SlaClock
from domain.sla_policy import SlaPolicy, Target

__all__ = ["ID", "TZ", "Base", "Message", "SlaClock", "Ticket", "TicketEvent"]


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    requester_email: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(16))
    assignee_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)
    resolved_at: Mapped[datetime | None] = mapped_column(TZ)
    closed_at: Mapped[datetime | None] = mapped_column(TZ)
    first_admin_reply_at: Mapped[datetime | None] = mapped_column(TZ)
    sla_due_at: Mapped[datetime | None] = mapped_column(TZ)
    sla_breached_at: Mapped[datetime | None] = mapped_column(TZ)
    # The subject's text-search document (weight A), kept by a trigger (migration 0004); never
    # loaded with the ticket, only searched (domain/search.py).
    search_vector: Mapped[Any] = mapped_column(TSVECTOR, deferred=True)
    # The SLA clocks (domain/sla_clocks.py). Never loaded implicitly: the ticket service loads
    # them with the ticket (under its lock for a write), and a new ticket starts with its own.
    clocks: Mapped[list[SlaClock]] = relationship(
        lazy="raise", cascade="all, delete-orphan", order_by=SlaClock.target
    )

    # -- the lifecycle: each method checks the rules, changes the ticket, returns its events ---

    @classmethod
    def open(
        cls,
        author: Caller,
        *,
        subject: str,
        body: str,
        category: str | None,
        priority: Priority,
        now: datetime,
        policy: TimePolicy,
    ) -> tuple[Ticket, Message, list[NewEvent]]:
        """A new open ticket with its first message; an urgent one starts on the SLA clock."""
        ticket = cls(
            id=new_id(),
            user_id=author.user_id,
            requester_email=author.email,
            subject=subject,
            status=Status.OPEN.value,
            priority=priority.value,
            category=category,
            assignee_id=None,
            created_at=now,
            updated_at=now,
            resolved_at=None,
            closed_at=None,
            first_admin_reply_at=None,
            sla_due_at=None,
            sla_breached_at=None,
        )
        ticket.clocks = []
        ticket._replan_sla(was_on_clock=False, now=now, policy=policy)
        message = ticket._new_message(author, body, now)
        payload: dict[str, Any] = {"message_id": message.id, "priority": ticket.priority}
        if ticket.sla_due_at is not None:
            # Full precision: a worker sets a wake-up message for this exact moment.
            payload["sla_due_at"] = ticket.sla_due_at.isoformat()
        created = NewEvent(ticket.id, EventType.TICKET_CREATED, payload, now, author.user_id)
        return ticket, message, [created]

    def reply_as_owner(
        self, author: Caller, body: str, *, now: datetime, policy: TimePolicy
    ) -> tuple[Message, list[NewEvent]]:
        """The owner's reply. A reply to a resolved ticket means "not solved": it reopens it
        (which cancels auto-close and, for an unanswered urgent ticket, restarts the clock)."""
        if self.status == Status.CLOSED:
            raise TicketClosed()
        changes: dict[str, Any] = {}
        if self.status == Status.RESOLVED:
            was_on_clock = self.on_sla_clock
            changes["status"] = self._move(Trigger.USER_REPLY, Status.OPEN, now)
            self._replan_sla(was_on_clock=was_on_clock, now=now, policy=policy)
        if author.email and self.requester_email != author.email:
            self.requester_email = author.email
        self._await_next_response(now, policy.slas)
        message, added = self._add_message(author, body, now)
        return message, [added, *self._updated(author, changes, now)]

    def reply_as_agent(
        self, author: Caller, body: str, *, now: datetime
    ) -> tuple[Message, list[NewEvent]]:
        """An agent's reply; the first one meets the first-response SLA, and any one meets a
        running next-response clock."""
        if self.status == Status.CLOSED:
            raise TicketClosed()
        if self.first_admin_reply_at is None:
            self.first_admin_reply_at = now
        for target in (Target.FIRST_RESPONSE, Target.NEXT_RESPONSE):
            clock = self.clock(target)
            if clock is not None:
                clock.meet(now)
        message, added = self._add_message(author, body, now)
        return message, [added]

    def change(
        self, change: TicketChanges, actor: Caller, *, now: datetime, policy: TimePolicy
    ) -> list[NewEvent]:
        """An agent's change of priority, assignee and/or status. Fields equal to the current
        value change nothing; a close is applied after the other fields."""
        current = Status(self.status)
        if current is Status.CLOSED:
            raise TicketClosed(change.status.value if change.status is not None else None)
        was_on_clock = self.on_sla_clock
        changes: dict[str, Any] = {}
        if change.priority is not None and change.priority.value != self.priority:
            changes["priority"] = {"old": self.priority, "new": change.priority.value}
            self.priority = change.priority.value
        if change.assigns and change.assignee_id != self.assignee_id:
            changes["assignee_id"] = {"old": self.assignee_id, "new": change.assignee_id}
            self.assignee_id = change.assignee_id
        closing = False
        if change.status is not None and change.status is not current:
            check_transition(Trigger.ADMIN, current, change.status)
            closing = change.status is Status.CLOSED
            if not closing:
                changes["status"] = self._move(Trigger.ADMIN, change.status, now)
        new_events: list[NewEvent] = []
        if changes:
            self._replan_sla(was_on_clock=was_on_clock, now=now, policy=policy)
            self.updated_at = now
            new_events += self._updated(actor, changes, now)
        if closing:
            new_events += self.close(
                actor, Trigger.ADMIN, CloseReason.ADMIN, now=now, policy=policy
            )
        return new_events

    def close(
        self,
        actor: Caller,
        trigger: Trigger,
        reason: CloseReason,
        *,
        now: datetime,
        policy: TimePolicy,
    ) -> list[NewEvent]:
        was_on_clock = self.on_sla_clock
        previous = self.status
        self._move(trigger, Status.CLOSED, now)
        self._replan_sla(was_on_clock=was_on_clock, now=now, policy=policy)
        payload = {"reason": reason.value, "previous_status": previous}
        return [
            NewEvent(self.id, EventType.TICKET_CLOSED, payload, now, actor.user_id, actor.is_admin)
        ]

    def auto_close(self, *, now: datetime, policy: TimePolicy) -> list[NewEvent]:
        """Close the ticket if it stayed resolved for ``policy.auto_close_after``; SQL twin:
        ``AUTO_CLOSE_DUE`` / ``AUTO_CLOSE_SET``."""
        if not self.auto_close_due(now, policy.auto_close_after):
            return []
        self._move(Trigger.AUTO_CLOSE, Status.CLOSED, now)
        self._settle_clocks(now)
        return [NewEvent(self.id, EventType.TICKET_CLOSED, auto_closed_payload(), now)]

    def breach(self, *, now: datetime) -> list[NewEvent]:
        """Mark the first-response deadline missed if it passed unmet; SQL twin:
        ``SLA_BREACH_DUE`` / ``SLA_BREACH_SET``."""
        if not self.sla_breach_due(now) or self.sla_due_at is None:
            return []
        self.sla_breached_at = now
        clock = self.clock(Target.FIRST_RESPONSE)
        if clock is not None:
            clock.mark_breached(now)
        payload = breach_payload(self.sla_due_at, now)
        return [NewEvent(self.id, EventType.TICKET_SLA_BREACHED, payload, now)]

    def fire_timers(self, *, now: datetime) -> list[NewEvent]:
        """Every SLA timer of the ticket that is due: the first-response breach, then each
        clock's warning and breach (the sweeps do the same in SQL, domain/timers.py)."""
        fired = self.breach(now=now)
        for clock in self.clocks:
            fired += clock.warn(now) + clock.breach(now)
        return fired

    def clock(self, target: Target) -> SlaClock | None:
        return next((c for c in self.clocks if c.target == target), None)

    # -- the rules the sweeps also apply in SQL (see SLA_BREACH_DUE, AUTO_CLOSE_DUE below) -----

    @property
    def on_sla_clock(self) -> bool:
        """An active ticket with a first-response deadline and no agent reply yet is on the
        first-response clock. (The deadline is only ever armed for a priority the policy gives
        a first-response target, by default urgent, and cleared when it leaves it unanswered.)"""
        return (
            self.sla_due_at is not None
            and self.status in SLA_ACTIVE_STATUSES
            and self.first_admin_reply_at is None
        )

    def wants_first_response_clock(self, slas: SlaPolicy) -> bool:
        return (
            slas.target(self.priority, Target.FIRST_RESPONSE) is not None
            and self.status in SLA_ACTIVE_STATUSES
            and self.first_admin_reply_at is None
        )

    def sla_breach_due(self, now: datetime) -> bool:
        return (
            self.on_sla_clock
            and self.sla_due_at is not None
            and self.sla_due_at <= now
            and self.sla_breached_at is None
        )

    def auto_close_due(self, now: datetime, after: timedelta) -> bool:
        return (
            self.status == Status.RESOLVED
            and self.resolved_at is not None
            and self.resolved_at <= now - after
        )

    # -- helpers -------------------------------------------------------------------------------

    def _move(self, trigger: Trigger, requested: Status, now: datetime) -> dict[str, str]:
        """Change the status if the table allows it; returns the change for the event."""
        current = Status(self.status)
        check_transition(trigger, current, requested)
        self.status = requested.value
        self.updated_at = now
        # resolved_at drives auto-close: set on entering resolved, cleared on leaving it.
        self.resolved_at = now if requested is Status.RESOLVED else None
        if requested is Status.CLOSED:
            self.closed_at = now
        return {"old": current.value, "new": requested.value}

    def _replan_sla(
        self, *, was_on_clock: bool, now: datetime, policy: TimePolicy, force: bool = False
    ) -> None:
        """Arm, re-plan or disarm the first-response deadline after a change, then the other
        clocks (``_settle_clocks``, ``_plan_clocks``).

        A ticket that comes onto the clock (created with a priority that has a first-response
        target, upgraded to one, reopened unanswered) gets a fresh deadline from ``now``. One
        that stays on it under another target (a priority change) is re-planned: the time
        already waited counts against the new target. One that leaves it by being downgraded,
        resolved or closed loses its deadline (its clock pauses while resolved); one that
        leaves it because an agent answered keeps the deadline for display (the sweep ignores
        it: ``first_admin_reply_at`` is set).
        """
        slas = policy.slas
        target = slas.target(self.priority, Target.FIRST_RESPONSE)
        wants = self.wants_first_response_clock(slas)
        clock = self.clock(Target.FIRST_RESPONSE)
        if wants and target is not None and not was_on_clock:
            self.sla_due_at = slas.deadline(now, target)
            self.sla_breached_at = None
            if clock is None:
                self.clocks.append(
                    SlaClock.start(self.id, Target.FIRST_RESPONSE, now, target, slas)
                )
            else:
                clock.restart(now, target, slas)
            # The clock shows the ticket's deadline itself: one computation, no drift.
            self._first_response_clock_follows()
        elif wants and target is not None and clock is not None and self.sla_breached_at is None:
            clock.replan(now, target, slas, force=force)
            if clock.state == ClockState.RUNNING:
                self.sla_due_at = clock.due_at
        elif was_on_clock and not wants and self.first_admin_reply_at is None:
            self.sla_due_at = None
            if clock is not None and clock.state in OPEN_STATES:
                if self.status == Status.RESOLVED:
                    clock.pause(now)
                else:
                    self.clocks.remove(clock)  # downgraded or closed unanswered: no target now
        self._settle_clocks(now)
        self._plan_clocks(now, slas, force=force)

    def replan_for_policy(self, *, now: datetime, policy: TimePolicy) -> None:
        """The ticket's open clocks under another policy (a process started with a new
        SLA_POLICY_FILE): each target re-planned from what it already used, armed or dropped as
        the new policy says; met and breached clocks stay as they are."""
        self._replan_sla(was_on_clock=self.on_sla_clock, now=now, policy=policy, force=True)
        for clock in self.clocks:  # paused ones too: they resume under the new policy
            if clock.state in OPEN_STATES:
                clock.policy = policy.slas.fingerprint

    def _first_response_clock_follows(self) -> None:
        clock = self.clock(Target.FIRST_RESPONSE)
        if clock is not None and self.sla_due_at is not None:
            clock.due_at = self.sla_due_at

    def _settle_clocks(self, now: datetime) -> None:
        """Status-driven: a resolved ticket waits on its user, so its running clocks pause; a
        closed one is done: the resolution clock is met (when it was resolved, if it was), the
        response clocks still open have nothing left to measure and go."""
        if self.status == Status.RESOLVED:
            for clock in self.clocks:
                clock.pause(now)
        elif self.status == Status.CLOSED:
            for clock in list(self.clocks):
                if clock.state not in OPEN_STATES:
                    continue
                if clock.target == Target.RESOLUTION:
                    clock.meet(clock.paused_at or now)
                else:
                    self.clocks.remove(clock)

    def _plan_clocks(self, now: datetime, slas: SlaPolicy, *, force: bool = False) -> None:
        """The next-response and resolution clocks of an active ticket under the current
        priority's targets: started, resumed after a pause, re-planned or removed."""
        if self.status not in SLA_ACTIVE_STATUSES:
            return
        for target in (Target.NEXT_RESPONSE, Target.RESOLUTION):
            allowed = slas.target(self.priority, target)
            clock = self.clock(target)
            if allowed is None:
                if clock is not None and clock.state in OPEN_STATES:
                    self.clocks.remove(clock)
            elif clock is None:
                # Only resolution starts on its own; a next-response clock waits for a reply.
                if target is Target.RESOLUTION:
                    self.clocks.append(SlaClock.start(self.id, target, now, allowed, slas))
            elif clock.state == ClockState.PAUSED:
                if target is Target.RESOLUTION:
                    clock.resume(now, allowed, slas)  # resolved, then found not solved
                else:
                    clock.restart(now, allowed, slas)  # the reply that reopened it waits now
            else:
                clock.replan(now, allowed, slas, force=force)

    def _await_next_response(self, now: datetime, slas: SlaPolicy) -> None:
        """A user reply on an answered, active ticket starts the next-response clock, unless
        one already runs (the oldest unanswered reply sets the deadline). Before the first
        answer the first-response clock covers every reply."""
        allowed = slas.target(self.priority, Target.NEXT_RESPONSE)
        if (
            allowed is None
            or self.status not in SLA_ACTIVE_STATUSES
            or self.first_admin_reply_at is None
        ):
            return
        clock = self.clock(Target.NEXT_RESPONSE)
        if clock is None:
            self.clocks.append(SlaClock.start(self.id, Target.NEXT_RESPONSE, now, allowed, slas))
        elif clock.state != ClockState.RUNNING:
            clock.restart(now, allowed, slas)

    def _new_message(self, author: Caller, body: str, now: datetime) -> Message:
        return Message(
            id=new_id(),
            ticket_id=self.id,
            author_id=author.user_id,
            is_admin=author.is_admin,
            body=body,
            created_at=now,
        )

    def _add_message(self, author: Caller, body: str, now: datetime) -> tuple[Message, NewEvent]:
        message = self._new_message(author, body, now)
        self.updated_at = now
        payload = {"message_id": message.id, "is_admin": author.is_admin}
        added = NewEvent(
            self.id, EventType.MESSAGE_CREATED, payload, now, author.user_id, author.is_admin
        )
        return message, added

    def _updated(self, actor: Caller, changes: dict[str, Any], now: datetime) -> list[NewEvent]:
        if not changes:
            return []
        payload: dict[str, Any] = {"changes": changes}
        if self.sla_due_at is not None:
            payload["sla_due_at"] = self.sla_due_at.isoformat()
        return [
            NewEvent(self.id, EventType.TICKET_UPDATED, payload, now, actor.user_id, actor.is_admin)
        ]


SLA_ACTIVE_STATUSES = frozenset({Status.OPEN, Status.IN_PROGRESS})


def breach_payload(due_at: datetime, now: datetime) -> dict[str, Any]:
    return {
        "sla_due_at": isoformat_z(due_at),
        "late_ms": int((now - due_at).total_seconds() * 1000),
    }


def auto_closed_payload() -> dict[str, Any]:
    return {"reason": CloseReason.AUTO.value, "previous_status": Status.RESOLVED.value}


# The SQL twins of ``Ticket.sla_breach_due``/``breach`` and ``auto_close_due``/``auto_close``,
# for the sweeps that apply them to a thousand tickets per statement (domain/timers.py).
# Parameters: ``now``, and ``cutoff`` = now - the auto-close delay.
_t = cast(Table, Ticket.__table__).c
SLA_BREACH_DUE = and_(
    _t.sla_due_at <= bindparam("now"),
    _t.sla_breached_at.is_(None),
    _t.first_admin_reply_at.is_(None),
    _t.status.in_(sorted(s.value for s in SLA_ACTIVE_STATUSES)),
)
SLA_BREACH_SET: dict[str, Any] = {"sla_breached_at": bindparam("now")}
# 'resolved' is written into the statement, not bound: then even a generic plan of the prepared
# statement can use the partial index on resolved_at (WHERE status = 'resolved').
AUTO_CLOSE_DUE = and_(
    _t.status == literal(Status.RESOLVED.value, literal_execute=True),
    _t.resolved_at <= bindparam("cutoff"),
)
AUTO_CLOSE_SET: dict[str, Any] = {
    "status": Status.CLOSED.value,
    "closed_at": bindparam("now"),
    "updated_at": bindparam("now"),
    "resolved_at": None,
}


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    ticket_id: Mapped[str] = mapped_column(ID, ForeignKey("tickets.id", ondelete="CASCADE"))
    author_id: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)
    # The body's text-search document, kept by a trigger (migration 0004); only searched.
    search_vector: Mapped[Any] = mapped_column(TSVECTOR, deferred=True)

    # Declared so the unit of work inserts the ticket before its rows; never loaded implicitly.
    ticket: Mapped[Ticket] = relationship(lazy="raise")


class TicketEvent(Base):
    """One domain event: the audit trail and (``published_at``, ``completed_at``) the outbox."""

    __tablename__ = "ticket_events"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    ticket_id: Mapped[str] = mapped_column(ID, ForeignKey("tickets.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    actor_is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZ)
    published_at: Mapped[datetime | None] = mapped_column(TZ)
    publish_count: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(TZ)

    ticket: Mapped[Ticket] = relationship(lazy="raise")


class Delivery(Base):
    """Notification ledger: one row per (event, channel, recipient), so nothing is sent twice."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("event_id", "channel", "recipient"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    event_id: Mapped[str] = mapped_column(ID, ForeignKey("ticket_events.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)
    sent_at: Mapped[datetime | None] = mapped_column(TZ)


class Staff(Base):
    """Admins we have seen, with the email their token carried (to notify assignees)."""

    __tablename__ = "staff"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    updated_at: Mapped[datetime] = mapped_column(TZ)


class IdempotencyKey(Base):
    """A caller's ``Idempotency-Key`` and the response its request got (domain/idempotency.py).
    Written in the transaction of the write it guards, so neither exists without the other."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and body
    request_path: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(TZ)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(BYTEA)
