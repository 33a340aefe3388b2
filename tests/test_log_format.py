"""The JSON log line itself: an ISO UTC timestamp with microseconds, any value rendered (never
an exception from a log call), secrets redacted, contextvars carried."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from domain.logging import configure_logging
from domain.settings import load_settings

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Any:
    configure_logging(load_settings({"LOG_FORMAT": "json"}))
    capsys.readouterr()
    return lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines()]


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_a_line_has_an_iso_utc_timestamp_of_now(lines: Any) -> None:
    before = time.time()
    structlog.get_logger("api.access").info("request", status=200)
    (line,) = lines()
    assert ISO_UTC.match(line["timestamp"]), line["timestamp"]
    stamped = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - 0.001 <= stamped.timestamp() <= time.time() + 0.001
    assert (line["event"], line["level"], line["logger"]) == ("request", "info", "api.access")


def test_any_value_is_rendered_and_secrets_are_redacted(lines: Any) -> None:
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        structlog.get_logger("x").warning(
            "odd",
            when=datetime(2026, 3, 15, 10, 0, tzinfo=UTC),
            what=Opaque(),
            raw=b"\x00\x01",
            big=2**70,
            mapping={1: "int key"},
            token="eyJ.secret",
            Password="hunter2",
        )
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    (line,) = lines()
    assert line["when"] == "2026-03-15T10:00:00Z"
    assert line["what"] == "<opaque>"
    assert line["big"] == 2**70 and line["mapping"] == {"1": "int key"}
    assert line["token"] == line["Password"] == "[redacted]"
    assert line["request_id"] == "req-1"
    assert "raw" in line


def test_an_exception_is_logged_with_its_traceback(lines: Any) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("x").exception("failed")
    (line,) = lines()
    assert line["level"] == "error" and "ValueError: boom" in line["exception"]
