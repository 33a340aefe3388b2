"""Webhook deliveries against a real receiver (tests/webhook_sink.py): first the channel alone
(redirects, timeouts, the answer's size cap, which statuses retry), then the whole pipeline with
real worker processes: signed and verifiable with the standardwebhooks package, retried through
503 and 429 (Retry-After honoured) and delivered once, failed for good on 410 and retried by an
operator, a hanging receiver that holds no email up, and an endpoint disabled after failing too
long (the team told) that an operator brings back."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from litestar.testing import AsyncTestClient
from standardwebhooks import Webhook

from api.app import create_app
from domain.delivery import (
    DeliveryConfig,
    Outcome,
    PermanentDeliveryError,
    TransientDeliveryError,
    deliver_batch,
    plan_deliveries,
)
from domain.ids import utcnow
from domain.notifications import WEBHOOK
from domain.outbox import WEBHOOKS_QUEUE
from domain.settings import Settings, load_settings
from domain.webhooks import create_endpoint, record_failure, record_success
from tests.conftest import QUEUES, TEAM, TokenFactory, auth, create_ticket
from tests.notices import sample_notice
from tests.processes import ServiceProcess, dramatiq_workers, scheduler
from tests.sinks import HttpSink, SmtpSink, eventually, until
from tests.tls import write_self_signed
from tests.webhook_sink import Answer, WebhookSink
from workers.channels.webhook import MAX_RESPONSE_BYTES, WebhookChannel

WEBHOOKS_URL = "/v1/admin/support/webhooks"
DELIVERIES_URL = "/v1/admin/support/deliveries"
TIMEOUT_S = 1.0  # WEBHOOK_TIMEOUT_SECONDS of these tests


@pytest.fixture(autouse=True)
def clean_webhooks(database_url: str) -> Iterator[None]:
    yield
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE webhook_endpoints")


@pytest.fixture
def receiver() -> Iterator[WebhookSink]:
    sink = WebhookSink().start()
    yield sink
    sink.stop()


# -- the channel alone, against a real HTTP server ---------------------------------------------


@pytest.fixture
def channel(settings: Settings) -> WebhookChannel:
    return WebhookChannel(
        replace(settings, webhook_allow_private=True, webhook_timeout_s=TIMEOUT_S)
    )


async def test_a_private_target_is_refused_at_send_time_too(
    settings: Settings, receiver: WebhookSink
) -> None:
    # Registered while allowed (or while the name pointed elsewhere): checked again at send.
    strict = WebhookChannel(replace(settings, app_env="development"))
    with pytest.raises(PermanentDeliveryError, match="loopback"):
        await strict.post(receiver.url(), b"{}", {})
    assert receiver.attempts() == []


async def test_redirects_are_not_followed(channel: WebhookChannel, receiver: WebhookSink) -> None:
    receiver.respond_next(Answer(302, {"location": receiver.url("/elsewhere")}))
    with pytest.raises(PermanentDeliveryError, match="redirects are not followed"):
        await channel.post(receiver.url(), b"{}", {})
    assert [r.path for r in receiver.attempts()] == ["/hooks/helpdesk"]
    await channel.close()


def self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for ``name`` only: the receiver's context, and a client context trusting it."""
    cert_file, key_file = write_self_signed(tmp_path, name, x509.DNSName(name))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def test_https_goes_to_the_checked_address_with_the_name_for_tls(
    settings: Settings, tmp_path: Path
) -> None:
    server_tls, trusted = self_signed(tmp_path, "localhost")
    receiver = WebhookSink(tls=server_tls).start()
    try:
        channel = WebhookChannel(replace(settings, webhook_allow_private=True), tls=trusted)
        # The request goes to the address "localhost" resolved to and was checked against;
        # SNI, the certificate check and the Host header use the name.
        await channel.post(receiver.url(host="localhost"), b"{}", {})
        (request,) = receiver.attempts()
        assert request.headers["host"] == f"localhost:{receiver.port}"
        # The certificate names "localhost" only: by its address, the check fails.
        with pytest.raises(TransientDeliveryError, match="unreachable"):
            await channel.post(receiver.url(host="127.0.0.1"), b"{}", {})
        await channel.close()
    finally:
        receiver.stop()


