"""A plain notice for the channels' tests and benchmarks: every field set, any one replaceable."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from domain.lifecycle import Priority, Status
from domain.notifications import EMAIL, Notice, NoticeKind, Reply

NOW = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)
NOTICE = Notice(
    event_id="event-1",
    kind=NoticeKind.NEW_TICKET,
    channel=EMAIL,
    recipient="team@support.test",
    ticket_id="ticket-1",
    subject="Payment not received",
    status=Status.OPEN,
    priority=Priority.NORMAL,
    category=None,
    requester="user-1",
    assignee=None,
    sla_due_at=None,
    reply=Reply(by_support=False, written_at=NOW, body="Hello\n"),
)


def sample_notice(**changes: Any) -> Notice:
    return replace(NOTICE, **changes)
