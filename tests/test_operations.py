"""The operator's view against the real pipeline: a notification refused for good shows in the
failed list, an admin retries it once the mail server accepts again, it arrives once, and the
ticket's audit trail shows the change, the retry and who was told."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import ADMIN_URL, MISSING_ID, QUEUES, TEAM, TokenFactory, auth, create_ticket
from tests.processes import ServiceProcess, dramatiq_workers
from tests.sinks import HttpSink, SmtpSink, eventually, until

DELIVERIES_URL = "/v1/admin/support/deliveries"


async def listed(client: AsyncTestClient[Any], headers: dict[str, str], **query: str) -> Any:
    response = await client.get(DELIVERIES_URL, params=query, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
async def test_a_failed_delivery_is_listed_retried_and_arrives_once(
    live_client: AsyncTestClient[Any],
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    slack_sink: HttpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    admin = auth(make_token("agent-1", admin=True))
    smtp_sink.refuse_until_cleared("550 5.1.1 mailbox unavailable")
    processes.append(dramatiq_workers(service_env, QUEUES).start())
    ticket = await create_ticket(live_client, auth(make_token("user-1")), subject="Refused")

    async def failed() -> list[Any]:
        data: list[Any] = (await listed(live_client, admin, status="failed"))["data"]
        return data

    failed_rows: list[Any] = []

    async def both_failed() -> bool:
        failed_rows[:] = await failed()
        return len(failed_rows) == len(TEAM)

    assert await until(both_failed, within_s=30), failed_rows
    assert {r["recipient"] for r in failed_rows} == set(TEAM)
    assert all(r["channel"] == "email" and "550" in r["last_error"] for r in failed_rows)
    assert all(
        r["ticket_id"] == ticket["id"] and r["event_type"] == "ticket.created" for r in failed_rows
    )
    # Slack took its post: the filters tell the rows apart.
    sent = await listed(live_client, admin, status="sent", channel="slack")
    assert [r["ticket_id"] for r in sent["data"]] == [ticket["id"]]
    by_ticket = await listed(live_client, admin, ticket_id=ticket["id"])
    assert by_ticket["pagination"]["total"] == len(TEAM) + 1

    smtp_sink.clear_refusals()
    retried = failed_rows[0]
    response = await live_client.post(f"{DELIVERIES_URL}/{retried['id']}/retry", headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    assert await eventually(lambda: len(smtp_sink.received) == 1, within_s=20)
    assert smtp_sink.received[0].rcpt_tos == [retried["recipient"]]

    async def retried_row_sent() -> bool:
        rows = (await listed(live_client, admin, ticket_id=ticket["id"]))["data"]
        return {r["id"]: r["status"] for r in rows}[retried["id"]] == "sent"

    assert await until(retried_row_sent, within_s=10)
    still_failed = await failed()
    assert [r["id"] for r in still_failed] == [failed_rows[1]["id"]]  # only what was retried
    # Retrying what was sent is refused; so is a delivery that does not exist.
    again = await live_client.post(f"{DELIVERIES_URL}/{retried['id']}/retry", headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_retryable"
    missing = await live_client.post(f"{DELIVERIES_URL}/{MISSING_ID}/retry", headers=admin)
    assert missing.status_code == 404
    assert len(smtp_sink.received) == 1  # nothing else was sent meanwhile
    # The event is complete again once its rows are settled.
    assert await eventually(
        lambda: (
            db.execute("SELECT count(*) FROM ticket_events WHERE completed_at IS NULL").fetchone()
            == (0,)
        ),
        within_s=10,
    )

    trail = await live_client.get(f"{ADMIN_URL}/{ticket['id']}/events", headers=admin)
    assert trail.status_code == 200, trail.text
    entries = trail.json()["data"]
    assert [e["type"] for e in entries] == ["ticket.created", "delivery.retried"]
    created, retry = entries
    assert created["actor_id"] == "user-1" and not created["actor_is_admin"]
    told = {(n["channel"], n["recipient"]): n["status"] for n in created["notifications"]}
    assert told[("email", retried["recipient"])] == "sent"
    assert told[("email", failed_rows[1]["recipient"])] == "failed"
    assert retry["actor_id"] == "agent-1" and retry["actor_is_admin"]
    assert retry["payload"]["delivery_id"] == retried["id"]


async def test_the_audit_trail_is_in_order_and_paged(
    client: AsyncTestClient[Any], make_token: TokenFactory, admin: dict[str, str]
) -> None:
    user = auth(make_token("user-1"))
    ticket = await create_ticket(client, user)
    for n in range(3):
        reply = await client.post(
            f"{ADMIN_URL}/{ticket['id']}/messages", json={"body": f"r{n}"}, headers=admin
        )
        assert reply.status_code == 201
    patch = await client.patch(
        f"{ADMIN_URL}/{ticket['id']}", json={"status": "resolved"}, headers=admin
    )
    assert patch.status_code == 200
    url = f"{ADMIN_URL}/{ticket['id']}/events"
    first = (await client.get(url, params={"per_page": 3}, headers=admin)).json()
    second = (await client.get(url, params={"per_page": 3, "page": 2}, headers=admin)).json()
    types = [e["type"] for e in first["data"] + second["data"]]
    assert types == ["ticket.created"] + ["message.created"] * 3 + ["ticket.updated"]
    assert first["pagination"] == {"page": 1, "per_page": 3, "total": 5, "total_pages": 2}
    assert second["data"][-1]["payload"]["changes"]["status"] == {"old": "open", "new": "resolved"}
    assert (await client.get(f"{ADMIN_URL}/{MISSING_ID}/events", headers=admin)).status_code == 404
    assert (await client.get(url, headers=user)).status_code == 403
    assert (await client.get(DELIVERIES_URL, headers=user)).status_code == 403
    for query in (
        {"status": "lost"},
        {"ticket_id": "\x00"},
        {"ticket_id": "U" * 26},
        {"channel": "pigeon"},
    ):
        bad = await client.get(DELIVERIES_URL, params=query, headers=admin)
        assert bad.status_code == 400, (query, bad.text)
