"""Time policies: the first-response SLA for urgent tickets and auto-close of resolved tickets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.lifecycle import Priority, Status
from domain.models import Ticket

SLA_ACTIVE_STATUSES = frozenset({Status.OPEN, Status.IN_PROGRESS})


@dataclass(frozen=True)
class TimePolicy:
    sla_urgent: timedelta
    auto_close_after: timedelta


def sla_applies(ticket: Ticket) -> bool:
    """An urgent, active ticket with no admin reply yet is on the first-response clock."""
    return (
        ticket.priority == Priority.URGENT
        and ticket.status in SLA_ACTIVE_STATUSES
        and ticket.first_admin_reply_at is None
    )


def update_sla_clock(
    ticket: Ticket, *, applied_before: bool, now: datetime, policy: TimePolicy
) -> None:
    """Arm or disarm the SLA deadline after a change to the ticket.

    A ticket that comes onto the clock (created urgent, upgraded, reopened while urgent) gets a
    fresh deadline from ``now``. One that leaves it by being downgraded, resolved or closed loses
    its deadline; one that leaves it because an admin answered keeps the deadline for display,
    and the sweep ignores it because ``first_admin_reply_at`` is set.
    """
    applies_now = sla_applies(ticket)
    if applies_now and not applied_before:
        ticket.sla_due_at = now + policy.sla_urgent
        ticket.sla_breached_at = None
    elif applied_before and not applies_now and ticket.first_admin_reply_at is None:
        ticket.sla_due_at = None
