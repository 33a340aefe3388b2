"""Faults delay notifications; they never lose them. Real Redis, real worker processes, real
SMTP and HTTP servers. Destructive cases use a private redis-server on a random port."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.outbox import (
    DELIVER_ACTOR,
    DISPATCH_ACTOR,
    EVENTS_QUEUE,
    NOTIFICATIONS_QUEUE,
)
from domain.settings import load_settings
from tests.conftest import QUEUES, TEAM, TokenFactory, auth, create_ticket
from tests.processes import PrivateRedis, ServiceProcess, dramatiq_workers, scheduler
from tests.sinks import HttpSink, SmtpSink, eventually

pytestmark = pytest.mark.slow

PER_TICKET = len(TEAM)  # emails per new ticket (plus one Slack post)
HANG_GUARD_S = 20.0


@asynccontextmanager
async def api(env: dict[str, str]) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        yield client


async def create_tickets(client: AsyncTestClient[Any], token: str, count: int) -> list[str]:
    headers = auth(token)
    return [
        (await create_ticket(client, headers, subject=f"Ticket {n}", body="help"))["id"]
        for n in range(count)
    ]


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


def no_duplicates(sink: SmtpSink) -> bool:
    return all(n == 1 for n in Counter(sink.deliveries()).values())


async def test_redis_down_during_writes_delays_but_loses_nothing(
    service_env: dict[str, str],
    private_redis: PrivateRedis,
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    slack_sink: HttpSink,
    make_token: TokenFactory,
) -> None:
    env = {**service_env, "REDIS_URL": private_redis.url}
    processes += [dramatiq_workers(env, QUEUES).start(), scheduler(env).start()]
    async with api(env) as client:
        private_redis.stop()
        ids = await create_tickets(client, make_token("user-1"), 10)  # every write answers 201
        await client.get("/healthz")
        assert smtp_sink.received == []
        private_redis.start()  # back, and empty
        assert await eventually(
            lambda: len(smtp_sink.received) == PER_TICKET * len(ids), within_s=60
        ), processes[0].output()[-3000:]
    assert await eventually(lambda: len(slack_sink.received) == len(ids), within_s=20)
    assert {m.message["X-Helpdesk-Ticket"] for m in smtp_sink.received} == set(ids)
    assert no_duplicates(smtp_sink)


@pytest.fixture
def hanging_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a stuck host): the
    kernel completes the handshakes into the listen backlog, nobody reads."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        # A blocking call without a timeout would block the test's event loop too: closing the
        # listener later resets the waiting connections, so such a bug fails instead of hanging.
        unstick = threading.Timer(HANG_GUARD_S, listener.close)
        unstick.start()
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        unstick.cancel()


async def test_a_hanging_redis_does_not_hang_writes(
    service_env: dict[str, str],
    hanging_redis: str,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    # The rate limiter and the publisher both talk to this Redis on every write.
    env = {**service_env, "REDIS_URL": hanging_redis, "RATE_LIMIT_PER_MINUTE": "600"}
    async with api(env) as client:
        # Every write answers 201, in a few seconds at most: the publisher's and the limiter's
        # socket timeouts and their back-off bound the stall (the guard is far above that).
        started = time.monotonic()
        ids = await create_tickets(client, make_token("user-1"), 20)
        assert time.monotonic() - started < HANG_GUARD_S
        assert (await client.get("/readyz")).status_code == 200
    # The events wait in the outbox for the sweep, none marked published by mistake.
    assert db.execute(
        "SELECT count(*), count(published_at) FROM ticket_events WHERE type = 'ticket.created'"
    ).fetchone() == (len(ids), 0)


async def test_redis_restarted_empty_before_workers_ran_loses_nothing(
    service_env: dict[str, str],
    private_redis: PrivateRedis,
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    env = {**service_env, "REDIS_URL": private_redis.url}
    async with api(env) as client:
        ids = await create_tickets(client, make_token("user-1"), 5)
        # The API published every event to Redis ...
        assert await eventually(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM ticket_events WHERE published_at IS NOT NULL"
                ).fetchone()
                == (5,)
            ),
            within_s=10,
        )
    # ... and Redis restarts empty before any worker took them.
    private_redis.stop()
    private_redis.start()
    processes += [dramatiq_workers(env, QUEUES).start(), scheduler(env).start()]
    # Published but never completed: the sweep publishes them again (after 5 s in this setup).
    assert await eventually(lambda: len(smtp_sink.received) == PER_TICKET * 5, within_s=60), (
        processes[0].output()[-3000:] + processes[1].output()[-2000:]
    )
    assert {m.message["X-Helpdesk-Ticket"] for m in smtp_sink.received} == set(ids)
    assert no_duplicates(smtp_sink)
    republished = db.execute("SELECT min(publish_count) FROM ticket_events").fetchone()
    assert republished is not None and republished[0] >= 2


async def test_worker_killed_mid_batch_loses_nothing(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    smtp_sink.delay_s = 0.05  # a slow mail server, so the kill lands with work in flight
    env = service_env
    workers = dramatiq_workers(env, QUEUES).start()
    processes += [scheduler(env).start()]
    async with api(env) as client:
        ids = await create_tickets(client, make_token("user-1"), 40)
        expected = PER_TICKET * len(ids)
        assert await eventually(lambda: len(smtp_sink.received) >= 10, within_s=30)
        workers.kill()  # SIGKILL: nothing acked, nothing cleaned up
        killed_at = time.monotonic()
        received_at_kill = len(smtp_sink.received)
        assert received_at_kill < expected, "the kill should land mid-batch"
        processes.append(dramatiq_workers(env, QUEUES).start())
        assert await eventually(lambda: len(set(smtp_sink.deliveries())) == expected, within_s=90)
        recovery_s = time.monotonic() - killed_at
    counts = Counter(smtp_sink.deliveries())
    duplicates = sum(n - 1 for n in counts.values())
    with capsys.disabled():
        print(
            f"\n[worker SIGKILL] delivered {len(counts)}/{expected} (0 lost), "
            f"{duplicates} duplicate(s), recovered in {recovery_s:.1f} s "
            f"({received_at_kill} sent before the kill)"
        )
    # A duplicate can only come from a send in flight at the moment of the kill: each of the
    # 8 threads sends one event's emails at once, so at most 8 x PER_TICKET.
    assert duplicates <= 8 * PER_TICKET


async def test_same_messages_delivered_twice_send_once(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    slack_sink: HttpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    async with api(service_env) as client:
        (ticket_id,) = await create_tickets(client, make_token("user-1"), 1)
    event_id = db.execute("SELECT id FROM ticket_events").fetchone()[0]  # type: ignore[index]
    broker = RedisBroker(url=service_env["REDIS_URL"], middleware=[])
    for _ in range(3):  # the API already sent it once; send it three more times
        broker.enqueue(
            dramatiq.Message(
                queue_name=EVENTS_QUEUE,
                actor_name=DISPATCH_ACTOR,
                args=([event_id],),
                kwargs={},
                options={},
            )
        )
    processes.append(dramatiq_workers(service_env, QUEUES).start())
    assert await eventually(lambda: len(smtp_sink.received) == PER_TICKET, within_s=30)
    # Now the delivery message arrives twice more after the fact, and one per row.
    delivery_ids = [row[0] for row in db.execute("SELECT id FROM deliveries").fetchall()]
    duplicates = [delivery_ids] * 2 + [[delivery_id] for delivery_id in delivery_ids]
    for ids in duplicates:
        broker.enqueue(
            dramatiq.Message(
                queue_name=NOTIFICATIONS_QUEUE,
                actor_name=DELIVER_ACTOR,
                args=(ids,),
                kwargs={},
                options={},
            )
        )
    await asyncio.sleep(3)
    broker.close()
    assert len(smtp_sink.received) == PER_TICKET
    assert len(slack_sink.received) == 1
    assert {m.message["X-Helpdesk-Ticket"] for m in smtp_sink.received} == {ticket_id}


async def test_slack_503_three_times_then_200_posts_exactly_once(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    slack_sink: HttpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    slack_sink.respond_next([503, 503, 503])
    processes.append(dramatiq_workers(service_env, QUEUES).start())
    async with api(service_env) as client:
        await create_tickets(client, make_token("user-1"), 1)
        assert await eventually(lambda: len(slack_sink.received) == 1, within_s=60)
    await asyncio.sleep(1.5)
    assert len(slack_sink.received) == 1
    assert slack_sink.attempts == 4
    row = db.execute("SELECT status, attempts FROM deliveries WHERE channel = 'slack'").fetchone()
    assert row == ("sent", 4)


async def test_slack_429_waits_for_retry_after(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    slack_sink: HttpSink,
    make_token: TokenFactory,
) -> None:
    slack_sink.respond_next([429], {"Retry-After": "3"})
    processes.append(dramatiq_workers(service_env, QUEUES).start())
    async with api(service_env) as client:
        started = time.time()
        await create_tickets(client, make_token("user-1"), 1)
        assert await eventually(lambda: len(slack_sink.received) == 1, within_s=30)
    assert slack_sink.received[0].received_at - started >= 3.0
    assert slack_sink.attempts == 2


async def test_smtp_refusing_4xx_then_accepting_delivers_each_email_once(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    smtp_sink.refuse_next(4, "451 4.3.0 mailbox busy, try later")
    processes.append(dramatiq_workers(service_env, QUEUES).start())
    async with api(service_env) as client:
        await create_tickets(client, make_token("user-1"), 2)
        assert await eventually(lambda: len(smtp_sink.received) == 2 * PER_TICKET, within_s=60)
    assert no_duplicates(smtp_sink)
    # The sink accepts a message a moment before the worker records it as sent.
    assert await eventually(
        lambda: (
            db.execute(
                "SELECT count(*) FROM deliveries WHERE channel = 'email' AND status = 'sent'"
            ).fetchone()
            == (2 * PER_TICKET,)
        ),
        within_s=10,
    )
    attempts = db.execute("SELECT sum(attempts) FROM deliveries WHERE channel = 'email'").fetchone()
    assert attempts == (2 * PER_TICKET + 4,)


async def test_smtp_5xx_reject_is_recorded_and_not_retried(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    smtp_sink.refuse_next(1, "550 5.1.1 no such mailbox")
    processes.append(dramatiq_workers(service_env, QUEUES).start())
    async with api(service_env) as client:
        await create_tickets(client, make_token("user-1"), 1)
        assert await eventually(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM ticket_events WHERE completed_at IS NOT NULL"
                ).fetchone()
                == (1,)
            ),
            within_s=30,
        )
    await asyncio.sleep(2)
    assert len(smtp_sink.received) == PER_TICKET - 1
    failed = db.execute(
        "SELECT attempts, last_error FROM deliveries WHERE status = 'failed'"
    ).fetchall()
    assert len(failed) == 1
    assert failed[0][0] == 1 and "550" in failed[0][1]
