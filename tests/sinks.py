"""Real servers standing in for the outside world: an SMTP sink and an HTTP sink (Slack).

Both listen on 127.0.0.1 on a random port, run in a background thread, record what they
receive, and can be told to refuse the next N requests (to test retries).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: Message
    received_at: float


@dataclass
class SmtpSink:
    """An SMTP server that keeps every accepted message; ``refuse_next(n, "451 ...")`` refuses."""

    received: list[ReceivedMail] = field(default_factory=list)
    _refusals: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None
    delay_s: float = 0.0  # how long each DATA takes (a slow mail server)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self._lock:
            if self._refusals:
                return self._refusals.pop(0)
            content = envelope.original_content or envelope.content or b""
            if isinstance(content, str):
                content = content.encode()
            self.received.append(
                ReceivedMail(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=message_from_bytes(content),
                    received_at=time.time(),
                )
            )
        return "250 OK"

    def refuse_next(self, count: int, reply: str = "451 4.3.0 try again later") -> None:
        with self._lock:
            self._refusals.extend([reply] * count)

    def refuse_until_cleared(self, reply: str = "451 4.3.0 try again later") -> None:
        self.refuse_next(1_000_000, reply)

    def clear_refusals(self) -> None:
        with self._lock:
            self._refusals.clear()

    @property
    def port(self) -> int:
        assert self.controller is not None
        return int(self.controller.port)

    def start(self) -> SmtpSink:
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def messages_to(self, address: str) -> list[Message]:
        with self._lock:
            return [m.message for m in self.received if address in m.rcpt_tos]

    def deliveries(self) -> list[tuple[str, str]]:
        """(event id, recipient) for every accepted email, duplicates included."""
        with self._lock:
            return [
                (str(m.message["X-Helpdesk-Event"]), rcpt)
                for m in self.received
                for rcpt in m.rcpt_tos
            ]


@dataclass
class HttpRequestRecord:
    path: str
    body: Any
    received_at: float


class HttpSink:
    """An HTTP server that records JSON POSTs; ``respond_next([503, 503])`` sets answers."""

    def __init__(self) -> None:
        self.received: list[HttpRequestRecord] = []
        self.attempts = 0
        self._answers: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                with sink._lock:
                    sink.attempts += 1
                    status, headers = sink._answers.pop(0) if sink._answers else (200, {})
                    if status < 300:
                        sink.received.append(
                            HttpRequestRecord(self.path, json.loads(raw or b"null"), time.time())
                        )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                body = b"ok" if status < 300 else b"error"
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/slack"

    def respond_next(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._answers.extend((s, headers or {}) for s in statuses)

    def start(self) -> HttpSink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


async def eventually(
    condition: Callable[[], bool], *, within_s: float, interval: float = 0.05
) -> bool:
    """Like :func:`wait_for`, but lets the event loop run (the API's publisher lives on it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return condition()


async def until(condition: Callable[[], Awaitable[bool]], within_s: float) -> bool:
    """Poll an asynchronous condition (one that asks the API) until it holds or time is up."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.1)
    return await condition()
