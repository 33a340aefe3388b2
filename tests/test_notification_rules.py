"""Who is told what: the rules in domain.notifications, over plain model objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain import events
from domain.models import Message, Ticket, TicketEvent
from domain.notifications import EMAIL, SLACK, Audience, Recipient, recipients_for, render

NOW = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)
TEAM = ("team@support.test", "oncall@support.test")
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
        created_at=NOW,
        updated_at=NOW,
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
        created_at=NOW,
    )


TEAM_ALL = {Recipient(EMAIL, a) for a in TEAM} | {Recipient(SLACK, "webhook")}
REQUESTER = {Recipient(EMAIL, "req@example.com")}


@pytest.mark.parametrize(
    ("evt", "expected"),
    [
        (event(events.TICKET_CREATED), TEAM_ALL),
        (event(events.MESSAGE_CREATED, is_admin=False), TEAM_ALL),
        (event(events.MESSAGE_CREATED, "agent", True, is_admin=True), REQUESTER),
        (
            event(
                events.TICKET_UPDATED,
                "agent",
                True,
                changes={"status": {"old": "open", "new": "resolved"}},
            ),
            REQUESTER,
        ),
        (
            event(
                events.TICKET_UPDATED,
                "agent",
                True,
                changes={"status": {"old": "open", "new": "in_progress"}},
            ),
            set(),
        ),
        (
            event(
                events.TICKET_UPDATED,
                "agent",
                True,
                changes={"priority": {"old": "high", "new": "urgent"}},
            ),
            TEAM_ALL,
        ),
        (
            event(
                events.TICKET_UPDATED,
                "agent",
                True,
                changes={"assignee_id": {"old": None, "new": "agent"}},
            ),
            set(),
        ),
        (event(events.TICKET_CLOSED, "agent", True, reason="admin"), REQUESTER),
        (event(events.TICKET_CLOSED, None, False, reason="auto"), REQUESTER),
        (event(events.TICKET_CLOSED, "user-1", False, reason="user"), set()),
        (event(events.TICKET_SLA_BREACHED, None), TEAM_ALL),
    ],
    ids=lambda v: v.type if isinstance(v, TicketEvent) else None,
)
def test_who_is_told_what(evt: TicketEvent, expected: set[Recipient]) -> None:
    assert set(recipients_for(evt, ticket(), FULL)) == expected


def test_user_reply_also_reaches_the_known_assignee_once() -> None:
    audience = Audience(team_emails=TEAM, email_enabled=True, assignee_email="agent@support.test")
    found = recipients_for(event(events.MESSAGE_CREATED, is_admin=False), ticket(), audience)
    assert sorted(r.address for r in found) == sorted([*TEAM, "agent@support.test"])
    # An assignee who is also on the team list gets one email, not two.
    audience = Audience(team_emails=TEAM, email_enabled=True, assignee_email="TEAM@support.test")
    found = recipients_for(event(events.MESSAGE_CREATED, is_admin=False), ticket(), audience)
    assert sorted(r.address for r in found) == sorted(TEAM)


def test_channels_not_configured_are_skipped() -> None:
    assert recipients_for(event(events.TICKET_CREATED), ticket(), Audience(team_emails=TEAM)) == []
    slack_only = Audience(team_emails=TEAM, slack_enabled=True)
    assert recipients_for(event(events.TICKET_CREATED), ticket(), slack_only) == [
        Recipient(SLACK, "webhook")
    ]


def test_admin_reply_without_a_known_requester_email_tells_nobody() -> None:
    evt = event(events.MESSAGE_CREATED, "agent", True, is_admin=True)
    assert recipients_for(evt, ticket(requester_email=None), FULL) == []


def test_email_ids_are_stable_and_thread_per_ticket() -> None:
    msg = Message(
        id="m", ticket_id="t", author_id="user-1", is_admin=False, body="hi", created_at=NOW
    )
    evt = event(events.TICKET_CREATED)
    first = render(evt, ticket(), Recipient(EMAIL, "a@x.test"), message=msg, sender="s@hd.test")
    again = render(evt, ticket(), Recipient(EMAIL, "a@x.test"), message=msg, sender="s@hd.test")
    other = render(evt, ticket(), Recipient(EMAIL, "b@x.test"), message=msg, sender="s@hd.test")
    assert first.headers["Message-ID"] == again.headers["Message-ID"]
    assert first.headers["Message-ID"] != other.headers["Message-ID"]
    assert first.headers["References"] == other.headers["References"]
    assert first.headers["Message-ID"].endswith("@hd.test>")


def test_breach_subject_says_so_and_line_breaks_cannot_forge_headers() -> None:
    evt = event(events.TICKET_SLA_BREACHED, None)
    notice = render(
        evt,
        ticket(subject="Help\r\nBcc: evil@x.test"),
        Recipient(EMAIL, "a@x.test"),
        message=None,
        sender="s@hd.test",
    )
    assert notice.subject.startswith("[SLA breached")
    assert "\n" not in notice.subject and "\r" not in notice.subject
