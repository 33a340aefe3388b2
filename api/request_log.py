"""Per-request id, access log and request metrics: one line per request with method, path, status
and duration, and the same request counted in api/metrics.py by its route template.

Pure ASGI so it costs little on the hot path. Tokens and bodies are never logged. A refused
request is this one line and nothing else: info for a 4xx (with the reason, when a handler
noted one), warning for 429 (someone is over their limit), error only for a 5xx.
"""

from __future__ import annotations

import logging
import re
import time

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import IN_FLIGHT, UNMATCHED, record_request
from domain.ids import new_id

log = structlog.get_logger("api.access")
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_REASON_KEY = "helpdesk.refusal_reason"


def note_refusal_reason(scope: Scope, reason: str) -> None:
    """Add why a request was refused to its access line (for example why a token was refused)."""
    scope.setdefault("state", {})[_REASON_KEY] = reason[:200]


def _level(status: int) -> int:
    if status >= 500:
        return logging.ERROR
    return logging.WARNING if status == 429 else logging.INFO


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        # Honour a caller's X-Request-ID when it is short and plain, else make one.
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.match(value):
                request_id = value.decode()
                break
        request_id = request_id or new_id()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        IN_FLIGHT.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            IN_FLIGHT.dec()
            seconds = time.perf_counter() - started
            method = str(scope.get("method", ""))
            # The router puts the matched route's template in the scope; a path that matched
            # none has no template and shares one label value (never the raw path).
            record_request(scope.get("path_template") or UNMATCHED, method, status, seconds)
            fields: dict[str, object] = {
                "method": method,
                "path": scope["path"][:256],
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
            }
            reason = scope.get("state", {}).get(_REASON_KEY)
            if reason:
                fields["reason"] = reason
            log.log(_level(status), "request", **fields)
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware
