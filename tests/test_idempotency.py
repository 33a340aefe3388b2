"""Idempotency-Key on every POST: a repeat is answered from the first request and writes nothing;
another request with the same key is a 422; a repeat while the first runs waits or gets a 409."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.idempotency import IdempotencyKeys
from domain.settings import Settings
from tests.asgi_client import served_in_loop
from tests.conftest import ADMIN_URL, MISSING_ID, USER_URL, RecordingPublisher, create_ticket

HEADER = b"Idempotency-Key"
NEW_TICKET = {
    "subject": "Payment not received",
    "body": "My payout is missing.",
    "priority": "high",
}


@pytest.fixture
def keys_table(db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """``db``, and the keys table emptied afterwards (clean_db leaves it alone)."""
    yield db
    db.execute("TRUNCATE idempotency_keys")


@pytest.fixture
async def together(
    settings: Settings, publisher: RecordingPublisher
) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose gathered requests really run at the same time (tests/asgi_client.py)."""
    async with served_in_loop(create_app(settings, publisher=publisher)) as client:
        yield client


def new_key() -> str:
    return str(uuid.uuid4())


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def count(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_repeated_create_is_answered_again_and_writes_nothing(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    keys_table: psycopg.Connection[Any],
    publisher: RecordingPublisher,
) -> None:
    key = new_key()
    first = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers

    # Same body, other key order and spacing: the same request.
    again = await client.post(
        USER_URL,
        content=b'{"priority":"high",  "body":"My payout is missing.",'
        b' "subject":"Payment not received"}',
        headers={**keyed(alice, key), "content-type": "application/json"},
    )
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content

    assert count(keys_table, "tickets") == 1
    assert count(keys_table, "messages") == 1
    assert count(keys_table, "ticket_events") == 1
    assert len(publisher.published) == 1  # one event, so one set of notifications


async def test_the_same_key_with_another_body_is_a_422_and_writes_nothing(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    key = new_key()
    assert (await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))).is_success
    other = await client.post(
        USER_URL, json={**NEW_TICKET, "subject": "Another"}, headers=keyed(alice, key)
    )
    assert other.status_code == 422
    body = other.json()
    assert body["success"] is False
    assert body["error"]["code"] == "idempotency_key_reused"
    assert "POST /v1/support/tickets" in body["error"]["message"]
    assert count(keys_table, "tickets") == 1

    # Another endpoint with the same key is another request too.
    ticket_id = keys_table.execute("SELECT id FROM tickets").fetchone()[0]  # type: ignore[index]
    reply = await client.post(
        f"{USER_URL}/{ticket_id}/messages", json={"body": "hi"}, headers=keyed(alice, key)
    )
    assert reply.status_code == 422
    assert count(keys_table, "messages") == 1


