"""End to end through real processes: API write -> PostgreSQL outbox -> Redis -> Dramatiq workers
-> a real SMTP server and a real HTTP server standing in for Slack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from domain.outbox import EVENTS_QUEUE, MAINTENANCE_QUEUE, NOTIFICATIONS_QUEUE
from tests.conftest import ADMIN_URL, TEAM, USER_URL, TokenFactory, auth
from tests.processes import ServiceProcess, dramatiq_workers
from tests.sinks import HttpSink, SmtpSink, eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(service_env: dict[str, str]) -> Iterator[ServiceProcess]:
    process = dramatiq_workers(
        service_env, [EVENTS_QUEUE, NOTIFICATIONS_QUEUE, MAINTENANCE_QUEUE]
    ).start()
    yield process
    process.stop()


def recipients(sink: SmtpSink) -> list[str]:
    return sorted(r for mail in sink.received for r in mail.rcpt_tos)


async def test_every_kind_of_write_notifies_the_right_people(
    live_client: AsyncTestClient[Any],
    workers: ServiceProcess,
    smtp_sink: SmtpSink,
    slack_sink: HttpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    user = auth(make_token("user-1", email="requester@example.com"))
    admin = auth(make_token("agent-7", admin=True, email="agent7@support.test"))

    # 1. A new ticket: every team address by email, and one Slack message.
    created = await live_client.post(
        USER_URL,
        json={
            "subject": "Payment not received",
            "body": "Where is my money?",
            "category": "billing",
            "priority": "high",
        },
        headers=user,
    )
    assert created.status_code == 201
    ticket_id = created.json()["id"]
    assert await eventually(
        lambda: len(smtp_sink.received) == 2 and len(slack_sink.received) == 1, within_s=30
    ), workers.output()[-2000:]
    assert recipients(smtp_sink) == sorted(TEAM)
    mail = smtp_sink.received[0].message
    assert "Payment not received" in mail["Subject"] and ticket_id in mail["Subject"]
    assert mail["In-Reply-To"] == mail["References"]
    assert ticket_id in mail["In-Reply-To"]
    assert mail["Message-ID"].startswith("<")
    body = mail.get_payload(decode=True).decode()
    assert "Where is my money?" in body and "user-1" in body
    slack = slack_sink.received[0].body
    slack_text = str(slack)
    for expected in ("Payment not received", "high", "billing", "user-1", ticket_id):
        assert expected in slack_text

    # 2. The admin takes it and replies: the requester hears, the team does not.
    assign = await live_client.patch(
        f"{ADMIN_URL}/{ticket_id}",
        json={"status": "in_progress", "assignee_id": "agent-7"},
        headers=admin,
    )
    assert assign.status_code == 200
    reply = await live_client.post(
        f"{ADMIN_URL}/{ticket_id}/messages", json={"body": "Looking into it"}, headers=admin
    )
    assert reply.status_code == 201
    assert await eventually(lambda: len(smtp_sink.received) == 3, within_s=30)
    assert smtp_sink.received[2].rcpt_tos == ["requester@example.com"]
    assert "Looking into it" in smtp_sink.received[2].message.get_payload(decode=True).decode()
    assert len(slack_sink.received) == 1

    # 3. The user replies: the team and the assignee (known from their token's email).
    answer = await live_client.post(
        f"{USER_URL}/{ticket_id}/messages", json={"body": "Thanks!"}, headers=user
    )
    assert answer.status_code == 201
    assert await eventually(lambda: len(smtp_sink.received) == 6, within_s=30)
    assert sorted(r for m in smtp_sink.received[3:] for r in m.rcpt_tos) == sorted(
        [*TEAM, "agent7@support.test"]
    )
    assert await eventually(lambda: len(slack_sink.received) == 2, within_s=10)

    # 4. Resolved: the requester is told.
    resolved = await live_client.patch(
        f"{ADMIN_URL}/{ticket_id}", json={"status": "resolved"}, headers=admin
    )
    assert resolved.status_code == 200
    assert await eventually(lambda: len(smtp_sink.received) == 7, within_s=30)
    assert smtp_sink.received[6].rcpt_tos == ["requester@example.com"]
    assert "resolved" in smtp_sink.received[6].message["Subject"].lower()

    # All of one ticket's mail threads under the same root.
    assert len({m.message["References"] for m in smtp_sink.received}) == 1
    # The ledger shows each delivery sent once, and every event is completed.
    assert await eventually(
        lambda: (
            db.execute("SELECT count(*) FROM ticket_events WHERE completed_at IS NULL").fetchone()
            == (0,)
        ),
        within_s=10,
    )
    rows = db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
    assert rows == [("sent", 9)]
