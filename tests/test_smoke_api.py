from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import TokenFactory, auth


async def test_create_then_get(client: AsyncTestClient[Any], make_token: TokenFactory) -> None:
    token = make_token("alice")
    created = await client.post(
        "/v1/support/tickets", json={"subject": "Hi", "body": "Help"}, headers=auth(token)
    )
    assert created.status_code == 201, created.text
    ticket = created.json()
    got = await client.get(f"/v1/support/tickets/{ticket['id']}", headers=auth(token))
    assert got.status_code == 200
    assert got.json()["messages"][0]["body"] == "Help"
