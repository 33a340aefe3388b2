"""One structlog configuration for every process: JSON lines in production, console in a terminal.

Our own loggers (``structlog.get_logger``) render straight to stderr: going through the standard
library's logging machinery cost about five times as much per line, and the access log and
the delivery log write a line per request and per email. Standard-library loggers (granian,
sqlalchemy, dramatiq, alembic) go through the same processors via a logging handler. Whatever
is bound with ``structlog.contextvars`` (request id, event id) rides on every line.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import structlog

from domain.settings import Settings

_SECRET_KEYS = frozenset({"authorization", "token", "password", "smtp_password", "jwt", "body"})


def _drop_secrets(
    _: object, __: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


class _StderrLogger:
    """Writes each rendered line to the current ``sys.stderr`` (looked up per line, so a test
    that captures stderr sees the lines), one whole line at a time across threads."""

    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name  # for add_logger_name

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger(str(args[0]) if args else "")


def configure_logging(settings: Settings) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: structlog.types.Processor
    if settings.log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    level = logging.getLevelNamesMapping()[settings.log_level]

    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=_stderr_logger,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Library chatter that would log every request twice or print SQL.
    for noisy in ("sqlalchemy.engine", "granian.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
