"""Metrics scraped from the real endpoints while the real processes run: the API (two server
processes, one /metrics), a worker pool with Dramatiq's Prometheus middleware, the exporter of
queue depths and outbox lag, and ``helpdesk status``."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from domain.outbox import EVENTS_QUEUE, NOTIFICATIONS_QUEUE
from tests.conftest import TEAM, USER_URL, TokenFactory, auth, create_ticket
from tests.processes import ApiServer, ServiceProcess, dramatiq_workers
from tests.sinks import SmtpSink, eventually, free_port, wait_for

Sample = tuple[str, dict[str, str], float]
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def scrape(url: str) -> list[Sample]:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def try_scrape(url: str) -> list[Sample] | None:
    try:
        return scrape(url)
    except httpx.HTTPError:
        return None


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        v for n, lbl, v in samples if n == name and all(lbl.get(k) == x for k, x in labels.items())
    )


def assert_no_identifiers(samples: Iterable[Sample], *identifiers: str) -> None:
    """No label value is a ticket/event id, an address, or one of the given user ids."""
    for name, labels, _ in samples:
        for label, text in labels.items():
            where = f"{name}{{{label}={text!r}}}"
            assert not ULID.search(text.upper()), where
            assert "@" not in text, where
            assert not any(i in text for i in identifiers), where


def metrics_env(service_env: dict[str, str], tmp_path: Path, name: str) -> dict[str, str]:
    """A pool started as the Procfile starts it: Dramatiq's exposition server on its own port,
    its processes' samples in their own directory."""
    port = free_port()
    return {
        **service_env,
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(port),
        "dramatiq_prom_db": str(tmp_path / f"prom-{name}"),
    }


def start_exporter(env: dict[str, str], processes: list[ServiceProcess]) -> str:
    """``helpdesk exporter`` on a free port; its metrics URL."""
    port = free_port()
    command = [sys.executable, "-m", "api.cli", "exporter", "--port", str(port)]
    processes.append(ServiceProcess(command, env, ready_text="exporter.started").start())
    return f"http://127.0.0.1:{port}/metrics"


