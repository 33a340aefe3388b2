"""The webhook endpoints' API: register (the secret shown once), list, get, change, delete, rotate
the secret with a grace period; validation and the addresses refused without
WEBHOOK_ALLOW_PRIVATE; admins only."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import Settings
from tests.conftest import MISSING_ID, ULID, RecordingPublisher, TokenFactory, auth

WEBHOOKS_URL = "/v1/admin/support/webhooks"
# A public address, written as a literal so no DNS is needed; no test sends anything to it.
PUBLIC_URL = "https://8.8.8.8/hooks/helpdesk"
ENDPOINT_KEYS = {"id", "url", "event_types", "enabled", "failing_since", "disabled_reason"}
ENDPOINT_KEYS |= {"previous_secret_expires_at", "created_at", "updated_at"}


@pytest.fixture(autouse=True)
def clean_webhooks(database_url: str) -> Iterator[None]:
    yield
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE webhook_endpoints")


async def register(
    client: AsyncTestClient[Any], headers: dict[str, str], **fields: Any
) -> dict[str, Any]:
    body = {"url": PUBLIC_URL, "event_types": ["ticket.created"], **fields}
    response = await client.post(WEBHOOKS_URL, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_registering_shows_the_secret_once(
    client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    response = await client.post(
        WEBHOOKS_URL,
        json={"url": PUBLIC_URL, "event_types": ["ticket.created", "message.created"]},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    assert "no-store" in response.headers["cache-control"]
    created = response.json()
    assert set(created) == ENDPOINT_KEYS | {"secret"}
    assert ULID.match(created["id"])
    assert created["url"] == PUBLIC_URL
    assert created["event_types"] == ["ticket.created", "message.created"]
    assert created["enabled"] is True
    assert created["failing_since"] is None and created["disabled_reason"] is None
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32

    one = await client.get(f"{WEBHOOKS_URL}/{created['id']}", headers=admin)
    assert one.status_code == 200
    assert set(one.json()) == ENDPOINT_KEYS
    listed = await client.get(WEBHOOKS_URL, headers=admin)
    assert listed.status_code == 200
    assert "whsec_" not in listed.text and "whsec_" not in one.text


async def test_the_list_is_paginated_newest_first(
    client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    ids = [(await register(client, admin))["id"] for _ in range(3)]
    first = (await client.get(WEBHOOKS_URL, params={"per_page": 2}, headers=admin)).json()
    assert [e["id"] for e in first["data"]] == [ids[2], ids[1]]
    assert first["success"] is True
    assert first["pagination"] == {"page": 1, "per_page": 2, "total": 3, "total_pages": 2}
    second = (
        await client.get(WEBHOOKS_URL, params={"per_page": 2, "page": 2}, headers=admin)
    ).json()
    assert [e["id"] for e in second["data"]] == [ids[0]]
    beyond = (
        await client.get(WEBHOOKS_URL, params={"per_page": 2, "page": 9}, headers=admin)
    ).json()
    assert beyond["data"] == [] and beyond["pagination"]["total"] == 3


async def test_change_the_url_the_events_and_enabled(
    client: AsyncTestClient[Any], admin: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    created = await register(client, admin)
    url = f"{WEBHOOKS_URL}/{created['id']}"
    response = await client.patch(
        url,
        json={"url": "https://1.1.1.1/other", "event_types": ["ticket.closed"], "enabled": False},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["url"], changed["event_types"], changed["enabled"]) == (
        "https://1.1.1.1/other",
        ["ticket.closed"],
        False,
    )
    assert "secret" not in changed
    # As the service leaves an endpoint it disabled: enabling it again clears the failure.
    db.execute(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '2 days',"
        " disabled_reason = 'failing since ...' WHERE id = %s",
        (created["id"],),
    )
    again = (await client.patch(url, json={"enabled": True}, headers=admin)).json()
    assert again["enabled"] is True
    assert again["failing_since"] is None and again["disabled_reason"] is None
    assert again["url"] == "https://1.1.1.1/other"  # fields left out are left alone
    empty = await client.patch(url, json={}, headers=admin)
    assert empty.status_code == 200


async def test_delete(client: AsyncTestClient[Any], admin: dict[str, str]) -> None:
    created = await register(client, admin)
    url = f"{WEBHOOKS_URL}/{created['id']}"
    assert (await client.delete(url, headers=admin)).status_code == 204
    assert (await client.get(url, headers=admin)).status_code == 404
    assert (await client.delete(url, headers=admin)).status_code == 404
    for missing in (MISSING_ID, "not-an-id"):
        response = await client.get(f"{WEBHOOKS_URL}/{missing}", headers=admin)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "webhook endpoint not found"
        assert (
            await client.patch(f"{WEBHOOKS_URL}/{missing}", json={}, headers=admin)
        ).status_code == 404
        assert (
            await client.post(f"{WEBHOOKS_URL}/{missing}/rotate-secret", headers=admin)
        ).status_code == 404


async def test_rotation_shows_the_new_secret_once_and_keeps_the_old_one_for_the_grace(
    client: AsyncTestClient[Any], admin: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    created = await register(client, admin)
    before = datetime.now(UTC)
    response = await client.post(f"{WEBHOOKS_URL}/{created['id']}/rotate-secret", headers=admin)
    assert response.status_code == 200, response.text
    assert "no-store" in response.headers["cache-control"]
    rotated = response.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + timedelta(hours=24) - timedelta(seconds=5) <= expires
    assert expires <= datetime.now(UTC) + timedelta(hours=24)
    stored = db.execute(
        "SELECT secret, previous_secret FROM webhook_endpoints WHERE id = %s", (created["id"],)
    ).fetchone()
    assert stored == (rotated["secret"], created["secret"])
    one = await client.get(f"{WEBHOOKS_URL}/{created['id']}", headers=admin)
    assert "whsec_" not in one.text


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"url": PUBLIC_URL, "event_types": ["ticket.exploded"]}, "event_types", "unknown type"),
        ({"url": PUBLIC_URL, "event_types": ["webhook.disabled"]}, "event_types", "unknown"),
        ({"url": PUBLIC_URL, "event_types": []}, "event_types", "length"),
        ({"url": PUBLIC_URL}, "event_types", "event_types"),
        ({"event_types": ["ticket.created"]}, "url", "url"),
        ({"url": "ftp://8.8.8.8/x", "event_types": ["ticket.created"]}, "url", "http or https"),
        ({"url": "http://8.8.8.8/x", "event_types": ["ticket.created"]}, "url", "https"),
        ({"url": "https://u:p@8.8.8.8/", "event_types": ["ticket.created"]}, "url", "credentials"),
        ({"url": "not a url", "event_types": ["ticket.created"]}, "url", "URL"),
        ({"url": PUBLIC_URL, "event_types": ["ticket.created"], "secret": "x"}, "secret", ""),
    ],
)
async def test_invalid_registrations_are_400_with_the_field(
    client: AsyncTestClient[Any],
    admin: dict[str, str],
    body: dict[str, Any],
    field: str,
    words: str,
) -> None:
    response = await client.post(WEBHOOKS_URL, json=body, headers=admin)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field, error
    assert words in error["message"], error


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.8",
        "192.168.0.1",
        "169.254.169.254",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "localhost",
    ],
)
async def test_private_targets_are_refused_without_the_switch(
    client: AsyncTestClient[Any], admin: dict[str, str], host: str
) -> None:
    body = {"url": f"https://{host}:8443/hook", "event_types": ["ticket.created"]}
    response = await client.post(WEBHOOKS_URL, json=body, headers=admin)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["details"][0]["field"] == "url"
    assert "not allowed" in error["message"] and "WEBHOOK_ALLOW_PRIVATE" in error["message"]
    # Nor can an endpoint be moved there afterwards.
    created = await register(client, admin)
    moved = await client.patch(
        f"{WEBHOOKS_URL}/{created['id']}", json={"url": body["url"]}, headers=admin
    )
    assert moved.status_code == 400
    assert (await client.get(f"{WEBHOOKS_URL}/{created['id']}", headers=admin)).json()[
        "url"
    ] == PUBLIC_URL


@pytest.fixture
async def permissive_client(
    settings: Settings, publisher: RecordingPublisher
) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(replace(settings, webhook_allow_private=True), publisher=publisher)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def test_with_the_switch_a_local_http_receiver_is_allowed(
    permissive_client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    created = await register(permissive_client, admin, url="http://127.0.0.1:9/hook")
    assert created["url"] == "http://127.0.0.1:9/hook"


async def test_only_admins(
    client: AsyncTestClient[Any], admin: dict[str, str], make_token: TokenFactory
) -> None:
    created = await register(client, admin)
    user = auth(make_token("plain-user"))
    one = f"{WEBHOOKS_URL}/{created['id']}"
    calls = [
        ("POST", WEBHOOKS_URL),
        ("GET", WEBHOOKS_URL),
        ("GET", one),
        ("PATCH", one),
        ("DELETE", one),
        ("POST", f"{one}/rotate-secret"),
    ]
    for method, url in calls:
        body = {"url": PUBLIC_URL, "event_types": ["ticket.created"]}
        assert (await client.request(method, url, json=body, headers=user)).status_code == 403
        assert (await client.request(method, url, json=body)).status_code == 401
    assert (await client.get(one, headers=admin)).status_code == 200


async def test_a_slow_name_lookup_holds_no_database_slot(
    client: AsyncTestClient[Any], admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking a URL resolves its host (up to a few seconds); the registrations waiting on it
    must not hold the connection slots every other request needs."""
    gate = client.app.state.connection_gate
    free_during_lookups: list[int] = []

    async def slow_lookup(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        free_during_lookups.append(gate.free)
        raise OSError("no such host")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", slow_lookup)
    body = {"url": "https://hooks.slow-dns.test/in", "event_types": ["ticket.created"]}
    answers = await asyncio.gather(
        *(client.post(WEBHOOKS_URL, json=body, headers=admin) for _ in range(gate.slots + 2))
    )
    assert {a.status_code for a in answers} == {400}
    assert "does not resolve" in answers[0].json()["error"]["message"]
    assert free_during_lookups and set(free_during_lookups) == {gate.slots}
