"""Who is told what about a ticket event, and what the email or Slack message says.

Pure functions over already-loaded rows, so the rules can be tested without any server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from domain import events
from domain.ids import isoformat_z
from domain.models import Message, Ticket, TicketEvent

EMAIL = "email"
SLACK = "slack"
SLACK_RECIPIENT = "webhook"  # one Slack destination: the configured incoming webhook


@dataclass(frozen=True)
class Audience:
    """Where notifications can go, from configuration and what we know of the people."""

    team_emails: Sequence[str] = ()
    slack_enabled: bool = False
    email_enabled: bool = False
    assignee_email: str | None = None


@dataclass(frozen=True)
class Recipient:
    channel: str
    address: str


@dataclass(frozen=True)
class Notice:
    """What to tell one recipient about one event."""

    event_id: str
    ticket_id: str
    channel: str
    recipient: str
    subject: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    slack_payload: dict[str, Any] | None = None


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
    if event.type in (events.TICKET_CREATED, events.TICKET_SLA_BREACHED):
        found = _team(audience)
    elif event.type == events.MESSAGE_CREATED:
        if payload.get("is_admin"):
            found = _requester(ticket, audience)
        else:
            found = _team(audience)
            if audience.email_enabled and audience.assignee_email:
                found.append(Recipient(EMAIL, audience.assignee_email))
    elif event.type == events.TICKET_UPDATED:
        changes = payload.get("changes", {})
        new_status = changes.get("status", {}).get("new")
        if new_status in ("resolved", "closed") and event.actor_id != ticket.user_id:
            found += _requester(ticket, audience)
        if changes.get("priority", {}).get("new") == "urgent":
            found += _team(audience)
    elif event.type == events.TICKET_CLOSED and event.actor_id != ticket.user_id:
        found = _requester(ticket, audience)
    # One delivery per (channel, address), whatever the overlaps of the lists above.
    unique: dict[tuple[str, str], Recipient] = {}
    for recipient in found:
        unique.setdefault((recipient.channel, recipient.address.lower()), recipient)
    return list(unique.values())


def _headline(event: TicketEvent, ticket: Ticket) -> str:
    payload = event.payload or {}
    if event.type == events.TICKET_CREATED:
        return "New ticket"
    if event.type == events.TICKET_SLA_BREACHED:
        return "SLA breached: no admin response in time"
    if event.type == events.MESSAGE_CREATED:
        return "New reply from support" if payload.get("is_admin") else "New reply from the user"
    if event.type == events.TICKET_CLOSED:
        return "Ticket closed automatically" if payload.get("reason") == "auto" else "Ticket closed"
    if event.type == events.TICKET_UPDATED:
        changes = payload.get("changes", {})
        new_status = changes.get("status", {}).get("new")
        if new_status == "resolved":
            return "Ticket resolved"
        if new_status == "closed":
            return "Ticket closed"
        if changes.get("priority", {}).get("new") == "urgent":
            return "Ticket escalated to urgent"
    return "Ticket updated"


def _mail_domain(sender: str) -> str:
    return sender.rpartition("@")[2].strip("> ") or "helpdesk.local"


def render(
    event: TicketEvent,
    ticket: Ticket,
    recipient: Recipient,
    *,
    message: Message | None,
    sender: str,
) -> Notice:
    """The email or Slack message for one recipient of one event."""
    headline = _headline(event, ticket)
    # Ticket subjects are user input: fold any line breaks so they cannot forge mail headers.
    subject = f"[{headline}] {' '.join(ticket.subject.split())} (ticket {ticket.id})"
    lines = [
        headline,
        "",
        f"Ticket:    {ticket.id}",
        f"Subject:   {ticket.subject}",
        f"Status:    {ticket.status}",
        f"Priority:  {ticket.priority}",
        f"Category:  {ticket.category or '-'}",
        f"Requester: {ticket.user_id}",
    ]
    if ticket.assignee_id:
        lines.append(f"Assignee:  {ticket.assignee_id}")
    if event.type == events.TICKET_SLA_BREACHED and ticket.sla_due_at:
        lines.append(f"SLA due:   {isoformat_z(ticket.sla_due_at)}")
    if message is not None:
        author = "Support" if message.is_admin else ticket.user_id
        lines += ["", f"{author} wrote at {isoformat_z(message.created_at)}:", "", message.body]
    text = "\n".join(lines) + "\n"

    if recipient.channel == SLACK:
        return Notice(
            event_id=event.id,
            ticket_id=ticket.id,
            channel=SLACK,
            recipient=recipient.address,
            subject=subject,
            text=text,
            slack_payload=_slack_payload(headline, ticket, message),
        )
    domain = _mail_domain(sender)
    # Stable ids: a redelivered email has the same Message-ID, so mail systems can drop the copy;
    # every email about a ticket refers to the same root, so clients thread them together.
    digest = hashlib.sha256(recipient.address.lower().encode()).hexdigest()[:16]
    thread_root = f"<ticket-{ticket.id}@{domain}>"
    headers = {
        "Message-ID": f"<{event.id}.{digest}@{domain}>",
        "In-Reply-To": thread_root,
        "References": thread_root,
        "X-Helpdesk-Ticket": ticket.id,
        "X-Helpdesk-Event": event.id,
    }
    return Notice(
        event_id=event.id,
        ticket_id=ticket.id,
        channel=EMAIL,
        recipient=recipient.address,
        subject=subject,
        text=text,
        headers=headers,
    )


def _slack_payload(headline: str, ticket: Ticket, message: Message | None) -> dict[str, Any]:
    fields = [
        {"type": "mrkdwn", "text": f"*Priority:*\n{ticket.priority}"},
        {"type": "mrkdwn", "text": f"*Category:*\n{ticket.category or '-'}"},
        {"type": "mrkdwn", "text": f"*Requester:*\n{ticket.user_id}"},
        {"type": "mrkdwn", "text": f"*Status:*\n{ticket.status}"},
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*{_slack_escape(ticket.subject)}*"},
        },
        {"type": "section", "fields": fields},
    ]
    if message is not None:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _slack_escape(message.body[:2900])},
            }
        )
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Ticket {ticket.id}"}]}
    )
    return {
        "text": f"{headline}: {ticket.subject} [{ticket.priority}] (ticket {ticket.id})",
        "blocks": blocks,
    }


def _mrkdwn_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
