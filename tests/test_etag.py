"""ETags: a ticket's GET sends one that changes with every change; If-None-Match answers 304;
PATCH and the admin reply honour If-Match (412 with the current state), checked under the lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import Settings
from tests.asgi_client import served_in_loop
from tests.conftest import ADMIN_URL, MISSING_ID, USER_URL, RecordingPublisher, auth, create_ticket
from tests.tokens import TokenFactory


@pytest.fixture
async def together(
    settings: Settings, publisher: RecordingPublisher
) -> AsyncIterator[httpx.AsyncClient]:
    async with served_in_loop(create_app(settings, publisher=publisher)) as client:
        yield client


@pytest.fixture
def agents(make_token: TokenFactory) -> tuple[dict[str, str], dict[str, str]]:
    return auth(make_token("agent-1", admin=True)), auth(make_token("agent-2", admin=True))


async def etag_of(client: Any, url: str, headers: dict[str, str]) -> str:
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    tag: str = response.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"') and len(tag) > 2
    return tag


async def test_the_etag_changes_with_every_change_to_the_ticket(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    admin: dict[str, str],
    db: psycopg.Connection[Any],
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    url = f"{ADMIN_URL}/{ticket_id}"
    seen = [await etag_of(client, url, admin)]
    assert await etag_of(client, url, admin) == seen[0]  # reading changes nothing

    changes = [
        lambda: client.patch(url, json={"status": "in_progress"}, headers=admin),
        lambda: client.patch(url, json={"priority": "urgent"}, headers=admin),
        lambda: client.patch(url, json={"assignee_id": "agent-7"}, headers=admin),
        lambda: client.post(f"{url}/messages", json={"body": "on it"}, headers=admin),
        lambda: client.post(
            f"{USER_URL}/{ticket_id}/messages", json={"body": "thanks"}, headers=alice
        ),
    ]
    for change in changes:
        response = await change()
        assert response.is_success, response.text
        seen.append(await etag_of(client, url, admin))
    # A timer's bulk UPDATE (the SLA sweep) changes it too.
    db.execute("UPDATE tickets SET sla_breached_at = now() WHERE id = %s", (ticket_id,))
    seen.append(await etag_of(client, url, admin))
    assert len(set(seen)) == len(seen), seen

    # A change that changes nothing leaves it alone.
    same = await client.patch(url, json={"priority": "urgent"}, headers=admin)
    assert same.headers["etag"] == seen[-1]


async def test_the_owner_gets_an_etag_and_a_304(
    client: AsyncTestClient[Any], alice: dict[str, str], bob: dict[str, str]
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    url = f"{USER_URL}/{ticket_id}"
    tag = await etag_of(client, url, alice)

    unchanged = await client.get(url, headers={**alice, "If-None-Match": tag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == tag
    for header in ["W/" + tag, f'"other", {tag}', "*"]:
        again = await client.get(url, headers={**alice, "If-None-Match": header})
        assert again.status_code == 304, header

    stale = await client.get(url, headers={**alice, "If-None-Match": '"other"'})
    assert stale.status_code == 200
    assert stale.json()["id"] == ticket_id

    await client.post(f"{url}/messages", json={"body": "more"}, headers=alice)
    changed = await client.get(url, headers={**alice, "If-None-Match": tag})
    assert changed.status_code == 200
    assert len(changed.json()["messages"]) == 2
    assert changed.headers["etag"] != tag

    # Another user's ticket stays a 404, whatever they send.
    hidden = await client.get(url, headers={**bob, "If-None-Match": "*"})
    assert hidden.status_code == 404


async def test_a_patch_with_a_stale_if_match_is_a_412_with_the_current_state(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    agents: tuple[dict[str, str], dict[str, str]],
    publisher: RecordingPublisher,
) -> None:
    first, second = agents
    ticket_id = (await create_ticket(client, alice))["id"]
    url = f"{ADMIN_URL}/{ticket_id}"
    tag = await etag_of(client, url, first)
    assert await etag_of(client, url, second) == tag

    taken = await client.patch(
        url, json={"assignee_id": "agent-1"}, headers={**first, "If-Match": tag}
    )
    assert taken.status_code == 200, taken.text
    new_tag = taken.headers["etag"]
    assert new_tag != tag
    assert new_tag == await etag_of(client, url, first)
    published = len(publisher.published)

    late = await client.patch(
        url, json={"assignee_id": "agent-2"}, headers={**second, "If-Match": tag}
    )
    assert late.status_code == 412, late.text
    body = late.json()
    assert body["success"] is False
    assert body["error"]["code"] == "precondition_failed"
    assert body["ticket"]["assignee_id"] == "agent-1"  # what the first agent did
    assert [m["body"] for m in body["ticket"]["messages"]] == ["b"]
    assert late.headers["etag"] == new_tag
    assert len(publisher.published) == published  # nothing written

    retried = await client.patch(
        url, json={"assignee_id": "agent-2"}, headers={**second, "If-Match": late.headers["etag"]}
    )
    assert retried.status_code == 200
    assert retried.json()["assignee_id"] == "agent-2"


async def test_if_match_forms(
    client: AsyncTestClient[Any], alice: dict[str, str], admin: dict[str, str]
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    url = f"{ADMIN_URL}/{ticket_id}"
    tag = await etag_of(client, url, admin)
    weak = await client.patch(
        url, json={"priority": "high"}, headers={**admin, "If-Match": f"W/{tag}"}
    )
    assert weak.status_code == 412  # If-Match compares strongly
    listed = await client.patch(
        url, json={"priority": "high"}, headers={**admin, "If-Match": f'"nope", {tag}'}
    )
    assert listed.status_code == 200
    anything = await client.patch(url, json={"priority": "low"}, headers={**admin, "If-Match": "*"})
    assert anything.status_code == 200
    without = await client.patch(url, json={"priority": "normal"}, headers=admin)
    assert without.status_code == 200  # as before: no condition, no check
    missing = await client.patch(
        f"{ADMIN_URL}/{MISSING_ID}", json={"priority": "low"}, headers={**admin, "If-Match": "*"}
    )
    assert missing.status_code == 404


async def test_an_admin_reply_with_a_stale_if_match_writes_nothing(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    admin: dict[str, str],
    db: psycopg.Connection[Any],
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    url = f"{ADMIN_URL}/{ticket_id}"
    tag = await etag_of(client, url, admin)
    await client.post(f"{USER_URL}/{ticket_id}/messages", json={"body": "any news?"}, headers=alice)

    reply = await client.post(
        f"{url}/messages", json={"body": "fixed"}, headers={**admin, "If-Match": tag}
    )
    assert reply.status_code == 412
    current = reply.json()["ticket"]
    assert [m["body"] for m in current["messages"]] == ["b", "any news?"]
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (2,)

    fresh = await client.post(
        f"{url}/messages",
        json={"body": "fixed"},
        headers={**admin, "If-Match": reply.headers["etag"]},
    )
    assert fresh.status_code == 201


async def test_two_agents_racing_with_the_same_etag_one_wins(
    together: httpx.AsyncClient,
    alice: dict[str, str],
    agents: tuple[dict[str, str], dict[str, str]],
    db: psycopg.Connection[Any],
) -> None:
    created = await together.post(USER_URL, json={"subject": "s", "body": "b"}, headers=alice)
    ticket_id = created.json()["id"]
    url = f"{ADMIN_URL}/{ticket_id}"
    for round_ in range(5):
        tag = await etag_of(together, url, agents[0])
        results = await asyncio.gather(
            *(
                together.patch(
                    url,
                    json={"assignee_id": f"agent-{i + 1}-{round_}"},
                    headers={**h, "If-Match": tag},
                )
                for i, h in enumerate(agents)
            ),
            *(
                together.post(
                    f"{url}/messages",
                    json={"body": f"r{round_}-{i}"},
                    headers={**h, "If-Match": tag},
                )
                for i, h in enumerate(agents)
            ),
        )
        statuses = sorted(r.status_code for r in results)
        # Exactly one of the four changes applied; the others saw it and changed nothing.
        assert statuses.count(412) == 3, [r.text for r in results]
        assert len([s for s in statuses if s in (200, 201)]) == 1
        winner = next(r for r in results if r.status_code in (200, 201))
        for loser in (r for r in results if r.status_code == 412):
            current = loser.json()["ticket"]
            if winner.status_code == 200:
                assert current["assignee_id"] == winner.json()["assignee_id"]
            else:
                assert current["messages"][-1]["id"] == winner.json()["id"]
    updates = db.execute(
        "SELECT count(*) FROM ticket_events WHERE type IN ('ticket.updated', 'message.created')"
    ).fetchone()
    assert updates is not None and updates[0] <= 5