async def test_a_hanging_receiver_times_out(channel: WebhookChannel, receiver: WebhookSink) -> None:
    receiver.respond_next(Answer(delay_s=5))
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="did not answer within 1 s"):
        await channel.post(receiver.url(), b"{}", {})
    assert time.monotonic() - started < TIMEOUT_S + 0.5
    await channel.close()


async def test_an_oversized_answer_is_read_up_to_the_cap_only(
    channel: WebhookChannel, receiver: WebhookSink
) -> None:
    huge = b"x" * (64 * 1024 * 1024)
    receiver.respond_next(Answer(200, body=huge), Answer(503, body=huge))
    await channel.post(receiver.url(), b"{}", {})
    with pytest.raises(TransientDeliveryError) as failed:
        await channel.post(receiver.url(), b"{}", {})
    assert len(str(failed.value)) < 300  # the error keeps a snippet, not the body
    # We hung up after MAX_RESPONSE_BYTES: the receiver could not write its 64 MiB.
    assert await eventually(lambda: all(r.finished for r in receiver.attempts()), within_s=5)
    assert [r.answered for r in receiver.attempts()] == [False, False]
    assert MAX_RESPONSE_BYTES == 64 * 1024
    await channel.close()


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (Answer(500), TransientDeliveryError, None),
        (Answer(503, {"retry-after": "7"}), TransientDeliveryError, 7.0),
        (Answer(429, {"retry-after": "3"}), TransientDeliveryError, 3.0),
        (Answer(408), TransientDeliveryError, None),
        (Answer(410), PermanentDeliveryError, None),
        (Answer(400), PermanentDeliveryError, None),
        (Answer(401), PermanentDeliveryError, None),
    ],
    ids=lambda v: str(v.status) if isinstance(v, Answer) else None,
)
async def test_which_answers_are_retried(
    channel: WebhookChannel,
    receiver: WebhookSink,
    answer: Answer,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    receiver.respond_next(answer)
    with pytest.raises(error) as raised:
        await channel.post(receiver.url(), b"{}", {})
    assert getattr(raised.value, "retry_after_s", None) == retry_after
    await channel.close()


async def test_a_webhook_row_is_retried_for_a_day_whatever_the_attempts(
    client: AsyncTestClient[Any],
    make_token: TokenFactory,
    sessions: Any,
    settings: Settings,
    receiver: WebhookSink,
    db: psycopg.Connection[Any],
) -> None:
    receiver.respond_always(Answer(503))
    async with sessions() as session:
        endpoint = await create_endpoint(
            session, url=receiver.url(), event_types=["ticket.created"], enabled=True, now=utcnow()
        )
        await session.commit()
    await create_ticket(client, auth(make_token("user-1")))
    (event_id,) = db.execute("SELECT id FROM ticket_events").fetchone() or ()
    sender = WebhookChannel(replace(settings, webhook_allow_private=True))
    config = DeliveryConfig(team_emails=(), channels={WEBHOOK: sender}, max_attempts=2)
    start = utcnow()
    async with sessions() as session:
        plan = await plan_deliveries(session, event_id, config, start)
        await session.commit()
    assert len(plan.pending) == 1
    outcomes = []
    for hours in (1, 2, 3, 25):  # an email row would have failed at the second attempt
        async with sessions() as session:
            (result,) = await deliver_batch(
                session, plan.pending, config, start + timedelta(hours=hours)
            )
            await session.commit()
        outcomes.append(result.outcome)
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]
    row = db.execute("SELECT recipient, status, attempts, last_error FROM deliveries").fetchone()
    assert row is not None
    assert row[:3] == (endpoint.id, "failed", 4) and "gave up after 4 attempts" in row[3]
    await sender.close()


