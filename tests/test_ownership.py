"""Another user's ticket is indistinguishable from a missing one; admin routes are admin-only."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from tests.conftest import ADMIN_URL, MISSING_ID, USER_URL, TokenFactory, auth, create_ticket


def snapshot(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    return (
        db.execute("SELECT id, status, updated_at, assignee_id, priority FROM tickets ORDER BY id")
        .fetchall(),
        db.execute("SELECT count(*) FROM messages").fetchone(),
        db.execute("SELECT count(*) FROM ticket_events").fetchone(),
    )  # fmt: skip


async def test_another_users_ticket_looks_exactly_like_a_missing_one(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    bob: dict[str, str],
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    ticket_id = (await create_ticket(client, alice, subject="alice's problem"))["id"]
    before = snapshot(db)
    other_users = {"bob": bob, "an admin on the user routes": auth(make_token("root", admin=True))}
    for who, headers in other_users.items():
        for method, path, payload in [
            ("GET", "", None),
            ("POST", "/messages", {"body": "let me in"}),
            ("POST", "/close", None),
        ]:
            theirs = await client.request(
                method, f"{USER_URL}/{ticket_id}{path}", json=payload, headers=headers
            )
            missing = await client.request(
                method, f"{USER_URL}/{MISSING_ID}{path}", json=payload, headers=headers
            )
            case = f"{who}: {method} {path or '/'}"
            assert theirs.status_code == 404, (case, theirs.text)
            assert theirs.json() == missing.json(), case
            assert theirs.headers["content-type"] == missing.headers["content-type"], case
    assert snapshot(db) == before  # nothing changed for alice

    mine = await client.get(f"{USER_URL}/{ticket_id}", headers=alice)
    assert mine.status_code == 200
    assert mine.json()["status"] == "open"
    assert len(mine.json()["messages"]) == 1


async def test_lists_show_only_the_callers_own_tickets(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    bob: dict[str, str],
    make_token: TokenFactory,
) -> None:
    alices = {(await create_ticket(client, alice, subject=f"alice {i}"))["id"] for i in range(3)}
    bobs = {(await create_ticket(client, bob, subject=f"bob {i}"))["id"] for i in range(2)}

    bob_list = (await client.get(USER_URL, headers=bob)).json()
    assert {t["id"] for t in bob_list["data"]} == bobs
    assert bob_list["pagination"]["total"] == 2
    for page in (1, 2, 3):
        paged = (await client.get(f"{USER_URL}?page={page}&per_page=1", headers=bob)).json()
        assert {t["id"] for t in paged["data"]} <= bobs
        assert paged["pagination"]["total"] == 2

    alice_list = (await client.get(USER_URL, headers=alice)).json()
    assert {t["id"] for t in alice_list["data"]} == alices
    assert alice_list["pagination"]["total"] == 3

    # A user who never wrote anything sees nothing at all.
    carol = (await client.get(USER_URL, headers=auth(make_token("carol")))).json()
    assert carol["data"] == []
    assert carol["pagination"]["total"] == 0


async def test_non_admin_gets_403_on_every_admin_route(
    client: AsyncTestClient[Any], alice: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    ticket_id = (await create_ticket(client, alice, subject="mine"))["id"]
    before = snapshot(db)
    routes: list[tuple[str, str, Any]] = [
        ("GET", ADMIN_URL, None),
        ("GET", f"{ADMIN_URL}?status=open", None),
        ("GET", f"{ADMIN_URL}/{ticket_id}", None),
        ("GET", f"{ADMIN_URL}/{MISSING_ID}", None),
        ("PATCH", f"{ADMIN_URL}/{ticket_id}", {"status": "resolved"}),
        ("PATCH", f"{ADMIN_URL}/{ticket_id}", {"assignee_id": "alice"}),
        ("PATCH", f"{ADMIN_URL}/{MISSING_ID}", {"priority": "urgent"}),
        ("POST", f"{ADMIN_URL}/{ticket_id}/messages", {"body": "I am staff, honest"}),
        ("POST", f"{ADMIN_URL}/{MISSING_ID}/messages", {"body": "hi"}),
    ]
    for method, url, payload in routes:
        response = await client.request(method, url, json=payload, headers=alice)
        assert response.status_code == 403, (method, url, response.text)
        body = response.json()
        assert body["success"] is False
        assert body["error"]["code"] == "forbidden"
    assert snapshot(db) == before
