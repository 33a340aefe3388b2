"""Who is told what about a ticket event, and the plain notice each of them is handed.

Pure functions over already-loaded rows, so the rules can be tested without any server. How a
notice looks (an email's subject and body, a Slack message's blocks) is up to its channel, in
``workers/channels``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.events import EventType
from domain.lifecycle import Category, Priority, Status
from domain.models import Message, Ticket, TicketEvent

EMAIL = "email"
SLACK = "slack"
SLACK_RECIPIENT = "webhook"  # one Slack destination: the configured incoming webhook
WEBHOOK = "webhook"  # the host app's endpoints (domain/webhooks.py); recipient: the endpoint id


@dataclass(frozen=True)
class Audience:
    """Where notifications can go, from configuration and what we know of the people."""

    team_emails: Sequence[str] = ()
    slack_enabled: bool = False
    email_enabled: bool = False
    assignee_email: str | None = None
    # Enabled webhook endpoints that want this event's type (their ids).
    webhook_endpoints: Sequence[str] = ()


@dataclass(frozen=True)
class Recipient:
    channel: str
    address: str


def _team(audience: Audience) -> list[Recipient]:
    out: list[Recipient] = []
    if audience.email_enabled:
        out += [Recipient(EMAIL, address) for address in audience.team_emails]
    if audience.slack_enabled:
        out.append(Recipient(SLACK, SLACK_RECIPIENT))
    return out


def _requester(ticket: Ticket, audience: Audience) -> list[Recipient]:
    if audience.email_enabled and ticket.requester_email:
        return [Recipient(EMAIL, ticket.requester_email)]
    return []


def recipients_for(event: TicketEvent, ticket: Ticket, audience: Audience) -> list[Recipient]:
    """The rules of who is told about what.

    - ticket created, user reply, escalation to urgent, SLA breach: the support team (every
      address in ADMIN_EMAILS, and Slack); a user reply also reaches the assignee when known;
    - admin reply: the requester by email (when their token carried an email); not the team;
    - the ticket becomes resolved or closed (by an admin or by auto-close): the requester.
    """
    payload = event.payload or {}
    found: list[Recipient] = []
    if event.type in (
        EventType.TICKET_CREATED,
        EventType.TICKET_SLA_BREACHED,
        EventType.TICKET_SLA_WARNING,
    ):
        found = _team(audience)
    elif event.type == EventType.MESSAGE_CREATED:
        if payload.get("is_admin"):
            found = _requester(ticket, audience)
        else:
            found = _team(audience)
            if audience.email_enabled and audience.assignee_email:
                found.append(Recipient(EMAIL, audience.assignee_email))
    elif event.type == EventType.TICKET_UPDATED:
        changes = payload.get("changes", {})
        new_status = changes.get("status", {}).get("new")
        if new_status in (Status.RESOLVED, Status.CLOSED) and event.actor_id != ticket.user_id:
            found += _requester(ticket, audience)
        if changes.get("priority", {}).get("new") == Priority.URGENT:
            found += _team(audience)
    elif event.type == EventType.TICKET_CLOSED and event.actor_id != ticket.user_id:
        found = _requester(ticket, audience)
    elif event.type == EventType.WEBHOOK_DISABLED:
        found = _team(audience)
    # Webhooks: every endpoint that asked for the event's type, whoever else is told.
    found += [Recipient(WEBHOOK, endpoint_id) for endpoint_id in audience.webhook_endpoints]
    # One delivery per (channel, address), whatever the overlaps of the lists above.
    unique: dict[tuple[str, str], Recipient] = {}
    for recipient in found:
        unique.setdefault((recipient.channel, recipient.address.lower()), recipient)
    return list(unique.values())


class NoticeKind(StrEnum):
    """What happened, as the recipient is told it."""

    NEW_TICKET = "new_ticket"
    USER_REPLY = "user_reply"
    SUPPORT_REPLY = "support_reply"
    RESOLVED = "resolved"
    CLOSED = "closed"
    AUTO_CLOSED = "auto_closed"
    ESCALATED = "escalated"  # priority raised to urgent
    SLA_BREACHED = "sla_breached"  # first or next response missed
    SLA_RESOLUTION_BREACHED = "sla_resolution_breached"
    SLA_WARNING = "sla_warning"  # a share of an SLA target has elapsed (to the team)
    UPDATED = "updated"
    WEBHOOK_DISABLED = "webhook_disabled"  # an endpoint failed for too long (to the team)


@dataclass(frozen=True)
class Reply:
    """The message an event is about."""

    by_support: bool
    written_at: datetime
    body: str


@dataclass(frozen=True)
class Notice:
    """What one recipient is told about one event: plain facts, in no channel's form yet."""

    event_id: str
    kind: NoticeKind
    channel: str
    recipient: str
    ticket_id: str
    subject: str  # the ticket's, as its requester wrote it
    status: Status
    priority: Priority
    category: Category | None
    requester: str  # user id
    assignee: str | None
    sla_due_at: datetime | None  # set for an SLA breach or warning only
    reply: Reply | None
    # The event itself, for channels that pass it on whole (webhooks).
    event_type: str = ""
    occurred_at: datetime | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # the event's payload
    explanation: str | None = None  # a notice about the service itself says what happened


