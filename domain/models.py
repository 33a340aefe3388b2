"""SQLAlchemy models: tickets, their messages, the event outbox/audit trail and the delivery ledger.

The schema itself is owned by the Alembic migrations; these classes only map it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    ticket_id: Mapped[str] = mapped_column(ID, ForeignKey("tickets.id", ondelete="CASCADE"))
    author_id: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)

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
