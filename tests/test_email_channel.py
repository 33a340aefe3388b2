"""The SMTP channel against a real SMTP server: kept connections, a server that restarts,
refusals classified as transient or permanent, and what the email looks like on arrival."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

from domain.delivery import PermanentDeliveryError, TransientDeliveryError
from domain.notifications import Notice
from domain.settings import load_settings
from tests.sinks import SmtpSink, eventually, free_port
from workers.channels.email import SmtpChannel, build_email


def notice(n: int, *, subject: str = "Payment not received", text: str = "Hello\n") -> Notice:
    return Notice(
        event_id=f"event-{n}",
        ticket_id="ticket-1",
        channel="email",
        recipient="team@support.test",
        subject=f"[New ticket] {subject} (ticket ticket-1)",
        text=text,
        headers={"X-Helpdesk-Event": f"event-{n}", "Message-ID": f"<event-{n}@helpdesk.test>"},
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
    await channel.send(notice(1, subject=subject, text=text))
    (mail,) = [m.message for m in sink.received]
    raw = mail.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert str(parsed["Subject"]) == f"[New ticket] {subject} (ticket ticket-1)"
    body = parsed.get_content().replace("\r\n", "\n")
    assert body == text.replace("\r\n", "\n")


def test_header_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(PermanentDeliveryError, match="line break"):
        build_email(notice(1, subject="hi\r\nBcc: someone@example.com"), "s@helpdesk.test")