def _kind_of(event: TicketEvent) -> NoticeKind:
    payload = event.payload or {}
    if event.type == EventType.TICKET_CREATED:
        return NoticeKind.NEW_TICKET
    if event.type == EventType.TICKET_SLA_BREACHED:
        if payload.get("target") == "resolution":
            return NoticeKind.SLA_RESOLUTION_BREACHED
        return NoticeKind.SLA_BREACHED
    if event.type == EventType.TICKET_SLA_WARNING:
        return NoticeKind.SLA_WARNING
    if event.type == EventType.WEBHOOK_DISABLED:
        return NoticeKind.WEBHOOK_DISABLED
    if event.type == EventType.MESSAGE_CREATED:
        return NoticeKind.SUPPORT_REPLY if payload.get("is_admin") else NoticeKind.USER_REPLY
    if event.type == EventType.TICKET_CLOSED:
        return NoticeKind.AUTO_CLOSED if payload.get("reason") == "auto" else NoticeKind.CLOSED
    if event.type == EventType.TICKET_UPDATED:
        changes = payload.get("changes", {})
        new_status = changes.get("status", {}).get("new")
        if new_status == Status.RESOLVED:
            return NoticeKind.RESOLVED
        if new_status == Status.CLOSED:
            return NoticeKind.CLOSED
        if changes.get("priority", {}).get("new") == Priority.URGENT:
            return NoticeKind.ESCALATED
    return NoticeKind.UPDATED


def notice_for(
    event: TicketEvent, ticket: Ticket, recipient: Recipient, *, message: Message | None
) -> Notice:
    """The notice for one recipient of one event (``message``: the one the event is about)."""
    kind = _kind_of(event)
    return Notice(
        event_id=event.id,
        kind=kind,
        channel=recipient.channel,
        recipient=recipient.address,
        ticket_id=ticket.id,
        subject=ticket.subject,
        status=Status(ticket.status),
        priority=Priority(ticket.priority),
        category=Category(ticket.category) if ticket.category else None,
        requester=ticket.user_id,
        assignee=ticket.assignee_id,
        sla_due_at=_sla_due_at(event, ticket) if kind in _SLA_KINDS else None,
        reply=(
            Reply(by_support=message.is_admin, written_at=message.created_at, body=message.body)
            if message is not None
            else None
        ),
        event_type=event.type,
        occurred_at=event.created_at,
        details=event.payload or {},
        explanation=explanation(event),
    )


_SLA_KINDS = (
    NoticeKind.SLA_BREACHED,
    NoticeKind.SLA_RESOLUTION_BREACHED,
    NoticeKind.SLA_WARNING,
)
_TARGET_NAMES = {
    "first_response": "first response",
    "next_response": "next response (to the user's latest reply)",
    "resolution": "resolution",
}


def _sla_due_at(event: TicketEvent, ticket: Ticket) -> datetime | None:
    """The deadline the event is about: its own (each clock has one), else the ticket's
    first-response deadline (the historical breach event)."""
    raw = (event.payload or {}).get("sla_due_at")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            pass
    return ticket.sla_due_at


def explanation(event: TicketEvent) -> str | None:
    """The words of a notice that is about the service rather than the ticket (or that says
    which SLA target an SLA notice is about)."""
    payload = event.payload or {}
    target = _TARGET_NAMES.get(str(payload.get("target")))
    if event.type == EventType.TICKET_SLA_WARNING and target:
        return (
            f"SLA warning: the {target} target is due at {payload.get('sla_due_at')} and most "
            "of its time has passed."
        )
    if event.type == EventType.TICKET_SLA_BREACHED and target:
        return f"SLA breached: the {target} target was due at {payload.get('sla_due_at')}."
    if event.type == EventType.WEBHOOK_DISABLED:
        return (
            f"Webhook endpoint {payload.get('endpoint_id')} ({payload.get('url')}) was "
            f"disabled: {payload.get('reason')}. Its pending deliveries fail. Fix the receiver, "
            "enable the endpoint again (PATCH /v1/admin/support/webhooks/{id}, enabled: true) "
            "and retry the failed deliveries (/v1/admin/support/deliveries?channel=webhook"
            "&status=failed). The ticket below is the one whose delivery failed last."
        )
    return None
