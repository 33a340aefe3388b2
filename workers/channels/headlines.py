"""The line each channel leads a notice with: what happened to the ticket."""

from __future__ import annotations

from domain.notifications import NoticeKind

HEADLINES: dict[NoticeKind, str] = {
    NoticeKind.NEW_TICKET: "New ticket",
    NoticeKind.USER_REPLY: "New reply from the user",
    NoticeKind.SUPPORT_REPLY: "New reply from support",
    NoticeKind.RESOLVED: "Ticket resolved",
    NoticeKind.CLOSED: "Ticket closed",
    NoticeKind.AUTO_CLOSED: "Ticket closed automatically",
    NoticeKind.ESCALATED: "Ticket escalated to urgent",
    NoticeKind.SLA_BREACHED: "SLA breached: no admin response in time",
    NoticeKind.SLA_RESOLUTION_BREACHED: "SLA breached: not resolved in time",
    NoticeKind.SLA_WARNING: "SLA warning: a deadline is near",
    NoticeKind.UPDATED: "Ticket updated",
    NoticeKind.WEBHOOK_DISABLED: "Webhook endpoint disabled",
}
