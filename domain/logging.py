"""One structlog configuration for every process: JSON lines in production, console in a terminal.

Standard-library loggers (granian, sqlalchemy, dramatiq, alembic) go through the same processors,
and whatever is bound with ``structlog.contextvars`` (request id, event id) rides on every line.
"""

from __future__ import annotations

import logging
import sys

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

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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
