"""The status state machine: the whole transition table, then the same rules through the API."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from domain.errors import InvalidTransition, TicketClosed
from domain.lifecycle import TRANSITIONS, Status, Trigger, can_transition, check_transition
from tests.conftest import ADMIN_URL, USER_URL, TokenFactory, auth, create_ticket

ACTIVE = [Status.OPEN, Status.IN_PROGRESS, Status.RESOLVED]


def expected_allowed(trigger: Trigger, current: Status, requested: Status) -> bool:
    """The lifecycle rules as the product states them, written independently of the table."""
    if current is Status.CLOSED:
        return False  # closed is final, for everyone
    if trigger is Trigger.ADMIN:
        return requested is not current  # admins move between active statuses and may close
    if trigger is Trigger.OWNER_CLOSE:
        return requested is Status.CLOSED  # the owner closes from any active status
    if trigger is Trigger.USER_REPLY:
        return current is Status.RESOLVED and requested is Status.OPEN  # a reply reopens
    if trigger is Trigger.AUTO_CLOSE:
        return current is Status.RESOLVED and requested is Status.CLOSED
    raise AssertionError(f"a trigger without a rule: {trigger}")


def test_table_has_a_row_for_every_trigger_and_status() -> None:
    assert set(TRANSITIONS) == set(Trigger)
    for trigger in Trigger:
        assert set(TRANSITIONS[trigger]) == set(Status), trigger


@pytest.mark.parametrize(
    ("trigger", "current", "requested"), list(itertools.product(Trigger, Status, Status))
)
def test_every_transition(trigger: Trigger, current: Status, requested: Status) -> None:
    allowed = expected_allowed(trigger, current, requested)
    assert can_transition(trigger, current, requested) is allowed
    if allowed:
        check_transition(trigger, current, requested)  # does not raise
    elif current is Status.CLOSED:
        with pytest.raises(TicketClosed) as closed:
            check_transition(trigger, current, requested)
        if requested is not Status.CLOSED:
            assert "'closed'" in str(closed.value)
            assert f"'{requested.value}'" in str(closed.value)
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition(trigger, current, requested)
        assert f"'{current.value}'" in str(info.value)
        assert f"'{requested.value}'" in str(info.value)
        assert (info.value.current, info.value.requested) == (current.value, requested.value)


# -- through the API ------------------------------------------------------------------------------


async def _ticket_in(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], status: Status
) -> str:
    ticket_id: str = (await create_ticket(client, user))["id"]
    if status is Status.CLOSED:
        closed = await client.post(f"{USER_URL}/{ticket_id}/close", headers=user)
        assert closed.status_code == 200, closed.text
    elif status is not Status.OPEN:
        moved = await client.patch(
            f"{ADMIN_URL}/{ticket_id}", json={"status": status.value}, headers=admin
        )
        assert moved.status_code == 200, moved.text
    return ticket_id


async def _status(client: AsyncTestClient[Any], ticket_id: str, admin: dict[str, str]) -> str:
    got = await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)
    assert got.status_code == 200, got.text
    status: str = got.json()["status"]
    return status


# This file's own callers (override conftest's ``user`` and ``admin``, alice and agent-7).
@pytest.fixture
def user(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("owner-1"))


@pytest.fixture
def admin(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("agent-1", admin=True))


async def test_owner_closes_from_any_active_status(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    for status in ACTIVE:
        ticket_id = await _ticket_in(client, user, admin, status)
        closed = await client.post(f"{USER_URL}/{ticket_id}/close", headers=user)
        assert closed.status_code == 200, (status, closed.text)
        assert closed.json()["status"] == "closed"
        assert await _status(client, ticket_id, admin) == "closed"


async def test_admin_moves_between_any_statuses_until_closed(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    for current, requested in itertools.product(ACTIVE, Status):
        ticket_id = await _ticket_in(client, user, admin, current)
        patched = await client.patch(
            f"{ADMIN_URL}/{ticket_id}", json={"status": requested.value}, headers=admin
        )
        assert patched.status_code == 200, (current, requested, patched.text)
        assert patched.json()["status"] == requested.value
        assert await _status(client, ticket_id, admin) == requested.value


async def test_closed_is_final(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    ticket_id = await _ticket_in(client, user, admin, Status.CLOSED)
    attempts = [
        client.post(f"{USER_URL}/{ticket_id}/messages", json={"body": "hello?"}, headers=user),
        client.post(f"{USER_URL}/{ticket_id}/close", headers=user),
        client.post(f"{ADMIN_URL}/{ticket_id}/messages", json={"body": "hi"}, headers=admin),
        client.patch(f"{ADMIN_URL}/{ticket_id}", json={"priority": "urgent"}, headers=admin),
        client.patch(f"{ADMIN_URL}/{ticket_id}", json={"assignee_id": "agent-1"}, headers=admin),
        client.patch(f"{ADMIN_URL}/{ticket_id}", json={"status": "closed"}, headers=admin),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["success"] is False
        assert body["error"]["code"] == "ticket_closed"
        assert "closed" in body["error"]["message"]
    got = await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)
    ticket = got.json()
    assert ticket["status"] == "closed"
    assert ticket["priority"] == "normal"
    assert ticket["assignee_id"] is None
    assert len(ticket["messages"]) == 1


async def test_invalid_transition_names_current_and_requested_status(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    ticket_id = await _ticket_in(client, user, admin, Status.CLOSED)
    for requested in ACTIVE:
        response = await client.patch(
            f"{ADMIN_URL}/{ticket_id}", json={"status": requested.value}, headers=admin
        )
        assert response.status_code == 409, response.text
        message = response.json()["error"]["message"]
        assert "'closed'" in message, message
        assert f"'{requested.value}'" in message, message
    assert await _status(client, ticket_id, admin) == "closed"


async def test_user_reply_to_resolved_ticket_reopens_it(
    client: AsyncTestClient[Any],
    user: dict[str, str],
    admin: dict[str, str],
    db: psycopg.Connection[Any],
) -> None:
    ticket_id = await _ticket_in(client, user, admin, Status.RESOLVED)
    resolved_at = db.execute("SELECT resolved_at FROM tickets WHERE id = %s", (ticket_id,))
    assert resolved_at.fetchone() != (None,)  # the auto-close clock is running

    reply = await client.post(
        f"{USER_URL}/{ticket_id}/messages", json={"body": "still broken"}, headers=user
    )
    assert reply.status_code == 201, reply.text
    assert await _status(client, ticket_id, admin) == "open"
    row = db.execute("SELECT resolved_at FROM tickets WHERE id = %s", (ticket_id,)).fetchone()
    assert row == (None,)  # reopening stops the auto-close clock


async def test_user_reply_to_unresolved_ticket_keeps_status(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    for status in (Status.OPEN, Status.IN_PROGRESS):
        ticket_id = await _ticket_in(client, user, admin, status)
        reply = await client.post(
            f"{USER_URL}/{ticket_id}/messages", json={"body": "hi"}, headers=user
        )
        assert reply.status_code == 201, reply.text
        assert await _status(client, ticket_id, admin) == status.value


async def test_admin_reply_does_not_change_status(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    ticket_id = await _ticket_in(client, user, admin, Status.RESOLVED)
    reply = await client.post(
        f"{ADMIN_URL}/{ticket_id}/messages", json={"body": "ok"}, headers=admin
    )
    assert reply.status_code == 201, reply.text
    assert await _status(client, ticket_id, admin) == "resolved"


async def test_reopened_urgent_ticket_is_back_on_the_sla_clock(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    """Resolved without an admin reply, then reopened by the user: the first-response SLA
    applies again, with a fresh deadline."""
    created = await client.post(
        USER_URL, json={"subject": "down", "body": "all down", "priority": "urgent"}, headers=user
    )
    ticket_id = created.json()["id"]
    assert (await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)).json()["sla_due_at"]
    resolved = await client.patch(
        f"{ADMIN_URL}/{ticket_id}", json={"status": "resolved"}, headers=admin
    )
    assert resolved.json()["sla_due_at"] is None  # off the clock while resolved

    before = datetime.now(UTC).replace(microsecond=0)
    reply = await client.post(f"{USER_URL}/{ticket_id}/messages", json={"body": "no"}, headers=user)
    assert reply.status_code == 201
    ticket = (await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)).json()
    assert ticket["status"] == "open"
    assert ticket["sla_due_at"] is not None
    due = datetime.strptime(ticket["sla_due_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert due >= before + timedelta(seconds=3600)