async def test_a_failing_receiver_rests_and_one_request_probes_it(
    sessions: Any,
    settings: Settings,
    receiver: WebhookSink,
) -> None:
    async with sessions() as session:
        endpoint = await create_endpoint(
            session, url=receiver.url(), event_types=["ticket.created"], enabled=True, now=utcnow()
        )
        await session.commit()
    notice = sample_notice(channel=WEBHOOK, recipient=endpoint.id, event_type="ticket.created")
    channel = WebhookChannel(
        replace(settings, webhook_allow_private=True, webhook_timeout_s=TIMEOUT_S)
    )
    receiver.respond_always(Answer(delay_s=3))  # hangs past the timeout
    with pytest.raises(TransientDeliveryError, match="did not answer"):
        await channel.send(notice)
    # Put off at once, without a request: a hanging receiver holds no worker for long.
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="rests") as resting:
        await channel.send(notice)
    assert time.monotonic() - started < 0.5
    assert resting.value.retry_after_s is not None and 0 < resting.value.retry_after_s <= 1
    # Concurrent deliveries after the rest: one probes, the others wait for it.
    await asyncio.sleep(1.05)
    receiver.respond_always(Answer(delay_s=0.3))
    results = await asyncio.gather(
        *(channel.send(notice) for _ in range(3)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all("probing" in str(r) for r in results if r is not None)
    await channel.send(notice)  # healthy again: no more waiting
    assert len(receiver.attempts()) == 3  # the hang, the probe, the last one
    await channel.close()


async def test_an_endpoint_is_disabled_once_after_failing_long_enough(
    client: AsyncTestClient[Any],
    make_token: TokenFactory,
    sessions: Any,
    db: psycopg.Connection[Any],
) -> None:
    ticket = await create_ticket(client, auth(make_token("user-1")))
    start = utcnow()
    async with sessions() as session:
        endpoint = await create_endpoint(
            session,
            url="https://8.8.8.8/x",
            event_types=["ticket.created"],
            enabled=True,
            now=start,
        )
        await session.commit()

    async def fail(after: timedelta, error: str = 'answered 503: {"error": "down"}') -> bool:
        async with sessions() as session:
            disabled = await record_failure(
                session,
                endpoint.id,
                ticket_id=ticket["id"],
                error=error,
                now=start + after,
                disable_after=timedelta(hours=24),
            )
            await session.commit()
        return disabled

    assert not await fail(timedelta(0))
    assert not await fail(timedelta(hours=23))
    async with sessions() as session:  # a success in between starts the count again
        await record_success(session, endpoint.id, start + timedelta(hours=23, minutes=1))
        await session.commit()
    assert not await fail(timedelta(hours=24))
    assert not await fail(timedelta(hours=47))
    assert await fail(timedelta(hours=48))
    assert not await fail(timedelta(hours=49))  # told once
    stored = db.execute("SELECT enabled, disabled_reason FROM webhook_endpoints").fetchone()
    assert stored is not None and stored[0] is False
    assert '{"error": "down"}' in stored[1] and "failing since at least" in stored[1]
    told = db.execute(
        "SELECT ticket_id, payload FROM ticket_events WHERE type = 'webhook.disabled'"
    ).fetchall()
    assert len(told) == 1 and told[0][0] == ticket["id"]
    assert told[0][1]["endpoint_id"] == endpoint.id


# -- the pipeline: real workers, the API, the receiver ----------------------------------------


@pytest.fixture
def webhook_env(service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_S),
    }


@pytest.fixture
async def api(webhook_env: dict[str, str]) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(load_settings(webhook_env))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
def admin_headers(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("agent-1", admin=True))


async def register(
    api: AsyncTestClient[Any],
    admin: dict[str, str],
    url: str,
    event_types: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    body = {"url": url, "event_types": event_types or ["ticket.created"], **fields}
    response = await api.post(WEBHOOKS_URL, json=body, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def ledger(db: psycopg.Connection[Any], channel: str = WEBHOOK) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT d.event_id, e.type, d.recipient, d.status, d.attempts, d.last_error"
        " FROM deliveries d JOIN ticket_events e ON e.id = d.event_id"
        " WHERE d.channel = %s ORDER BY d.id",
        (channel,),
    ).fetchall()


@pytest.mark.slow
async def test_an_event_arrives_signed_verifiable_and_once(
    api: AsyncTestClient[Any],
    webhook_env: dict[str, str],
    processes: list[ServiceProcess],
    receiver: WebhookSink,
    admin_headers: dict[str, str],
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    wanted = await register(api, admin_headers, receiver.url(), ["ticket.created"])
    # Neither an endpoint that wants other events nor a disabled one gets anything.
    other = WebhookSink().start()
    try:
        await register(api, admin_headers, other.url(), ["ticket.closed"])
        await register(api, admin_headers, other.url(), ["ticket.created"], enabled=False)
        processes.append(dramatiq_workers(webhook_env, QUEUES).start())
        ticket = await create_ticket(api, auth(make_token("user-1")), subject="Payout missing")
        assert await eventually(lambda: len(receiver.delivered()) == 1, within_s=20)
        (request,) = receiver.delivered()
        payload = Webhook(wanted["secret"]).verify(request.body, request.headers)
        assert payload["type"] == "ticket.created"
        assert payload["data"]["ticket"]["id"] == ticket["id"]
        assert payload["data"]["ticket"]["subject"] == "Payout missing"
        assert payload["data"]["message"]["body"] == "b"
        assert request.headers["content-type"] == "application/json"
        event_id = request.headers["webhook-id"]
        expected = [(event_id, "ticket.created", wanted["id"], "sent", 1, None)]
        assert await eventually(lambda: ledger(db) == expected, within_s=5), ledger(db)
        assert payload["data"]["event_id"] == event_id

        # After a rotation, receivers holding the old secret or the new one both verify.
        rotated = (
            await api.post(f"{WEBHOOKS_URL}/{wanted['id']}/rotate-secret", headers=admin_headers)
        ).json()
        await create_ticket(api, auth(make_token("user-1")), subject="Second")
        assert await eventually(lambda: len(receiver.delivered()) == 2, within_s=20)
        second = receiver.delivered()[1]
        Webhook(wanted["secret"]).verify(second.body, second.headers)
        Webhook(rotated["secret"]).verify(second.body, second.headers)
        await asyncio.sleep(1)  # nothing more comes
        assert len(receiver.attempts()) == 2
        assert other.attempts() == []
    finally:
        other.stop()


@pytest.mark.slow
async def test_503_and_429_are_retried_honouring_retry_after_and_delivered_once(
    api: AsyncTestClient[Any],
    webhook_env: dict[str, str],
    processes: list[ServiceProcess],
    receiver: WebhookSink,
    admin_headers: dict[str, str],
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    endpoint = await register(api, admin_headers, receiver.url())
    receiver.respond_next(Answer(503), Answer(429, {"retry-after": "3"}))
    processes.append(dramatiq_workers(webhook_env, QUEUES).start())
    await create_ticket(api, auth(make_token("user-1")))
    assert await eventually(lambda: len(receiver.delivered()) == 1, within_s=30)
    first, limited, delivered = receiver.attempts()
    assert delivered.arrived_at - limited.arrived_at >= 3.0 - 0.05  # Retry-After: 3
    assert first.headers["webhook-id"] == delivered.headers["webhook-id"]  # stable: dedupable
    assert await eventually(lambda: ledger(db)[0][3] == "sent", within_s=5)
    ((_, _, recipient, status, attempts, last_error),) = ledger(db)
    # Attempts put off while the receiver rested count too (see the breaker test).
    assert (recipient, status) == (endpoint["id"], "sent") and attempts >= 3
    assert "429" in last_error or "rests" in last_error
    await asyncio.sleep(1)
    assert len(receiver.attempts()) == 3


@pytest.mark.slow
async def test_410_fails_for_good_is_listed_and_an_operator_retry_arrives_once(
    api: AsyncTestClient[Any],
    webhook_env: dict[str, str],
    processes: list[ServiceProcess],
    receiver: WebhookSink,
    admin_headers: dict[str, str],
    make_token: TokenFactory,
) -> None:
    endpoint = await register(api, admin_headers, receiver.url())
    receiver.respond_next(Answer(410, body=b"gone"))
    processes.append(dramatiq_workers(webhook_env, QUEUES).start())
    ticket = await create_ticket(api, auth(make_token("user-1")))
    failed: list[Any] = []

    async def listed_failed() -> bool:
        response = await api.get(
            DELIVERIES_URL,
            params={"channel": "webhook", "status": "failed"},
            headers=admin_headers,
        )
        assert response.status_code == 200, response.text
        failed[:] = response.json()["data"]
        return len(failed) == 1

    assert await until(listed_failed, within_s=20), failed
    (row,) = failed
    assert (row["channel"], row["recipient"], row["ticket_id"]) == (
        "webhook",
        endpoint["id"],
        ticket["id"],
    )
    assert "410" in row["last_error"] and row["attempts"] == 1
    assert len(receiver.attempts()) == 1  # not retried by itself

    retried = await api.post(f"{DELIVERIES_URL}/{row['id']}/retry", headers=admin_headers)
    assert retried.status_code == 200, retried.text
    assert await eventually(lambda: len(receiver.delivered()) == 1, within_s=20)
    await asyncio.sleep(1)
    assert len(receiver.attempts()) == 2
    sent = await api.get(
        DELIVERIES_URL, params={"channel": "webhook", "status": "sent"}, headers=admin_headers
    )
    assert [r["id"] for r in sent.json()["data"]] == [row["id"]]


@pytest.mark.slow
async def test_a_hanging_receiver_holds_no_email_up(
    api: AsyncTestClient[Any],
    webhook_env: dict[str, str],
    processes: list[ServiceProcess],
    receiver: WebhookSink,
    smtp_sink: SmtpSink,
    admin_headers: dict[str, str],
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    await register(api, admin_headers, receiver.url())
    receiver.respond_next(Answer(delay_s=10), Answer(delay_s=10))
    processes.append(dramatiq_workers(webhook_env, QUEUES).start())
    started = time.time()
    await create_ticket(api, auth(make_token("user-1")))
    assert await eventually(lambda: len(smtp_sink.received) == len(TEAM), within_s=10)
    emailed_after = max(m.received_at for m in smtp_sink.received) - started
    assert emailed_after < TIMEOUT_S, emailed_after  # sent alongside, not after the timeout
    assert await eventually(lambda: len(receiver.delivered()) == 1, within_s=30)
    assert await eventually(lambda: ledger(db)[0][3] == "sent", within_s=5)
    ((_, _, _, status, attempts, last_error),) = ledger(db)
    assert status == "sent" and attempts >= 3
    assert "did not answer" in last_error or "rests" in last_error
    assert len(receiver.attempts()) == 3
    assert len(smtp_sink.received) == len(TEAM)  # the email rows were not sent again


@pytest.mark.slow
async def test_webhooks_have_their_own_pool_so_emails_never_wait_for_it(
    api: AsyncTestClient[Any],
    webhook_env: dict[str, str],
    processes: list[ServiceProcess],
    receiver: WebhookSink,
    smtp_sink: SmtpSink,
    admin_headers: dict[str, str],
    make_token: TokenFactory,
    redis_client: Any,
) -> None:
    """With the webhooks pool down (or every one of its threads stuck on receivers), the team's
    emails still go out: the webhook rows wait in their own queue and arrive, once, when the
    pool runs."""
    await register(api, admin_headers, receiver.url())
    others = [q for q in QUEUES if q != WEBHOOKS_QUEUE]
    processes.append(dramatiq_workers(webhook_env, others).start())
    for i in range(3):
        await create_ticket(api, auth(make_token("user-1")), subject=f"Isolated {i}")
    assert await eventually(lambda: len(smtp_sink.received) == 3 * len(TEAM), within_s=20)
    assert receiver.attempts() == []
    assert redis_client.llen(f"dramatiq:{WEBHOOKS_QUEUE}") >= 1
    processes.append(dramatiq_workers(webhook_env, [WEBHOOKS_QUEUE]).start())
    assert await eventually(lambda: len(receiver.delivered()) == 3, within_s=20)
    await asyncio.sleep(1)  # nothing more comes
    assert len(receiver.attempts()) == 3
    assert len(smtp_sink.received) == 3 * len(TEAM)


@pytest.mark.slow
async def test_an_endpoint_failing_too_long_is_disabled_the_team_told_and_it_comes_back(
    api: AsyncTestClient[Any],
    webhook_env: dict[str, str],
    processes: list[ServiceProcess],
    receiver: WebhookSink,
    smtp_sink: SmtpSink,
    slack_sink: HttpSink,
    admin_headers: dict[str, str],
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    env = {**webhook_env, "WEBHOOK_DISABLE_AFTER_SECONDS": "2"}
    endpoint = await register(api, admin_headers, receiver.url())
    receiver.respond_always(Answer(503))
    processes.append(dramatiq_workers(env, QUEUES).start())
    processes.append(scheduler(env).start())  # the sweep publishes the worker's own event
    await create_ticket(api, auth(make_token("user-1")))

    def team_told() -> bool:
        return any(
            "Webhook endpoint disabled" in str(m["Subject"]) for m in smtp_sink.messages_to(TEAM[0])
        )

    assert await eventually(team_told, within_s=40)
    stored = db.execute(
        "SELECT enabled, disabled_reason, failing_since FROM webhook_endpoints"
    ).fetchone()
    assert stored is not None and stored[0] is False and "503" in stored[1]
    (told,) = [m for m in smtp_sink.messages_to(TEAM[0]) if "disabled" in str(m["Subject"])]
    assert endpoint["id"] in told.get_payload()
    assert await eventually(
        lambda: any("disabled" in str(r.body) for r in slack_sink.received), within_s=10
    )
    # The delivery is failed, not lost; nothing more is sent to the endpoint.
    assert await eventually(lambda: ledger(db)[0][3] == "failed", within_s=10)
    assert "disabled" in ledger(db)[0][5]
    tried = len(receiver.attempts())
    await asyncio.sleep(1.5)
    assert len(receiver.attempts()) == tried
    events = db.execute(
        "SELECT count(*) FROM ticket_events WHERE type = 'webhook.disabled'"
    ).fetchone()
    assert events == (1,)

    # The operator fixes the receiver, enables the endpoint and retries: it arrives once.
    receiver.respond_always(Answer(200))
    enabled = await api.patch(
        f"{WEBHOOKS_URL}/{endpoint['id']}", json={"enabled": True}, headers=admin_headers
    )
    assert enabled.json()["failing_since"] is None and enabled.json()["enabled"] is True
    failed = (
        await api.get(
            DELIVERIES_URL, params={"channel": "webhook", "status": "failed"}, headers=admin_headers
        )
    ).json()["data"]
    assert len(failed) == 1
    await api.post(f"{DELIVERIES_URL}/{failed[0]['id']}/retry", headers=admin_headers)
    assert await eventually(lambda: len(receiver.delivered()) == 1, within_s=20)
    await asyncio.sleep(1)
    assert len(receiver.delivered()) == 1
