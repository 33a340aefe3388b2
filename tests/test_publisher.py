"""The API's publisher against real Redis and PostgreSQL: every committed event is handed to the
broker and marked published with the time it was sent, including what was sent just before the
app stopped (otherwise the sweep would send it again)."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import load_settings
from tests.conftest import TokenFactory, auth
from tests.sinks import eventually

URL = "/v1/support/tickets"


def publication(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT published_at IS NOT NULL, published_at >= created_at, publish_count"
        " FROM ticket_events ORDER BY id"
    ).fetchall()


async def create(client: AsyncTestClient[Any], token: str, count: int) -> None:
    for n in range(count):
        response = await client.post(
            URL, json={"subject": f"T{n}", "body": "x"}, headers=auth(token)
        )
        assert response.status_code == 201, response.text


async def test_each_event_is_marked_published_once_with_its_send_time(
    live_client: AsyncTestClient[Any], make_token: TokenFactory, db: psycopg.Connection[Any]
) -> None:
    await create(live_client, make_token("user-1"), 5)
    assert await eventually(lambda: publication(db) == [(True, True, 1)] * 5, within_s=5), (
        publication(db)
    )


async def test_what_was_sent_just_before_shutdown_is_marked(
    service_env: dict[str, str], make_token: TokenFactory, db: psycopg.Connection[Any]
) -> None:
    async with AsyncTestClient(app=create_app(load_settings(service_env))) as client:
        await create(client, make_token("user-1"), 3)
    # The app has stopped: no waiting here.
    assert publication(db) == [(True, True, 1)] * 3
