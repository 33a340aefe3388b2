"""One structlog configuration for every process: JSON lines in production, console in a terminal.

Our own loggers (``structlog.get_logger``) render straight to stderr: going through the standard
library's logging machinery cost about five times as much per line, and the access log and
the delivery log write a line per request and per email. Standard-library loggers (granian,
sqlalchemy, dramatiq, alembic) go through the same processors via a logging handler. Whatever
is bound with ``structlog.contextvars`` (request id, event id) rides on every line.

Per line, JSON is rendered by msgspec and the timestamp formatted from a per-second cache:
structlog's ``JSONRenderer`` (the standard json module) and ``TimeStamper`` (a timezone-aware
datetime per line) were 6 of the ~12 us a line cost (docs/profiling.md).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

import msgspec
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


_ENCODER = msgspec.json.Encoder(enc_hook=repr)  # what JSON cannot say, as its repr


def _json_line(event_dict: structlog.types.EventDict, **_: Any) -> str:
    try:
        return _ENCODER.encode(event_dict).decode()
    except (TypeError, ValueError, OverflowError):  # e.g. a non-string key, a huge int
        return json.dumps(event_dict, default=repr)


_second_prefix: tuple[int, str] = (-1, "")


def _add_timestamp(
    _: object, __: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """``timestamp``: UTC, ISO 8601 with microseconds and a Z, as ``TimeStamper(fmt="iso",
    utc=True)`` wrote it, with the date and time formatted once per second."""
    global _second_prefix
    now = time.time()
    second = int(now)
    cached_second, prefix = _second_prefix
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    event_dict["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
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
        _add_timestamp,
        _drop_secrets,
    ]
    renderer: structlog.types.Processor
    if settings.log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
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
