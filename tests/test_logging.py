"""What the logs promise operators: one access line per request (method, path, status, duration,
request id) with no token or body in it, and one line per delivery attempt that ties the email
back to the write that caused it (event, ticket, channel, outcome, request id)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from domain.db import make_engine, make_sessionmaker
from domain.delivery import DeliveryConfig, deliver_batch, plan_deliveries
from domain.ids import utcnow
from domain.logging import configure_logging
from domain.outbox import EVENTS_QUEUE
from domain.settings import ConfigError, Settings, load_settings
from tests.conftest import USER_URL, TokenFactory, auth
from tests.processes import ServiceProcess, dramatiq_workers
from workers.channels import configured_channels
from workers.channels.recording import RecordingChannel

SECRET_BODY = "my card number is 4111-1111"


def json_lines(captured: str) -> list[dict[str, Any]]:
    lines = [line for line in captured.splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


async def test_each_request_logs_one_line_without_token_or_body(
    client: AsyncTestClient[Any],
    make_token: TokenFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = make_token("user-1")
    capsys.readouterr()  # start clean
    created = await client.post(
        USER_URL,
        json={"subject": "Refund", "body": SECRET_BODY},
        headers={**auth(token), "X-Request-ID": "req-log-1"},
    )
    refused = await client.get(USER_URL, headers=auth(token + "x"))
    assert (created.status_code, refused.status_code) == (201, 401)

    err = capsys.readouterr().err
    access = [line for line in json_lines(err) if line.get("logger") == "api.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", USER_URL, 201),
        ("GET", USER_URL, 401),
    ]
    assert access[0]["request_id"] == "req-log-1" == created.headers["x-request-id"]
    assert access[1]["request_id"] == refused.headers["x-request-id"]
    assert all(a["level"] == "info" and a["duration_ms"] >= 0 for a in access)
    assert token not in err and SECRET_BODY not in err


async def test_a_delivery_attempt_logs_its_event_ticket_channel_outcome_and_request_id(
    client: AsyncTestClient[Any],
    settings: Settings,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    created = await client.post(
        USER_URL,
        json={"subject": "Refund", "body": "hello"},
        headers={**auth(make_token("user-1")), "X-Request-ID": "req-log-2"},
    )
    assert created.status_code == 201
    ticket_id = created.json()["id"]
    (event_id,) = db.execute("SELECT id FROM ticket_events").fetchone() or ()

    config = DeliveryConfig(
        team_emails=("team@support.test",), channels={"email": RecordingChannel()}
    )
    engine = make_engine(settings, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            plan = await plan_deliveries(session, event_id, config, utcnow())
            capsys.readouterr()
            await deliver_batch(session, plan.pending, config, utcnow())
            await session.commit()
    finally:
        await engine.dispose()

    attempts = [
        line for line in json_lines(capsys.readouterr().err) if line["event"] == "delivery.attempt"
    ]
    assert len(attempts) == 1
    assert {k: attempts[0][k] for k in ("event_id", "ticket_id", "channel", "outcome")} == {
        "event_id": event_id,
        "ticket_id": ticket_id,
        "channel": "email",
        "outcome": "sent",
    }
    assert attempts[0]["request_id"] == "req-log-2"
    assert attempts[0]["delivery_id"] == plan.pending[0]


def test_an_unknown_log_level_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL must be one of"):
        load_settings({"LOG_LEVEL": "loud"})
    assert load_settings({"LOG_LEVEL": "warning"}).log_level == "WARNING"


@pytest.mark.slow
def test_a_worker_process_logs_json_lines_from_boot_to_shutdown(
    service_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    """Log collectors parse every line of a worker process, Dramatiq's own included. (Dramatiq's
    main process only supervises and runs none of our code: its few lines keep its format.)"""
    pool = dramatiq_workers(service_env, [EVENTS_QUEUE], processes=1, threads=1)
    processes.append(pool.start())
    pool.stop()
    lines = [line for line in pool.output().splitlines() if line.strip()]
    worker_lines = [line for line in lines if "[dramatiq.MainProcess]" not in line]
    assert len(worker_lines) < len(lines)  # the main process's lines were told apart
    records = [json.loads(line) for line in worker_lines]  # fails on a line that is not JSON
    events = [record["event"] for record in records]
    assert any("Event loop is running" in event for event in events)
    assert any("Worker has been shut down" in event for event in events)


def test_a_channel_left_unconfigured_is_said_once_at_start_up(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Email configured, Slack not: Slack is skipped quietly, with one line at start-up that
    says why (who reads the logs learns it once, not per notification). Webhooks are always on
    (the registered endpoints say who gets what)."""
    configure_logging(settings)
    channels = configured_channels(replace(settings, smtp_host="mail.test"))
    assert set(channels) == {"email", "webhook"}
    disabled = [
        line for line in json_lines(capsys.readouterr().err) if line["event"] == "channel.disabled"
    ]
    assert [(line["channel"], line["reason"]) for line in disabled] == [
        ("slack", "SLACK_WEBHOOK_URL is not set")
    ]
