"""What a Slack message says: the webhook payload built from a plain notice."""

from __future__ import annotations

from dataclasses import replace

from domain.lifecycle import Category, Priority
from domain.notifications import SLACK, SLACK_RECIPIENT, NoticeKind, Reply
from tests.notices import NOW, sample_notice
from workers.channels.headlines import HEADLINES
from workers.channels.slack import slack_message

NOTICE = sample_notice(
    channel=SLACK,
    recipient=SLACK_RECIPIENT,
    subject="Refund <now> & then",
    priority=Priority.HIGH,
    category=Category.BILLING,
    reply=None,
)


def test_every_kind_of_notice_has_a_headline() -> None:
    assert set(HEADLINES) == set(NoticeKind)


def test_the_message_names_the_ticket_and_escapes_user_text() -> None:
    message = slack_message(NOTICE)
    assert message["text"] == "New ticket: Refund <now> & then [high] (ticket ticket-1)"
    header, subject, fields, context = message["blocks"]
    assert header["text"]["text"] == "New ticket"
    assert subject["text"]["text"] == "*Refund &lt;now&gt; &amp; then*"
    assert [f["text"] for f in fields["fields"]] == [
        "*Priority:*\nhigh",
        "*Category:*\nbilling",
        "*Requester:*\nuser-1",
        "*Status:*\nopen",
    ]
    assert context["elements"][0]["text"] == "Ticket ticket-1"


def test_a_reply_is_quoted_up_to_slacks_limit() -> None:
    reply = Reply(by_support=False, written_at=NOW, body="<" + "x" * 3000)
    blocks = slack_message(replace(NOTICE, kind=NoticeKind.USER_REPLY, reply=reply))["blocks"]
    quoted = blocks[3]["text"]["text"]
    assert quoted.startswith("&lt;xx") and len(quoted) == 2900 + 3  # "<" became "&lt;"
