"""The SMTP channel against a real SMTP server: kept connections, a server that restarts,
refusals classified as transient or permanent, and what the email looks like on arrival."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

from domain.delivery import PermanentDeliveryError, TransientDeliveryError
from domain.notifications import Notice, NoticeKind, Reply
from domain.settings import load_settings
from tests.notices import NOW, sample_notice
from tests.sinks import SmtpSink, eventually, free_port
from workers.channels.email import (
    SmtpChannel,
    build_email,
    email_subject,
    email_text,
    thread_headers,
)


def notice(n: int, *, subject: str = "Payment not received", reply: str = "Hello\n") -> Notice:
    return sample_notice(
        event_id=f"event-{n}",
        subject=subject,
        reply=Reply(by_support=False, written_at=NOW, body=reply),
    )


def start_sink_on(port: int) -> SmtpSink:
    sink = SmtpSink()
    sink.controller = Controller(sink, hostname="127.0.0.1", port=port)
    sink.controller.start()
    return sink


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sink(port: int) -> Iterator[SmtpSink]:
    server = start_sink_on(port)
    yield server
    server.stop()


@pytest.fixture
async def channel(port: int) -> AsyncIterator[SmtpChannel]:
    settings = load_settings(
        {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_FROM": "Support <support@helpdesk.test>",
        }
    )
    smtp = SmtpChannel(settings)
    yield smtp
    await smtp.close()


async def test_emails_share_one_connection(sink: SmtpSink, channel: SmtpChannel) -> None:
    for n in range(5):
        await channel.send(notice(n))
    assert [m.message["X-Helpdesk-Event"] for m in sink.received] == [
        f"event-{n}" for n in range(5)
    ]
    assert len(channel._idle) == 1  # one connection, kept for the next email
    assert all(m.mail_from == "support@helpdesk.test" for m in sink.received)
    assert all(m.rcpt_tos == ["team@support.test"] for m in sink.received)


async def test_a_restarted_server_is_reconnected_without_a_duplicate(
    port: int, channel: SmtpChannel
) -> None:
    first = start_sink_on(port)
    await channel.send(notice(1))
    first.stop()  # the kept connection dies with the server
    second = start_sink_on(port)
    try:
        await channel.send(notice(2))
        assert [m.message["X-Helpdesk-Event"] for m in second.received] == ["event-2"]
    finally:
        second.stop()
    assert [m.message["X-Helpdesk-Event"] for m in first.received] == ["event-1"]


async def test_server_down_is_transient(port: int, channel: SmtpChannel) -> None:
    with pytest.raises(TransientDeliveryError):
        await channel.send(notice(1))


async def test_refusals_are_classified_and_the_connection_stays_usable(
    sink: SmtpSink, channel: SmtpChannel
) -> None:
    await channel.send(notice(1))
    sink.refuse_next(1, "451 4.3.0 try again later")
    with pytest.raises(TransientDeliveryError, match="451"):
        await channel.send(notice(2))
    sink.refuse_next(1, "550 5.1.1 no such user")
    with pytest.raises(PermanentDeliveryError, match="550"):
        await channel.send(notice(3))
    await channel.send(notice(4))
    assert await eventually(lambda: len(sink.received) == 2, within_s=5)
    assert [m.message["X-Helpdesk-Event"] for m in sink.received] == ["event-1", "event-4"]
    assert len(channel._idle) == 1


async def test_non_ascii_and_long_lines_arrive_intact(sink: SmtpSink, channel: SmtpChannel) -> None:
    subject = "Zahlung nicht erhalten — ärgerlich " + "x" * 120
    text = "Grüße = 100€\r\n.a line starting with a dot\n" + "y" * 2000 + "\n"
    sent = notice(1, subject=subject, reply=text)
    await channel.send(sent)
    (mail,) = [m.message for m in sink.received]
    raw = mail.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert str(parsed["Subject"]) == f"[New ticket] {subject} (ticket ticket-1)"
    body = parsed.get_content().replace("\r\n", "\n")
    assert body == email_text(sent).replace("\r\n", "\n")
    assert body.endswith(text.replace("\r\n", "\n") + "\n")


def test_header_values_with_line_breaks_are_refused() -> None:
    forged = sample_notice(recipient="a@x.test\r\nBcc: someone@example.com")
    with pytest.raises(PermanentDeliveryError, match="line break"):
        build_email(forged, "s@helpdesk.test")


def test_email_ids_are_stable_and_thread_per_ticket() -> None:
    first = thread_headers(sample_notice(recipient="a@x.test"), "Support <s@hd.test>")
    again = thread_headers(sample_notice(recipient="A@x.test"), "Support <s@hd.test>")
    other = thread_headers(sample_notice(recipient="b@x.test"), "Support <s@hd.test>")
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]
    assert first["References"] == other["References"] == first["In-Reply-To"]
    assert first["Message-ID"].endswith("@hd.test>")


def test_breach_subject_says_so_and_line_breaks_cannot_forge_headers() -> None:
    breach = sample_notice(
        subject="Help\r\nBcc: evil@x.test", kind=NoticeKind.SLA_BREACHED, sla_due_at=NOW
    )
    subject = email_subject(breach)
    assert (
        subject
        == "[SLA breached: no admin response in time] Help Bcc: evil@x.test (ticket ticket-1)"
    )
    assert "SLA due:   2026-03-15T10:00:00Z" in email_text(breach)


def test_the_body_names_the_ticket_and_who_wrote_the_reply() -> None:
    support = sample_notice(
        kind=NoticeKind.SUPPORT_REPLY,
        assignee="agent-7",
        reply=Reply(by_support=True, written_at=NOW, body="Looking into it"),
    )
    assert email_text(support).splitlines() == [
        "New reply from support",
        "",
        "Ticket:    ticket-1",
        "Subject:   Payment not received",
        "Status:    open",
        "Priority:  normal",
        "Category:  -",
        "Requester: user-1",
        "Assignee:  agent-7",
        "",
        "Support wrote at 2026-03-15T10:00:00Z:",
        "",
        "Looking into it",
    ]
    assert "user-1 wrote at" in email_text(sample_notice())
