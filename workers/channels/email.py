"""Email over SMTP (plain, STARTTLS or TLS; authentication optional), and what an email says.

Each worker process keeps a few SMTP connections open and reuses them, instead of paying for
connect, EHLO (and STARTTLS/login) and QUIT on every email. A connection is used by one send at
a time; it is dropped after an error, after ``MAX_MESSAGES_PER_CONNECTION`` emails and when it
has been idle longer than ``IDLE_TIMEOUT_S``. When a kept connection turns out to be dead (the
server closed it, or restarted), the failure shows at MAIL FROM, before anything of the email
was handed over, so the email is sent again on a fresh connection without a duplicate.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib
from aiosmtplib.email import flatten_message

from domain.delivery import PermanentDeliveryError, TransientDeliveryError
from domain.ids import isoformat_z
from domain.notifications import Notice
from domain.settings import Settings
from workers.channels.headlines import HEADLINES

# Open at once per worker process, idle ones included: a send holds one of these slots, and a
# new connection is only opened when none is idle, so open connections never exceed the slots.
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 20.0  # below the idle timeouts of common SMTP servers (a minute or more)
MAX_MESSAGES_PER_CONNECTION = 100  # some servers cap messages per connection

_MAX_LINE = 998  # RFC 5322: no line longer than this, CRLF excluded
_FOLD_AT = 78


def email_subject(notice: Notice) -> str:
    # Ticket subjects are user input: fold any line breaks so they cannot forge mail headers.
    subject = " ".join(notice.subject.split())
    return f"[{HEADLINES[notice.kind]}] {subject} (ticket {notice.ticket_id})"


def email_text(notice: Notice) -> str:
    """The plain-text body: the ticket's particulars, then the reply the event is about."""
    lines = [
        HEADLINES[notice.kind],
        "",
        *([notice.explanation, ""] if notice.explanation else []),
        f"Ticket:    {notice.ticket_id}",
        f"Subject:   {notice.subject}",
        f"Status:    {notice.status}",
        f"Priority:  {notice.priority}",
        f"Category:  {notice.category or '-'}",
        f"Requester: {notice.requester}",
    ]
    if notice.assignee:
        lines.append(f"Assignee:  {notice.assignee}")
    if notice.sla_due_at:
        lines.append(f"SLA due:   {isoformat_z(notice.sla_due_at)}")
    reply = notice.reply
    if reply is not None:
        author = "Support" if reply.by_support else notice.requester
        lines += ["", f"{author} wrote at {isoformat_z(reply.written_at)}:", "", reply.body]
    return "\n".join(lines) + "\n"


def thread_headers(notice: Notice, sender: str) -> dict[str, str]:
    """Stable ids: a redelivered email has the same Message-ID, so mail systems can drop the
    copy; every email about a ticket refers to the same root, so clients thread them together."""
    domain = sender.rpartition("@")[2].strip("> ") or "helpdesk.local"
    digest = hashlib.sha256(notice.recipient.lower().encode()).hexdigest()[:16]
    thread_root = f"<ticket-{notice.ticket_id}@{domain}>"
    return {
        "Message-ID": f"<{notice.event_id}.{digest}@{domain}>",
        "In-Reply-To": thread_root,
        "References": thread_root,
        "X-Helpdesk-Ticket": notice.ticket_id,
        "X-Helpdesk-Event": notice.event_id,
    }


def build_email(notice: Notice, sender: str) -> bytes:
    """The email as it goes over the wire (CRLF line ends), ready for DATA.

    The common case (ASCII headers) is written directly: the standard library's EmailMessage
    spends milliseconds per email on header objects. Anything else (non-ASCII in a header,
    an address with a display name to encode) goes through EmailMessage.
    """
    headers = {"From": sender, "To": notice.recipient, "Subject": email_subject(notice)}
    headers["Date"] = formatdate(usegmt=True)
    headers.update(thread_headers(notice, sender))
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise PermanentDeliveryError(f"the {name} header contains a line break")
    text = email_text(notice)
    if not all(value.isascii() for value in headers.values()):
        return _build_with_email_package(headers, text)
    lines = [_header_line(name, value) for name, value in headers.items()]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and all(len(line) <= _MAX_LINE for line in text.split("\n")):
        charset, encoding = "us-ascii", "7bit"
        body = text.encode("ascii")
    else:
        charset, encoding = "utf-8", "quoted-printable"
        body = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    lines += [
        f'Content-Type: text/plain; charset="{charset}"\r\n',
        f"Content-Transfer-Encoding: {encoding}\r\n",
        "MIME-Version: 1.0\r\n",
        "\r\n",
    ]
    return "".join(lines).encode("ascii") + body.replace(b"\n", b"\r\n")


