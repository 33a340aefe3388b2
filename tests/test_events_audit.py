"""Every write records its events in its own transaction; they are handed over after commit."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import (
    ADMIN_URL,
    USER_URL,
    RecordingPublisher,
    TokenFactory,
    auth,
    create_ticket,
)


class CommitCheckingPublisher(RecordingPublisher):
    """Records what it is handed and whether those rows were already committed at that moment."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.uncommitted: list[str] = []

    def publish_soon(self, event_ids: list[str]) -> None:
        with psycopg.connect(self.database_url) as conn:  # another session: sees only commits
            rows = conn.execute(
                "SELECT id FROM ticket_events WHERE id = ANY(%s)", (event_ids,)
            ).fetchall()
        self.uncommitted += sorted(set(event_ids) - {row[0] for row in rows})
        super().publish_soon(event_ids)


@pytest.fixture
def publisher(clean_db: str) -> CommitCheckingPublisher:
    """Replaces the shared fixture, so the ``client`` publishes into this one."""
    return CommitCheckingPublisher(clean_db)


class Ledger:
    """Reads ``ticket_events`` and checks each write against what the publisher was handed."""

    def __init__(self, db: psycopg.Connection[Any], publisher: CommitCheckingPublisher) -> None:
        self.db = db
        self.publisher = publisher
        self.seen: set[str] = set()
        self.handed_over = 0  # how much of ``publisher.published`` has been checked

    def rows(self) -> list[dict[str, Any]]:
        cursor = self.db.execute(
            "SELECT id, ticket_id, type, actor_id, actor_is_admin, payload, request_id,"
            " created_at, published_at FROM ticket_events ORDER BY created_at, type"
        )
        names = [column.name for column in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def new_events(self) -> list[dict[str, Any]]:
        """Events written since the last call; asserts they were published, once, after commit."""
        fresh = [row for row in self.rows() if row["id"] not in self.seen]
        self.seen |= {row["id"] for row in fresh}
        handed = self.publisher.published[self.handed_over :]
        self.handed_over = len(self.publisher.published)
        assert sorted(handed) == sorted(row["id"] for row in fresh)
        assert len(self.publisher.published) == len(set(self.publisher.published))
        assert self.publisher.uncommitted == []
        for row in fresh:
            assert row["published_at"] is None  # the recording publisher marks nothing
        return fresh


@pytest.fixture
def ledger(db: psycopg.Connection[Any], publisher: CommitCheckingPublisher) -> Ledger:
    return Ledger(db, publisher)


def only(events: list[dict[str, Any]], type_: str) -> dict[str, Any]:
    matching = [event for event in events if event["type"] == type_]
    assert len(matching) == 1, events
    return matching[0]


async def test_each_write_records_its_events(
    client: AsyncTestClient[Any],
    user: dict[str, str],
    admin: dict[str, str],
    ledger: Ledger,
    publisher: CommitCheckingPublisher,
    db: psycopg.Connection[Any],
) -> None:
    created = await client.post(
        USER_URL,
        json={"subject": "Payment", "body": "missing", "priority": "high"},
        headers={**user, "X-Request-ID": "req-create-1"},
    )
    assert created.status_code == 201
    ticket = created.json()
    ticket_id = ticket["id"]
    [event] = ledger.new_events()
    assert event["type"] == "ticket.created"
    assert event["ticket_id"] == ticket_id
    assert (event["actor_id"], event["actor_is_admin"]) == ("alice", False)
    assert event["payload"]["message_id"] == ticket["messages"][0]["id"]
    assert event["payload"]["priority"] == "high"
    assert event["request_id"] == "req-create-1" == created.headers["x-request-id"]
    ticket_row = db.execute("SELECT created_at FROM tickets WHERE id = %s", (ticket_id,))
    assert ticket_row.fetchone() == (event["created_at"],)  # one transaction, one moment

    reply = await client.post(f"{USER_URL}/{ticket_id}/messages", json={"body": "?"}, headers=user)
    [event] = ledger.new_events()
    assert event["type"] == "message.created"
    assert (event["actor_id"], event["actor_is_admin"]) == ("alice", False)
    assert event["payload"] == {"message_id": reply.json()["id"], "is_admin": False}

    answer = await client.post(
        f"{ADMIN_URL}/{ticket_id}/messages", json={"body": "on it"}, headers=admin
    )
    [event] = ledger.new_events()
    assert event["type"] == "message.created"
    assert (event["actor_id"], event["actor_is_admin"]) == ("agent-7", True)
    assert event["payload"] == {"message_id": answer.json()["id"], "is_admin": True}

    patched = await client.patch(
        f"{ADMIN_URL}/{ticket_id}",
        json={"status": "in_progress", "priority": "urgent", "assignee_id": "agent-7"},
        headers=admin,
    )
    assert patched.status_code == 200
    [event] = ledger.new_events()
    assert event["type"] == "ticket.updated"
    assert (event["actor_id"], event["actor_is_admin"]) == ("agent-7", True)
    assert event["payload"]["changes"] == {
        "status": {"old": "open", "new": "in_progress"},
        "priority": {"old": "high", "new": "urgent"},
        "assignee_id": {"old": None, "new": "agent-7"},
    }

    unassigned = await client.patch(
        f"{ADMIN_URL}/{ticket_id}", json={"assignee_id": None}, headers=admin
    )
    assert unassigned.status_code == 200
    [event] = ledger.new_events()
    assert event["payload"]["changes"] == {"assignee_id": {"old": "agent-7", "new": None}}

    # A PATCH that changes nothing records nothing.
    same = await client.patch(
        f"{ADMIN_URL}/{ticket_id}",
        json={"status": "in_progress", "priority": "urgent"},
        headers=admin,
    )
    assert same.status_code == 200
    assert ledger.new_events() == []

    closed = await client.post(f"{USER_URL}/{ticket_id}/close", headers=user)
    assert closed.status_code == 200
    [event] = ledger.new_events()
    assert event["type"] == "ticket.closed"
    assert (event["actor_id"], event["actor_is_admin"]) == ("alice", False)
    assert event["payload"]["reason"] == "user"
    assert event["payload"]["previous_status"] == "in_progress"

    every = ledger.rows()
    assert [e["type"] for e in every] == [
        "ticket.created",
        "message.created",
        "message.created",
        "ticket.updated",
        "ticket.updated",
        "ticket.closed",
    ]
    assert sorted(publisher.published) == sorted(e["id"] for e in every)


async def test_admin_close_and_reopen_events(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], ledger: Ledger
) -> None:
    ticket_id = (await create_ticket(client, user))["id"]
    ledger.new_events()
    await client.patch(f"{ADMIN_URL}/{ticket_id}", json={"status": "resolved"}, headers=admin)
    [resolved] = ledger.new_events()
    assert resolved["payload"]["changes"] == {"status": {"old": "open", "new": "resolved"}}

    # The user's reply to a resolved ticket: the message and the reopening, in one transaction.
    reply = await client.post(f"{USER_URL}/{ticket_id}/messages", json={"body": "no"}, headers=user)
    assert reply.status_code == 201
    events = ledger.new_events()
    assert sorted(e["type"] for e in events) == ["message.created", "ticket.updated"]
    reopened = only(events, "ticket.updated")
    assert reopened["payload"]["changes"] == {"status": {"old": "resolved", "new": "open"}}
    assert (reopened["actor_id"], reopened["actor_is_admin"]) == ("alice", False)
    assert len({e["created_at"] for e in events}) == 1

    # An admin closes with another change in the same request: the update, then the close.
    closed = await client.patch(
        f"{ADMIN_URL}/{ticket_id}", json={"status": "closed", "priority": "low"}, headers=admin
    )
    assert closed.status_code == 200
    events = ledger.new_events()
    assert sorted(e["type"] for e in events) == ["ticket.closed", "ticket.updated"]
    assert only(events, "ticket.updated")["payload"]["changes"] == {
        "priority": {"old": "normal", "new": "low"}
    }
    close = only(events, "ticket.closed")
    assert close["payload"]["reason"] == "admin"
    assert close["payload"]["previous_status"] == "open"
    assert (close["actor_id"], close["actor_is_admin"]) == ("agent-7", True)


