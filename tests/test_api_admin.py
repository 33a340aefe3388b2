"""The support team's endpoints: list with filters, one ticket, PATCH and replies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar.testing import AsyncTestClient

from domain.lifecycle import Status
from domain.settings import Settings
from tests.conftest import ADMIN_URL, ULID, USER_URL, Clock, create_ticket, iso

SUMMARY_KEYS = {"id", "subject", "status", "priority", "category", "assignee_id", "created_at"}
SUMMARY_KEYS |= {"updated_at", "user_id", "sla_due_at", "sla_breached", "sla_breached_at"}
SUMMARY_KEYS |= {"first_response_at"}
TICKET_KEYS = SUMMARY_KEYS | {"messages", "sla"}  # sla: each SLA target's clock (admin only)
USER_TICKET_KEYS = {"id", "subject", "status", "priority", "category", "assignee_id"}
USER_TICKET_KEYS |= {"created_at", "updated_at", "messages"}


async def test_list_shows_every_users_tickets_newest_first(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
    clock: Clock,
) -> None:
    owners = []
    for i, headers in enumerate([alice, bob, alice]):
        clock.advance(minutes=1)
        ticket = await create_ticket(
            client, headers, subject=f"t{i}", priority="urgent" if i else "low"
        )
        owners.append((ticket["id"], "bob" if headers is bob else "alice"))

    response = await client.get(ADMIN_URL, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "data", "pagination"}
    assert body["success"] is True
    assert body["pagination"] == {"page": 1, "per_page": 20, "total": 3, "total_pages": 1}
    assert [(t["id"], t["user_id"]) for t in body["data"]] == owners[::-1]
    for item in body["data"]:
        assert set(item) == SUMMARY_KEYS  # no messages in a list
        one = (await client.get(f"{ADMIN_URL}/{item['id']}", headers=admin)).json()
        assert item == {k: v for k, v in one.items() if k not in {"messages", "sla"}}


async def test_status_filter(
    client: AsyncTestClient[Any], alice: dict[str, str], admin: dict[str, str]
) -> None:
    by_status: dict[str, str] = {}
    for status in Status:
        ticket_id = (await create_ticket(client, alice))["id"]
        if status is not Status.OPEN:
            moved = await client.patch(
                f"{ADMIN_URL}/{ticket_id}", json={"status": status.value}, headers=admin
            )
            assert moved.status_code == 200, moved.text
        by_status[status.value] = ticket_id
    for wanted, ticket_id in by_status.items():
        body = (await client.get(f"{ADMIN_URL}?status={wanted}", headers=admin)).json()
        assert [t["id"] for t in body["data"]] == [ticket_id], wanted
        assert body["data"][0]["status"] == wanted
        assert body["pagination"]["total"] == 1
    everything = (await client.get(ADMIN_URL, headers=admin)).json()
    assert {t["id"] for t in everything["data"]} == set(by_status.values())


async def test_get_one_ticket_with_messages(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    admin: dict[str, str],
    clock: Clock,
    settings: Settings,
) -> None:
    created = await create_ticket(client, alice, subject="Login fails", category="account")
    at = clock.advance(minutes=10)
    reply = await client.post(
        f"{ADMIN_URL}/{created['id']}/messages", json={"body": "try again"}, headers=admin
    )
    response = await client.get(f"{ADMIN_URL}/{created['id']}", headers=admin)
    assert response.status_code == 200, response.text
    ticket = response.json()
    assert set(ticket) == TICKET_KEYS
    assert ticket == {
        **{k: v for k, v in created.items() if k != "messages"},
        "updated_at": at,
        "user_id": "alice",
        "sla_due_at": None,  # not urgent: no first-response clock
        "sla_breached": False,
        "sla_breached_at": None,
        "first_response_at": at,  # the agent's reply above
        "messages": [created["messages"][0], reply.json()],
        "sla": [],  # not urgent: no clock under the default policy
    }

    urgent = await create_ticket(client, alice, priority="urgent")
    staff_view = (await client.get(f"{ADMIN_URL}/{urgent['id']}", headers=admin)).json()
    due = clock.now + timedelta(seconds=settings.sla_urgent_seconds)
    assert staff_view["sla_due_at"] == iso(due)
    assert staff_view["sla_breached"] is False


async def test_patch_status_priority_and_assignee(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    admin: dict[str, str],
    clock: Clock,
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    at = clock.advance(minutes=1)
    response = await client.patch(
        f"{ADMIN_URL}/{ticket_id}",
        json={"status": "in_progress", "priority": "urgent", "assignee_id": "agent-7"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    ticket = response.json()
    assert set(ticket) == TICKET_KEYS
    assert (ticket["status"], ticket["priority"], ticket["assignee_id"]) == (
        "in_progress",
        "urgent",
        "agent-7",
    )
    assert ticket["updated_at"] == at
    assert ticket == (await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)).json()

    # The owner sees the new status, priority and who is working on it.
    mine = (await client.get(f"{USER_URL}/{ticket_id}", headers=alice)).json()
    assert set(mine) == USER_TICKET_KEYS
    assert (mine["status"], mine["priority"], mine["assignee_id"]) == (
        "in_progress",
        "urgent",
        "agent-7",
    )

    # Leaving assignee_id out leaves it alone.
    kept = await client.patch(f"{ADMIN_URL}/{ticket_id}", json={"priority": "low"}, headers=admin)
    assert (kept.json()["priority"], kept.json()["assignee_id"]) == ("low", "agent-7")
    kept = await client.patch(f"{ADMIN_URL}/{ticket_id}", json={"status": "open"}, headers=admin)
    assert (kept.json()["status"], kept.json()["assignee_id"]) == ("open", "agent-7")

    # Reassigning, then null unassigns.
    other = await client.patch(
        f"{ADMIN_URL}/{ticket_id}", json={"assignee_id": "agent-9"}, headers=admin
    )
    assert other.json()["assignee_id"] == "agent-9"
    cleared = await client.patch(
        f"{ADMIN_URL}/{ticket_id}", json={"assignee_id": None}, headers=admin
    )
    assert cleared.status_code == 200
    assert cleared.json()["assignee_id"] is None
    assert (cleared.json()["status"], cleared.json()["priority"]) == ("open", "low")
    listed = (await client.get(USER_URL, headers=alice)).json()["data"][0]
    assert listed["assignee_id"] is None


async def test_patch_with_no_fields_changes_nothing(
    client: AsyncTestClient[Any], alice: dict[str, str], admin: dict[str, str]
) -> None:
    ticket_id = (await create_ticket(client, alice, priority="high"))["id"]
    before = (await client.get(f"{ADMIN_URL}/{ticket_id}", headers=admin)).json()
    response = await client.patch(f"{ADMIN_URL}/{ticket_id}", json={}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json() == before


async def test_admin_reply_is_marked_as_admin(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    admin: dict[str, str],
    clock: Clock,
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    at = clock.advance(minutes=4)
    response = await client.post(
        f"{ADMIN_URL}/{ticket_id}/messages", json={"body": "We refunded you."}, headers=admin
    )
    assert response.status_code == 201, response.text
    message = response.json()
    assert set(message) == {"id", "body", "is_admin", "created_at"}
    assert ULID.match(message["id"])
    assert (message["body"], message["is_admin"], message["created_at"]) == (
        "We refunded you.",
        True,
        at,
    )
    for url, headers in [(USER_URL, alice), (ADMIN_URL, admin)]:
        messages = (await client.get(f"{url}/{ticket_id}", headers=headers)).json()["messages"]
        assert [m["is_admin"] for m in messages] == [False, True]
        assert messages[1] == message