def _header_line(name: str, value: str) -> str:
    line = f"{name}: {value}\r\n"
    if len(line) - 2 <= _FOLD_AT:
        return line
    # Folded at spaces where possible (a long word stays whole, up to the 998 limit).
    folded = Header(value, "us-ascii", maxlinelen=_FOLD_AT, header_name=name).encode(linesep="\r\n")
    return f"{name}: {folded}\r\n"


def _build_with_email_package(headers: dict[str, str], text: str) -> bytes:
    message = EmailMessage()
    for name, value in headers.items():
        message[name] = value
    message.set_content(text)
    utf8 = not all(parseaddr(headers[h])[1].isascii() for h in ("From", "To"))
    return flatten_message(message, utf8=utf8, cte_type="7bit")


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


class _DroppedBeforeData(Exception):
    """MAIL FROM failed because the connection was gone: nothing of the email was sent."""


class SmtpChannel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.envelope_from = parseaddr(settings.smtp_from)[1] or settings.smtp_from
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore  # made for the event loop that first sends

    async def send(self, notice: Notice) -> None:
        message = build_email(notice, self.settings.smtp_from)
        try:
            await self._send(notice.recipient, message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            raise _classify(min(codes) if codes else 550, str(exc)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, f"{exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, timeouts, dropped connections: the server may come back.
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Say QUIT on the kept connections (at worker shutdown)."""
        idle, self._idle = self._idle, []
        if self._loop is not asyncio.get_running_loop():
            return  # they belong to another event loop: nothing to say goodbye with
        for connection in idle:
            await self._quit(connection)

    async def _send(self, recipient: str, message: bytes) -> None:
        # A worker sends an event's emails at once: the cap keeps it from opening a connection
        # per recipient per thread (servers limit connections per client).
        self._use_running_loop()
        async with self._slots:
            await self._send_on_a_connection(recipient, message)

    def _use_running_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Connections and the semaphore of another event loop cannot be used on this one.
            self._idle = []
            self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
            self._loop = loop

    async def _send_on_a_connection(self, recipient: str, message: bytes) -> None:
        for attempt in range(2):
            connection, reused = await self._checkout()
            try:
                await self._transaction(connection, recipient, message)
            except _DroppedBeforeData as dropped:
                connection.client.close()
                if reused and attempt == 0:
                    # The kept connections are probably all dead (a server restart): start afresh.
                    self._discard_idle()
                    continue
                raise dropped.__cause__ or dropped from None
            except aiosmtplib.SMTPResponseException as exc:
                # The server answered (and the envelope was reset): the connection is still good,
                # unless the server said it is closing it.
                if exc.code == 421 or not connection.client.is_connected:
                    connection.client.close()
                else:
                    await self._checkin(connection)
                raise
            except BaseException:
                connection.client.close()
                raise
            await self._checkin(connection)
            return

    async def _transaction(self, connection: _Connection, recipient: str, message: bytes) -> None:
        client = connection.client
        utf8 = not (self.envelope_from.isascii() and recipient.isascii())
        if utf8 and not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        options = ["SMTPUTF8"] if utf8 else []
        encoding = "utf-8" if utf8 else "ascii"
        try:
            try:
                await client.mail(self.envelope_from, options=options, encoding=encoding)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                raise _DroppedBeforeData() from exc
            await client.rcpt(recipient, encoding=encoding)
            await client.data(message)
        except aiosmtplib.SMTPResponseException:
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
                await client.rset()
            raise

    async def _checkout(self) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if connection.client.is_connected and now - connection.idle_since < IDLE_TIMEOUT_S:
                return connection, True
            connection.client.close()
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password,
            use_tls=s.smtp_tls,
            start_tls=s.smtp_starttls,
            timeout=s.smtp_timeout_s,
        )
        await client.connect()
        return _Connection(client), False

    async def _checkin(self, connection: _Connection) -> None:
        connection.sent += 1
        if connection.sent >= MAX_MESSAGES_PER_CONNECTION or not connection.client.is_connected:
            await self._quit(connection)
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)

    def _discard_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.client.close()

    @staticmethod
    async def _quit(connection: _Connection) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if connection.client.is_connected:
                await connection.client.quit()
        connection.client.close()


def _classify(code: int, text: str) -> Exception:
    """SMTP 4xx means "try again later"; 5xx means the message will never be accepted."""
    if 400 <= code < 500:
        return TransientDeliveryError(f"SMTP {text}")
    return PermanentDeliveryError(f"SMTP {text}")
