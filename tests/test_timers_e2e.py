"""Timers in real time through real Redis and real worker/scheduler processes, with deadlines of
a few seconds: escalation at the deadline, auto-close, and survival of a killed worker plus an
emptied Redis."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.outbox import SLA_CHECK_ACTOR, SLA_QUEUE
from domain.settings import load_settings
from tests.conftest import ADMIN_URL, QUEUES, TEAM, USER_URL, TokenFactory, auth, create_ticket
from tests.processes import ServiceProcess, dramatiq_workers, scheduler
from tests.sinks import SmtpSink, eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def timer_env(service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "SLA_URGENT_SECONDS": "4",
        "AUTO_CLOSE_SECONDS": "3",
        "SLA_SWEEP_INTERVAL_SECONDS": "0.5",
        "AUTO_CLOSE_SWEEP_INTERVAL_SECONDS": "0.5",
    }


def breach_mails(sink: SmtpSink) -> list[Any]:
    return [m for m in sink.received if "SLA breached" in str(m.message["Subject"])]


async def create(client: AsyncTestClient[Any], token: str, priority: str) -> str:
    fields = {"subject": f"{priority} thing", "body": "help", "priority": priority}
    return str((await create_ticket(client, auth(token), **fields))["id"])


async def test_escalation_at_the_deadline_and_none_when_answered_in_time(
    timer_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    processes += [dramatiq_workers(timer_env, QUEUES).start(), scheduler(timer_env).start()]
    user = make_token("user-1", email="user@example.com")
    admin = auth(make_token("agent-1", admin=True))
    async with AsyncTestClient(app=create_app(load_settings(timer_env))) as client:
        late = await create(client, user, "urgent")
        answered = await create(client, user, "urgent")
        reply = await client.post(
            f"{ADMIN_URL}/{answered}/messages", json={"body": "on it"}, headers=admin
        )
        assert reply.status_code == 201
        assert await eventually(lambda: len(breach_mails(smtp_sink)) == len(TEAM), within_s=20)
        view = (await client.get(f"{ADMIN_URL}/{late}", headers=admin)).json()
        assert view["sla_breached"] is True
        breached = (await client.get(f"{ADMIN_URL}?breached=true", headers=admin)).json()
        assert [t["id"] for t in breached["data"]] == [late]
    # Fired within a second of the deadline (the wake-up message or the sweep, whichever first).
    due_at, breached_at = db.execute(
        "SELECT sla_due_at, sla_breached_at FROM tickets WHERE id = %s", (late,)
    ).fetchone() or (None, None)
    assert 0 <= (breached_at - due_at).total_seconds() <= 1.0
    mails = breach_mails(smtp_sink)
    assert {m.message["X-Helpdesk-Ticket"] for m in mails} == {late}
    assert sorted(r for m in mails for r in m.rcpt_tos) == sorted(TEAM)
    arrival = max(m.received_at for m in mails)
    assert arrival - due_at.timestamp() <= 2.0
    await eventually(lambda: False, within_s=2.0)  # nothing more arrives later
    assert len(breach_mails(smtp_sink)) == len(TEAM)
    assert db.execute(
        "SELECT count(*) FROM ticket_events WHERE type = 'ticket.sla_breached'"
    ).fetchone() == (1,)


async def test_resolved_ticket_closes_itself_unless_the_user_replied(
    timer_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    processes += [dramatiq_workers(timer_env, QUEUES).start(), scheduler(timer_env).start()]
    user = make_token("user-1", email="user@example.com")
    admin = auth(make_token("agent-1", admin=True))
    async with AsyncTestClient(app=create_app(load_settings(timer_env))) as client:
        quiet = await create(client, user, "normal")
        reopened = await create(client, user, "normal")
        for ticket_id in (quiet, reopened):
            patched = await client.patch(
                f"{ADMIN_URL}/{ticket_id}", json={"status": "resolved"}, headers=admin
            )
            assert patched.status_code == 200
        again = await client.post(
            f"{USER_URL}/{reopened}/messages", json={"body": "not fixed"}, headers=auth(user)
        )
        assert again.status_code == 201

        def closed_mail() -> list[Any]:
            return [
                m
                for m in smtp_sink.messages_to("user@example.com")
                if "closed automatically" in str(m["Subject"])
            ]

        assert await eventually(lambda: len(closed_mail()) == 1, within_s=20)
        await eventually(lambda: False, within_s=2.0)
        statuses = {
            t: (await client.get(f"{ADMIN_URL}/{t}", headers=admin)).json()["status"]
            for t in (quiet, reopened)
        }
    assert statuses == {quiet: "closed", reopened: "open"}
    assert closed_mail()[0]["X-Helpdesk-Ticket"] == quiet
    assert db.execute(
        "SELECT ticket_id, payload->>'reason' FROM ticket_events WHERE type = 'ticket.closed'"
    ).fetchall() == [(quiet, "auto")]


async def test_timers_survive_a_killed_worker_and_an_emptied_redis(
    timer_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    env = {**timer_env, "SLA_URGENT_SECONDS": "6"}
    workers = dramatiq_workers(env, QUEUES).start()
    user = make_token("user-1")
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        ids = [await create(client, user, "urgent") for _ in range(5)]
        # Wait until the wake-up messages sit in the worker (dispatched events are completed).
        assert await eventually(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM ticket_events WHERE completed_at IS NOT NULL"
                ).fetchone()
                == (5,)
            ),
            within_s=20,
        )
    workers.kill()
    redis_client.flushdb()  # Redis comes back empty: every queued wake-up is gone
    assert datetime.now(UTC) < min(
        row[0] for row in db.execute("SELECT sla_due_at FROM tickets").fetchall()
    ), "the timers must still be pending when the worker dies"
    processes += [dramatiq_workers(env, QUEUES).start(), scheduler(env).start()]
    assert await eventually(
        lambda: len(breach_mails(smtp_sink)) == len(TEAM) * len(ids), within_s=30
    )
    await eventually(lambda: False, within_s=1.5)
    counts = Counter(
        (m.message["X-Helpdesk-Ticket"], r) for m in breach_mails(smtp_sink) for r in m.rcpt_tos
    )
    assert set(counts) == {(t, r) for t in ids for r in TEAM}
    assert set(counts.values()) == {1}
    assert db.execute(
        "SELECT count(*), count(DISTINCT ticket_id) FROM ticket_events "
        "WHERE type = 'ticket.sla_breached'"
    ).fetchone() == (5, 5)


BURST = 10_000


async def test_the_backstop_sweep_is_not_stuck_behind_a_burst_of_wake_ups(
    timer_env: dict[str, str],
    processes: list[ServiceProcess],
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    """Many deadlines falling due together queue their wake-ups ahead of anything sent to the
    sla queue after them; the sweep, which would breach them all in a few batches, must not wait
    behind that queue (nor expire there)."""
    env = {**timer_env, "SLA_URGENT_SECONDS": "6"}
    # The burst: wake-ups for tickets that do not exist (each still costs the pool a query).
    broker = RedisBroker(client=redis.Redis.from_url(env["REDIS_URL"]), middleware=[])
    broker.declare_queue(SLA_QUEUE)
    for i in range(BURST):
        broker.enqueue(
            Message(
                queue_name=SLA_QUEUE,
                actor_name=SLA_CHECK_ACTOR,
                args=(f"no-such-ticket-{i}",),
                kwargs={},
                options={},
            )
        )
    broker.close()
    # Workers first (they start on the burst at once), so the deadline's clock does not also
    # count their boot, which takes seconds on a busy machine.
    processes += [
        dramatiq_workers(env, QUEUES, threads=2).start(),
        scheduler(env).start(),
    ]
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        ticket = await create(client, make_token("user-1"), "urgent")

        def breached() -> bool:
            row = db.execute(
                "SELECT sla_breached_at FROM tickets WHERE id = %s", (ticket,)
            ).fetchone()
            return bool(row and row[0])

        assert await eventually(breached, within_s=30)
    due_at, breached_at = db.execute(
        "SELECT sla_due_at, sla_breached_at FROM tickets WHERE id = %s", (ticket,)
    ).fetchone() or (None, None)
    assert 0 <= (breached_at - due_at).total_seconds() <= 1.5
