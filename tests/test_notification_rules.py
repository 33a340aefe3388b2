"""Who is told what, and the notice they are handed: domain.notifications, over plain model
objects."""

from __future__ import annotations

from typing import Any

import pytest

from domain.events import EventType
from domain.lifecycle import Category, Priority, Status
from domain.models import Message, Ticket, TicketEvent
from domain.notifications import (
    EMAIL,
    SLACK,
    Audience,
    Notice,
    NoticeKind,
    Recipient,
    Reply,
    notice_for,
    recipients_for,
)
from tests.conftest import T0, TEAM

FULL = Audience(team_emails=TEAM, email_enabled=True, slack_enabled=True)


def ticket(**overrides: Any) -> Ticket:
    values: dict[str, Any] = dict(
        id="01JN2XG6H7J8K9M0N1P2Q3R4S5",
        user_id="user-1",
        requester_email="req@example.com",
        subject="Payment not received",
        status="open",
        priority="high",
        category="billing",
        assignee_id=None,
        created_at=T0,
        updated_at=T0,
    )
    values.update(overrides)
    return Ticket(**values)


def event(type: str, actor: str = "user-1", admin: bool = False, **payload: Any) -> TicketEvent:
    return TicketEvent(
        id="01JN2XH7J8K9M0N1P2Q3R4S5T6",
        ticket_id="01JN2XG6H7J8K9M0N1P2Q3R4S5",
        type=type,
        actor_id=actor,
        actor_is_admin=admin,
        payload=payload,
        created_at=T0,
    )


TEAM_ALL = {Recipient(EMAIL, a) for a in TEAM} | {Recipient(SLACK, "webhook")}
REQUESTER = {Recipient(EMAIL, "req@example.com")}


@pytest.mark.parametrize(
    ("evt", "expected"),
    [
        (event(EventType.TICKET_CREATED), TEAM_ALL),
        (event(EventType.MESSAGE_CREATED, is_admin=False), TEAM_ALL),
        (event(EventType.MESSAGE_CREATED, "agent", True, is_admin=True), REQUESTER),
        (
            event(
                EventType.TICKET_UPDATED,
                "agent",
                True,
                changes={"status": {"old": "open", "new": "resolved"}},
            ),
            REQUESTER,
        ),
        (
            event(
                EventType.TICKET_UPDATED,
                "agent",
                True,
                changes={"status": {"old": "open", "new": "in_progress"}},
            ),
            set(),
        ),
        (
            event(
                EventType.TICKET_UPDATED,
                "agent",
                True,
                changes={"priority": {"old": "high", "new": "urgent"}},
            ),
            TEAM_ALL,
        ),
        (
            event(
                EventType.TICKET_UPDATED,
                "agent",
                True,
                changes={"assignee_id": {"old": None, "new": "agent"}},
            ),
            set(),
        ),
        (event(EventType.TICKET_CLOSED, "agent", True, reason="admin"), REQUESTER),
        (event(EventType.TICKET_CLOSED, None, False, reason="auto"), REQUESTER),
        (event(EventType.TICKET_CLOSED, "user-1", False, reason="user"), set()),
        (event(EventType.TICKET_SLA_BREACHED, None), TEAM_ALL),
    ],
    ids=lambda v: v.type if isinstance(v, TicketEvent) else None,
)
def test_who_is_told_what(evt: TicketEvent, expected: set[Recipient]) -> None:
    assert set(recipients_for(evt, ticket(), FULL)) == expected


def test_user_reply_also_reaches_the_known_assignee_once() -> None:
    audience = Audience(team_emails=TEAM, email_enabled=True, assignee_email="agent@support.test")
    found = recipients_for(event(EventType.MESSAGE_CREATED, is_admin=False), ticket(), audience)
    assert sorted(r.address for r in found) == sorted([*TEAM, "agent@support.test"])
    # An assignee who is also on the team list gets one email, not two.
    audience = Audience(team_emails=TEAM, email_enabled=True, assignee_email="TEAM@support.test")
    found = recipients_for(event(EventType.MESSAGE_CREATED, is_admin=False), ticket(), audience)
    assert sorted(r.address for r in found) == sorted(TEAM)


def test_channels_not_configured_are_skipped() -> None:
    assert (
        recipients_for(event(EventType.TICKET_CREATED), ticket(), Audience(team_emails=TEAM)) == []
    )
    slack_only = Audience(team_emails=TEAM, slack_enabled=True)
    assert recipients_for(event(EventType.TICKET_CREATED), ticket(), slack_only) == [
        Recipient(SLACK, "webhook")
    ]


def test_admin_reply_without_a_known_requester_email_tells_nobody() -> None:
    evt = event(EventType.MESSAGE_CREATED, "agent", True, is_admin=True)
    assert recipients_for(evt, ticket(requester_email=None), FULL) == []


def updated(**changes: Any) -> TicketEvent:
    return event(EventType.TICKET_UPDATED, "agent", True, changes=changes)


@pytest.mark.parametrize(
    ("evt", "kind"),
    [
        (event(EventType.TICKET_CREATED), NoticeKind.NEW_TICKET),
        (event(EventType.MESSAGE_CREATED, is_admin=False), NoticeKind.USER_REPLY),
        (event(EventType.MESSAGE_CREATED, "agent", True, is_admin=True), NoticeKind.SUPPORT_REPLY),
        (updated(status={"old": "open", "new": "resolved"}), NoticeKind.RESOLVED),
        (updated(status={"old": "open", "new": "closed"}), NoticeKind.CLOSED),
        (updated(priority={"old": "high", "new": "urgent"}), NoticeKind.ESCALATED),
        (updated(assignee_id={"old": None, "new": "agent"}), NoticeKind.UPDATED),
        (event(EventType.TICKET_CLOSED, "agent", True, reason="admin"), NoticeKind.CLOSED),
        (event(EventType.TICKET_CLOSED, None, False, reason="auto"), NoticeKind.AUTO_CLOSED),
        (event(EventType.TICKET_SLA_BREACHED, None), NoticeKind.SLA_BREACHED),
    ],
    ids=lambda v: v.type if isinstance(v, TicketEvent) else None,
)
def test_each_notice_says_what_happened(evt: TicketEvent, kind: NoticeKind) -> None:
    notice = notice_for(evt, ticket(sla_due_at=T0), Recipient(EMAIL, "a@x.test"), message=None)
    assert notice.kind is kind
    # The deadline is news only in a breach.
    assert notice.sla_due_at == (T0 if kind is NoticeKind.SLA_BREACHED else None)


def test_the_notice_carries_the_ticket_and_the_reply() -> None:
    msg = Message(
        id="m", ticket_id="t", author_id="agent", is_admin=True, body="On it", created_at=T0
    )
    evt = event(EventType.MESSAGE_CREATED, "agent", True, is_admin=True)
    notice = notice_for(
        evt, ticket(assignee_id="agent"), Recipient(EMAIL, "req@example.com"), message=msg
    )
    assert notice == Notice(
        event_id=evt.id,
        kind=NoticeKind.SUPPORT_REPLY,
        channel=EMAIL,
        recipient="req@example.com",
        ticket_id="01JN2XG6H7J8K9M0N1P2Q3R4S5",
        subject="Payment not received",
        status=Status.OPEN,
        priority=Priority.HIGH,
        category=Category.BILLING,
        requester="user-1",
        assignee="agent",
        sla_due_at=None,
        reply=Reply(by_support=True, written_at=T0, body="On it"),
        event_type=EventType.MESSAGE_CREATED,
        occurred_at=T0,
        details={"is_admin": True},
    )