@pytest.mark.slow
def test_counters_move_for_a_ticket_and_its_emails_across_processes(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    api_env = {**service_env, "PORT": str(free_port()), "METRICS_DIR": str(tmp_path)}
    api = ApiServer(api_env, workers=2).start()
    processes.append(api)
    pool_env = metrics_env(service_env, tmp_path, "pool")
    processes.append(dramatiq_workers(pool_env, [EVENTS_QUEUE, NOTIFICATIONS_QUEUE]).start())
    pool_metrics = f"http://127.0.0.1:{pool_env['dramatiq_prom_port']}/metrics"

    user = auth(make_token("metrics-user-1"))
    tickets = 6  # over several connections, so both server processes answer some
    created = []
    for i in range(tickets):
        with httpx.Client(base_url=api.base_url, timeout=10) as http:
            response = http.post(
                USER_URL, json={"subject": f"Metrics {i}", "body": "b"}, headers=user
            )
            assert response.status_code == 201, response.text
            created.append(response.json()["id"])
            assert http.get(f"{USER_URL}/{created[-1]}", headers=user).status_code == 200
    with httpx.Client(base_url=api.base_url, timeout=10) as http:
        assert http.get(USER_URL, headers={"Authorization": "Bearer nonsense"}).status_code == 401
        assert http.get(USER_URL).status_code == 401
        expired = make_token("metrics-user-1", exp_in=-60)
        assert http.get(USER_URL, headers=auth(expired)).status_code == 401
        missing = http.get(f"{USER_URL}/{created[0][:-1]}0", headers=user)
        assert missing.status_code == 404
        for probe in ("/wp-login.php", f"/v1/nothing/{created[0]}", "/.env"):
            assert http.get(probe).status_code == 404

    api_samples = scrape(f"{api.base_url}/metrics")
    post = {"route": USER_URL, "method": "POST"}
    assert value(api_samples, "helpdesk_http_requests_total", status="201", **post) == tickets
    one = {"route": USER_URL + "/{ticket_id}", "method": "GET"}
    assert value(api_samples, "helpdesk_http_requests_total", status="200", **one) == tickets
    assert value(api_samples, "helpdesk_http_requests_total", status="404", **one) == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(api_samples, "helpdesk_http_requests_total", **unmatched) == 3
    assert value(api_samples, "helpdesk_http_request_duration_seconds_count", **post) == tickets
    assert value(api_samples, "helpdesk_auth_failures_total", reason="missing") == 1
    assert value(api_samples, "helpdesk_auth_failures_total", reason="malformed") == 1
    assert value(api_samples, "helpdesk_auth_failures_total", reason="expired") == 1
    assert value(api_samples, "helpdesk_http_requests_in_flight") == 1  # this scrape
    assert value(api_samples, "helpdesk_http_requests_waiting_for_database") == 0
    assert_no_identifiers(api_samples, "metrics-user-1")

    emails = tickets * len(TEAM)
    assert wait_for(lambda: len(smtp_sink.received) >= emails, timeout=30)

    def delivered() -> bool:
        samples = try_scrape(pool_metrics) or []
        return value(samples, "helpdesk_deliveries_total", outcome="sent") >= emails + tickets

    assert wait_for(delivered, timeout=20)
    pool_samples = scrape(pool_metrics)
    assert value(pool_samples, "helpdesk_deliveries_total", channel="email", outcome="sent") == (
        emails
    )
    assert value(pool_samples, "helpdesk_deliveries_total", channel="slack", outcome="sent") == (
        tickets
    )
    assert value(pool_samples, "helpdesk_deliveries_total", outcome="failed") == 0
    deliver = {"queue_name": NOTIFICATIONS_QUEUE, "actor_name": "deliver_notifications"}
    assert value(pool_samples, "dramatiq_messages_total", **deliver) >= 1
    assert value(pool_samples, "dramatiq_message_duration_milliseconds_count", **deliver) >= 1
    assert value(pool_samples, "dramatiq_message_errors_total") == 0
    assert_no_identifiers(pool_samples, "metrics-user-1")


@pytest.mark.slow
async def test_queue_depth_rises_while_the_pool_is_stopped_and_failures_show(
    live_client: AsyncTestClient[Any],
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    signals_url = start_exporter(service_env, processes)
    # The events pool turns each ticket into notification messages; the notifications pool is
    # not running yet, so they wait in its queue.
    processes.append(dramatiq_workers(service_env, [EVENTS_QUEUE]).start())
    user = auth(make_token("depth-user-1"))
    tickets = [
        await create_ticket(live_client, user, subject=f"Depth {i}", priority=priority)
        for i, priority in enumerate(["normal", "normal", "urgent"])
    ]

    def notifications_waiting() -> float:
        return value(scrape(signals_url), "helpdesk_queue_messages", queue=NOTIFICATIONS_QUEUE)

    assert await eventually(lambda: notifications_waiting() >= 1, within_s=20)
    samples = scrape(signals_url)
    assert value(samples, "helpdesk_signal_source_up", source="redis") == 1
    assert value(samples, "helpdesk_signal_source_up", source="postgresql") == 1
    assert value(samples, "helpdesk_live_processes", kind="worker:notifications") == 0
    assert await eventually(
        lambda: value(scrape(signals_url), "helpdesk_live_processes", kind="worker:events") == 1,
        within_s=10,
    )
    age = value(samples, "helpdesk_queue_oldest_message_age_seconds", queue=NOTIFICATIONS_QUEUE)
    assert 0 < age < 60
    assert value(samples, "helpdesk_events_published_not_completed") == 3  # waiting on delivery
    assert_no_identifiers(samples, "depth-user-1")

    # The mail server refuses for good: once the pool runs, the queue drains and the refused
    # emails are counted as failed deliveries, waiting for an operator.
    smtp_sink.refuse_until_cleared("550 5.1.1 mailbox unavailable")
    processes.append(dramatiq_workers(service_env, [NOTIFICATIONS_QUEUE]).start())
    assert await eventually(lambda: notifications_waiting() == 0, within_s=30)
    failed = 3 * len(TEAM)
    assert await eventually(
        lambda: value(scrape(signals_url), "helpdesk_deliveries_failed", channel="email") == failed,
        within_s=30,
    )
    samples = scrape(signals_url)
    assert value(samples, "helpdesk_live_processes", kind="worker:notifications") == 1
    assert await eventually(
        lambda: value(scrape(signals_url), "helpdesk_events_published_not_completed") == 0,
        within_s=20,
    )

    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "api.cli", "status", "--json"],
        env=service_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(status.stdout)
    assert report["failed_deliveries"] == {"email": failed}
    assert {q["queue"]: q["waiting"] for q in report["queues"]}[NOTIFICATIONS_QUEUE] == 0
    assert report["processes"]["worker:notifications"] == 1
    assert report["processes"]["worker:sla"] == 0  # not started in this test
    # The urgent ticket's first-response clock runs (SLA_URGENT_SECONDS: an hour).
    assert report["sla"]["running"] == {"first_response": 1}
    [deadline] = report["sla"]["next_deadlines"]
    assert deadline["ticket_id"] == tickets[2]["id"] and deadline["target"] == "first_response"
    clocks = scrape(signals_url)
    assert value(clocks, "helpdesk_sla_clocks_running", target="first_response") == 1
    assert value(clocks, "helpdesk_sla_breached_tickets") == 0
    screen = (
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "api.cli", "status"],
            env=service_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    ).stdout
    assert re.search(rf"^\s+email\s+{failed}$", screen, re.MULTILINE), screen
    assert "Not running:" in screen and "worker:sla" in screen


@pytest.mark.slow
def test_the_exporter_says_when_a_source_is_down(
    service_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    env = {**service_env, "DATABASE_URL": "postgresql://root@127.0.0.1:1/nowhere"}
    samples = scrape(start_exporter(env, processes))
    assert value(samples, "helpdesk_signal_source_up", source="postgresql") == 0
    assert value(samples, "helpdesk_signal_source_up", source="redis") == 1
    assert value(samples, "helpdesk_queue_messages", queue=EVENTS_QUEUE) == 0