async def test_keys_are_the_callers_own(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    bob: dict[str, str],
    keys_table: psycopg.Connection[Any],
) -> None:
    key = new_key()
    alices = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
    bobs = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(bob, key))
    assert alices.status_code == bobs.status_code == 201
    assert "idempotent-replayed" not in bobs.headers
    assert alices.json()["id"] != bobs.json()["id"]
    listed = (await client.get(USER_URL, headers=bob)).json()["data"]
    assert [t["id"] for t in listed] == [bobs.json()["id"]]
    assert count(keys_table, "tickets") == 2


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "must be 1-255 characters"),
        ("k" * 256, "must be 1-255 characters"),
        ("has space", "may only contain"),
        ("ünïcode", "may only contain"),
        ("semi;colon", "may only contain"),
    ],
)
async def test_a_malformed_key_is_a_400_that_says_what_a_key_may_be(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    keys_table: psycopg.Connection[Any],
    key: str,
    message: str,
) -> None:
    response = await client.post(
        USER_URL,
        json=NEW_TICKET,
        headers=[*((k.encode(), v.encode()) for k, v in alice.items()), (HEADER, key.encode())],
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "Idempotency-Key"
    assert message in error["message"]
    assert count(keys_table, "tickets") == 0


async def test_a_good_key_may_be_255_characters_of_the_allowed_set(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    key = ("Aa0-_.:~+/=" * 24)[:255]
    for _ in range(2):
        response = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
        assert response.status_code == 201
    assert count(keys_table, "tickets") == 1


async def test_every_post_replays(
    client: AsyncTestClient[Any],
    alice: dict[str, str],
    admin: dict[str, str],
    keys_table: psycopg.Connection[Any],
    publisher: RecordingPublisher,
) -> None:
    ticket_id = (await create_ticket(client, alice))["id"]
    cases = [
        (f"{USER_URL}/{ticket_id}/messages", {"body": "more detail"}, alice, 201),
        (f"{ADMIN_URL}/{ticket_id}/messages", {"body": "looking into it"}, admin, 201),
        (f"{USER_URL}/{ticket_id}/close", None, alice, 200),
    ]
    for url, body, headers, status in cases:
        key = new_key()
        published = len(publisher.published)
        first = await client.post(url, json=body, headers=keyed(headers, key))
        again = await client.post(url, json=body, headers=keyed(headers, key))
        assert first.status_code == again.status_code == status, (url, first.text, again.text)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert len(publisher.published) == published + 1, url  # the repeat published nothing
    assert count(keys_table, "messages") == 3
    assert count(keys_table, "ticket_events") == 4  # created, two replies, closed


async def test_a_failed_request_keeps_no_key(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    key = new_key()
    missing = await client.post(
        f"{USER_URL}/{MISSING_ID}/messages", json={"body": "hi"}, headers=keyed(alice, key)
    )
    assert missing.status_code == 404
    assert count(keys_table, "idempotency_keys") == 0
    # So the key can go with the request the client meant (here: to a real ticket).
    ticket_id = (await create_ticket(client, alice))["id"]
    reply = await client.post(
        f"{USER_URL}/{ticket_id}/messages", json={"body": "hi"}, headers=keyed(alice, key)
    )
    assert reply.status_code == 201


async def test_without_a_key_nothing_is_kept(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    await create_ticket(client, alice)
    await create_ticket(client, alice)
    assert count(keys_table, "tickets") == 2
    assert count(keys_table, "idempotency_keys") == 0


async def test_twenty_identical_requests_at_once_make_one_ticket_and_one_event(
    together: httpx.AsyncClient,
    alice: dict[str, str],
    keys_table: psycopg.Connection[Any],
    publisher: RecordingPublisher,
) -> None:
    headers = keyed(alice, new_key())
    responses = await asyncio.gather(
        *(together.post(USER_URL, json=NEW_TICKET, headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1  # every one got the same ticket
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 19
    assert count(keys_table, "tickets") == 1
    assert count(keys_table, "ticket_events") == 1
    assert len(publisher.published) == 1


async def test_twenty_identical_replies_at_once_make_one_message(
    together: httpx.AsyncClient,
    alice: dict[str, str],
    admin: dict[str, str],
    keys_table: psycopg.Connection[Any],
) -> None:
    created = await together.post(USER_URL, json=NEW_TICKET, headers=alice)
    ticket_id = created.json()["id"]
    headers = keyed(admin, new_key())
    url = f"{ADMIN_URL}/{ticket_id}/messages"
    responses = await asyncio.gather(
        *(together.post(url, json={"body": "on it"}, headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert count(keys_table, "messages") == 2
    assert count(keys_table, "ticket_events") == 2


def hold_key(url: str, user_id: str, key: str) -> psycopg.Connection[Any]:
    """A transaction that claimed ``key`` and has not finished (as a request still running)."""
    conn = psycopg.connect(url)
    conn.execute(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, request_path, created_at)"
        " VALUES (%s, %s, 'x', 'POST /v1/support/tickets', now())",
        (user_id, key),
    )
    return conn


async def test_a_repeat_while_the_first_runs_waits_for_it(
    together: httpx.AsyncClient, alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    key = new_key()
    holder = hold_key(str(keys_table.info.dsn), "alice", key)
    try:
        request = asyncio.create_task(
            together.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
        )
        await asyncio.sleep(0.5)
        assert not request.done()  # waiting for the first
        holder.rollback()  # the first failed: it kept no key, so this one runs
        response = await asyncio.wait_for(request, 10)
    finally:
        holder.close()
    assert response.status_code == 201, response.text
    assert count(keys_table, "tickets") == 1


async def test_a_repeat_that_waits_too_long_is_a_409_and_writes_nothing(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    keys: IdempotencyKeys = client.app.state.idempotency_keys
    keys.lock_timeout_s = 0.3
    key = new_key()
    holder = hold_key(str(keys_table.info.dsn), "alice", key)
    try:
        response = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
    finally:
        holder.rollback()
        holder.close()
    assert response.status_code == 409, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert count(keys_table, "tickets") == 0


async def test_a_key_is_kept_24_hours_then_may_be_used_again(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    key = new_key()
    first = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
    keys_table.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes'"
    )
    replayed = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
    assert replayed.headers["idempotent-replayed"] == "true"

    keys_table.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    later = await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, key))
    assert later.status_code == 201
    assert "idempotent-replayed" not in later.headers
    assert later.json()["id"] != first.json()["id"]
    assert count(keys_table, "tickets") == 2


async def test_each_new_key_deletes_expired_ones(
    client: AsyncTestClient[Any], alice: dict[str, str], keys_table: psycopg.Connection[Any]
) -> None:
    keys_table.execute(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, request_path, created_at,"
        " status_code, response_body)"
        " SELECT 'someone-' || i, 'k', 'x', 'POST /', now() - interval '2 days', 201, '{}'"
        " FROM generate_series(1, 25) AS i"
    )
    for _ in range(3):
        await client.post(USER_URL, json=NEW_TICKET, headers=keyed(alice, new_key()))
    left = keys_table.execute(
        "SELECT count(*) FROM idempotency_keys WHERE user_id LIKE 'someone-%'"
    ).fetchone()
    assert left == (0,)
    assert count(keys_table, "idempotency_keys") == 3
