"""A real HTTP server standing in for the host app's webhook receiver, on 127.0.0.1 on a random
port, in a background thread. It keeps every request as it arrived (headers and raw body, to
verify signatures) and answers from a script: a status, headers, a body, and how long to take
first (a slow receiver, or one that hangs past our timeout)."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0  # wait this long before answering (longer than our timeout: a hang)


@dataclass
class WebhookRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float
    answer: Answer
    answered: bool = False  # the whole answer was written (the client was still there)
    finished: bool = False  # the server is done with it, one way or the other

    @property
    def delivered(self) -> bool:
        """What a receiver would count as delivered: it answered 2xx to a client still there."""
        return self.answered and 200 <= self.answer.status < 300


class WebhookSink:
    def __init__(self, default: Answer | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[WebhookRequest] = []
        self.default = default or Answer()
        self._script: list[Answer] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                with sink._lock:
                    answer = sink._script.pop(0) if sink._script else sink.default
                    request = WebhookRequest(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        raw,
                        time.time(),
                        answer,
                    )
                    sink.requests.append(request)
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    self.wfile.flush()
                    request.answered = True
                except OSError:
                    request.answered = False  # the client hung up first
                finally:
                    request.finished = True
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # an https receiver (tls: a server context with its certificate)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hooks/helpdesk", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def respond_next(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def respond_always(self, answer: Answer) -> None:
        with self._lock:
            self._script.clear()
            self.default = answer

    def delivered(self) -> list[WebhookRequest]:
        with self._lock:
            return [r for r in self.requests if r.delivered]

    def attempts(self) -> list[WebhookRequest]:
        with self._lock:
            return list(self.requests)

    def start(self) -> WebhookSink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
