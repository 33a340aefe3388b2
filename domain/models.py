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
    DateTime,
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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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

ID = String(26)
TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


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
        message, added = self._add_message(author, body, now)
        return message, [added, *self._updated(author, changes, now)]

    def reply_as_agent(
        self, author: Caller, body: str, *, now: datetime
    ) -> tuple[Message, list[NewEvent]]:
        """An agent's reply; the first one meets the first-response SLA."""
        if self.status == Status.CLOSED:
            raise TicketClosed()
        if self.first_admin_reply_at is None:
            self.first_admin_reply_at = now
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
        return [NewEvent(self.id, EventType.TICKET_CLOSED, auto_closed_payload(), now)]

    def breach(self, *, now: datetime) -> list[NewEvent]:
        """Mark the first-response deadline missed if it passed unmet; SQL twin:
        ``SLA_BREACH_DUE`` / ``SLA_BREACH_SET``."""
        if not self.sla_breach_due(now) or self.sla_due_at is None:
            return []
        self.sla_breached_at = now
        payload = breach_payload(self.sla_due_at, now)
        return [NewEvent(self.id, EventType.TICKET_SLA_BREACHED, payload, now)]

    # -- the rules the sweeps also apply in SQL (see SLA_BREACH_DUE, AUTO_CLOSE_DUE below) -----

    @property
    def on_sla_clock(self) -> bool:
        """An urgent, active ticket with no agent reply yet is on the first-response clock."""
        return (
            self.priority == Priority.URGENT
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

    def _replan_sla(self, *, was_on_clock: bool, now: datetime, policy: TimePolicy) -> None:
        """Arm or disarm the first-response deadline after a change.

        A ticket that comes onto the clock (created urgent, upgraded, reopened while urgent and
        unanswered) gets a fresh deadline from ``now``. One that leaves it by being downgraded,
        resolved or closed loses its deadline; one that leaves it because an agent answered
        keeps the deadline for display (the sweep ignores it: ``first_admin_reply_at`` is set).
        """
        on_clock = self.on_sla_clock
        if on_clock and not was_on_clock:
            self.sla_due_at = now + policy.sla_urgent
            self.sla_breached_at = None
        elif was_on_clock and not on_clock and self.first_admin_reply_at is None:
            self.sla_due_at = None

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
    _t.priority == Priority.URGENT.value,
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
