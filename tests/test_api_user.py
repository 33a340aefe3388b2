"""The ticket owner's endpoints: happy paths and the exact response shapes of the contract."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from domain.lifecycle import Category, Priority
from tests.conftest import ADMIN_URL, ULID, USER_URL, Clock, create_ticket

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")

TICKET_KEYS = {"id", "subject", "status", "priority", "category", "assignee_id", "created_at"}
TICKET_KEYS |= {"updated_at", "messages"}
SUMMARY_KEYS = TICKET_KEYS - {"messages"}
MESSAGE_KEYS = {"id", "body", "is_admin", "created_at"}


def assert_message(message: dict[str, Any], body: str, is_admin: bool, at: str) -> None:
    assert set(message) == MESSAGE_KEYS
    assert ULID.match(message["id"]), message
    assert message["body"] == body
    assert message["is_admin"] is is_admin
    assert message["created_at"] == at


async def test_create_returns_the_ticket_with_its_first_message(
    client: AsyncTestClient[Any], user: dict[str, str], clock: Clock, db: psycopg.Connection[Any]
) -> None:
    request = {
        "subject": "Payment not received",
        "body": "I completed a 30-minute session yesterday but the payment has not appeared.",
        "category": "billing",
        "priority": "high",
    }
    response = await client.post(USER_URL, json=request, headers=user)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    ticket = response.json()
    assert set(ticket) == TICKET_KEYS
    assert ULID.match(ticket["id"])
    assert TIMESTAMP.match(ticket["created_at"])
    [message] = ticket["messages"]
    assert_message(message, request["body"], False, clock.iso())
    assert message["id"] != ticket["id"]
    assert ticket == {
        "id": ticket["id"],
        "subject": request["subject"],
        "status": "open",
        "priority": "high",
        "category": "billing",
        "assignee_id": None,
        "created_at": clock.iso(),
        "updated_at": clock.iso(),
        "messages": [message],
    }
    owner = db.execute("SELECT user_id FROM tickets WHERE id = %s", (ticket["id"],)).fetchone()
    assert owner == ("alice",)

    # Reading it back gives the same object.
    got = await client.get(f"{USER_URL}/{ticket['id']}", headers=user)
    assert got.status_code == 200
    assert got.json() == ticket


async def test_create_defaults_and_every_enum_value(
    client: AsyncTestClient[Any], user: dict[str, str]
) -> None:
    plain = await client.post(USER_URL, json={"subject": "Hi", "body": "Help"}, headers=user)
    assert plain.status_code == 201, plain.text
    assert (plain.json()["priority"], plain.json()["category"]) == ("normal", None)

    for category in Category:
        for priority in Priority:
            response = await client.post(
                USER_URL,
                json={"subject": "s", "body": "b", "category": category, "priority": priority},
                headers=user,
            )
            assert response.status_code == 201, response.text
            assert response.json()["category"] == category.value
            assert response.json()["priority"] == priority.value


async def test_text_is_stored_exactly(client: AsyncTestClient[Any], user: dict[str, str]) -> None:
    subject = 'Zahlung fehlt — 支払い 💸 "quoted" <b>not html</b>'
    body = "Line one\nLine two\ttabbed\n\n  indented ✓ ' OR 1=1 --"
    created = await client.post(USER_URL, json={"subject": subject, "body": body}, headers=user)
    assert created.status_code == 201, created.text
    got = (await client.get(f"{USER_URL}/{created.json()['id']}", headers=user)).json()
    assert got["subject"] == subject
    assert got["messages"][0]["body"] == body


async def test_get_returns_every_message_oldest_first(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], clock: Clock
) -> None:
    created = await client.post(USER_URL, json={"subject": "s", "body": "first"}, headers=user)
    ticket_id = created.json()["id"]
    expected = [("first", False, clock.iso())]
    for body, headers, is_admin in [
        ("we are looking", admin, True),
        ("thanks", user, False),
        ("fixed now", admin, True),
        ("confirmed", user, False),
    ]:
        at = clock.advance(minutes=7)
        base = ADMIN_URL if is_admin else USER_URL
        reply = await client.post(
            f"{base}/{ticket_id}/messages", json={"body": body}, headers=headers
        )
        assert reply.status_code == 201, reply.text
        expected.append((body, is_admin, at))

    got = await client.get(f"{USER_URL}/{ticket_id}", headers=user)
    assert got.status_code == 200
    ticket = got.json()
    assert set(ticket) == TICKET_KEYS
    assert len(ticket["messages"]) == len(expected)
    for message, (body, is_admin, at) in zip(ticket["messages"], expected, strict=True):
        assert_message(message, body, is_admin, at)
    assert len({m["id"] for m in ticket["messages"]}) == len(expected)
    assert ticket["messages"][0]["id"] == created.json()["messages"][0]["id"]


async def test_reply_returns_the_created_message(
    client: AsyncTestClient[Any], user: dict[str, str], clock: Clock
) -> None:
    ticket_id = (await create_ticket(client, user))["id"]
    at = clock.advance(minutes=1)
    reply = await client.post(
        f"{USER_URL}/{ticket_id}/messages", json={"body": "more detail"}, headers=user
    )
    assert reply.status_code == 201, reply.text
    message = reply.json()
    assert_message(message, "more detail", False, at)
    ticket = (await client.get(f"{USER_URL}/{ticket_id}", headers=user)).json()
    assert ticket["messages"][-1] == message


async def test_close_returns_the_closed_ticket(
    client: AsyncTestClient[Any], user: dict[str, str], clock: Clock
) -> None:
    created = await create_ticket(client, user)
    at = clock.advance(hours=2)
    closed = await client.post(f"{USER_URL}/{created['id']}/close", headers=user)
    assert closed.status_code == 200, closed.text
    ticket = closed.json()
    assert set(ticket) == TICKET_KEYS
    assert ticket == {**created, "status": "closed", "updated_at": at}
    assert (await client.get(f"{USER_URL}/{created['id']}", headers=user)).json() == ticket


async def test_list_is_an_envelope_newest_first_without_messages(
    client: AsyncTestClient[Any], user: dict[str, str], clock: Clock
) -> None:
    created = []
    for i in range(3):
        clock.advance(minutes=1)
        response = await client.post(
            USER_URL, json={"subject": f"ticket {i}", "body": "b"}, headers=user
        )
        created.append(response.json())
    # Activity on the oldest ticket does not move it up: the list is by creation time.
    clock.advance(minutes=1)
    await client.post(f"{USER_URL}/{created[0]['id']}/messages", json={"body": "x"}, headers=user)

    response = await client.get(USER_URL, headers=user)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "data", "pagination"}
    assert body["success"] is True
    assert body["pagination"] == {"page": 1, "per_page": 20, "total": 3, "total_pages": 1}
    assert [t["id"] for t in body["data"]] == [t["id"] for t in reversed(created)]
    for item in body["data"]:
        assert set(item) == SUMMARY_KEYS
        full = (await client.get(f"{USER_URL}/{item['id']}", headers=user)).json()
        assert item == {k: v for k, v in full.items() if k != "messages"}


async def test_updated_at_changes_on_every_write(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], clock: Clock
) -> None:
    created = await create_ticket(client, user)
    ticket_id, created_at = created["id"], created["created_at"]
    assert created["updated_at"] == created_at
    writes: list[tuple[str, str, str, dict[str, str], Any]] = [
        ("user reply", "POST", f"{USER_URL}/{ticket_id}/messages", user, {"body": "1"}),
        ("admin reply", "POST", f"{ADMIN_URL}/{ticket_id}/messages", admin, {"body": "2"}),
        ("priority", "PATCH", f"{ADMIN_URL}/{ticket_id}", admin, {"priority": "high"}),
        ("assign", "PATCH", f"{ADMIN_URL}/{ticket_id}", admin, {"assignee_id": "agent-7"}),
        ("unassign", "PATCH", f"{ADMIN_URL}/{ticket_id}", admin, {"assignee_id": None}),
        ("status", "PATCH", f"{ADMIN_URL}/{ticket_id}", admin, {"status": "resolved"}),
        ("reopening reply", "POST", f"{USER_URL}/{ticket_id}/messages", user, {"body": "3"}),
        ("close", "POST", f"{USER_URL}/{ticket_id}/close", user, None),
    ]
    for name, method, url, headers, payload in writes:
        at = clock.advance(minutes=3)
        response = await client.request(method, url, json=payload, headers=headers)
        assert response.status_code in (200, 201), (name, response.text)
        mine = (await client.get(f"{USER_URL}/{ticket_id}", headers=user)).json()
        assert (mine["updated_at"], mine["created_at"]) == (at, created_at), name
        listed = (await client.get(USER_URL, headers=user)).json()["data"][0]
        assert listed["updated_at"] == at, name
        staff = (await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)).json()
        assert staff["updated_at"] == at, name


async def test_a_request_that_changes_nothing_keeps_updated_at(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], clock: Clock
) -> None:
    created = await create_ticket(client, user)
    clock.advance(minutes=5)
    for payload in ({}, {"status": "open"}, {"priority": "normal"}, {"assignee_id": None}):
        response = await client.patch(f"{ADMIN_URL}/{created['id']}", json=payload, headers=admin)
        assert response.status_code == 200, response.text
        assert response.json()["updated_at"] == created["updated_at"], payload
