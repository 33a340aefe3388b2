"""The API's publisher against real Redis and PostgreSQL: every committed event is handed to the
broker and marked published with the time it was sent, including what was sent just before the
app stopped (otherwise the sweep would send it again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import psycopg
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from api.publisher import make_publisher
from domain.db import make_engine, make_sessionmaker
from domain.settings import Settings, load_settings
from tests.conftest import TokenFactory, auth, create_ticket
from tests.sinks import eventually


def publication(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT published_at IS NOT NULL, published_at >= created_at, publish_count"
        " FROM ticket_events ORDER BY id"
    ).fetchall()


async def create(client: AsyncTestClient[Any], token: str, count: int) -> None:
    for n in range(count):
        await create_ticket(client, auth(token), subject=f"T{n}", body="x")


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


class SlowCommits:
    """A sessionmaker whose commits take 0.2 s (a slow database)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            commit = session.commit

            async def slow_commit() -> None:
                await asyncio.sleep(0.2)
                await commit()

            session.commit = slow_commit  # type: ignore[method-assign]
            yield session


async def test_events_sent_while_a_mark_is_in_flight_are_marked_too(
    client: AsyncTestClient[Any],
    settings: Settings,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    await create(client, make_token("user-1"), 2)  # recorded, not published
    first, second = [row[0] for row in db.execute("SELECT id FROM ticket_events ORDER BY id")]
    engine = make_engine(settings, pool_size=2)
    publisher = make_publisher(settings, cast(Any, SlowCommits(make_sessionmaker(engine))))
    try:
        publisher.publish_soon([first])
        await asyncio.sleep(0.1)  # the first is being marked now ...
        publisher.publish_soon([second])  # ... when the second is sent
        assert await eventually(lambda: publication(db) == [(True, True, 1)] * 2, within_s=3), (
            publication(db)
        )
    finally:
        await publisher.close()  # type: ignore[attr-defined]
        await engine.dispose()