async def test_failed_writes_leave_no_trace(
    client: AsyncTestClient[Any],
    user: dict[str, str],
    admin: dict[str, str],
    make_token: TokenFactory,
    ledger: Ledger,
    publisher: CommitCheckingPublisher,
    db: psycopg.Connection[Any],
) -> None:
    ticket_id = (await create_ticket(client, user))["id"]
    assert (await client.post(f"{USER_URL}/{ticket_id}/close", headers=user)).status_code == 200
    ledger.new_events()
    published = list(publisher.published)

    def counts() -> tuple[Any, ...]:
        return (
            db.execute("SELECT count(*) FROM messages").fetchone(),
            db.execute("SELECT count(*) FROM ticket_events").fetchone(),
            db.execute("SELECT status, priority, assignee_id, updated_at FROM tickets").fetchone(),
        )

    before = counts()
    bob = auth(make_token("bob"))
    failures: list[tuple[int, str, str, dict[str, str], Any]] = [
        (409, "POST", f"{USER_URL}/{ticket_id}/messages", user, {"body": "reopen?"}),
        (409, "POST", f"{USER_URL}/{ticket_id}/close", user, None),
        (409, "POST", f"{ADMIN_URL}/{ticket_id}/messages", admin, {"body": "hello"}),
        (409, "PATCH", f"{ADMIN_URL}/{ticket_id}", admin, {"status": "open", "priority": "high"}),
        (409, "PATCH", f"{ADMIN_URL}/{ticket_id}", admin, {"assignee_id": "agent-7"}),
        (404, "POST", f"{USER_URL}/{ticket_id}/messages", bob, {"body": "hi"}),
        (403, "PATCH", f"{ADMIN_URL}/{ticket_id}", user, {"status": "open"}),
        (400, "POST", USER_URL, user, {"subject": " ", "body": "b"}),
    ]
    for status, method, url, headers, payload in failures:
        response = await client.request(method, url, json=payload, headers=headers)
        assert response.status_code == status, (method, url, response.text)
        assert counts() == before, (method, url)
    assert ledger.new_events() == []
    assert publisher.published == published
