"""Abuse: floods get 429 with Retry-After per user, oversized bodies get 413, and neither
takes the service down for anyone else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import Settings
from tests.conftest import USER_URL, RecordingPublisher, TokenFactory, auth
from tests.processes import PrivateRedis


@pytest.fixture
async def limited(
    settings: Settings, publisher: RecordingPublisher, redis_client: redis.Redis
) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(replace(settings, rate_limit_per_minute=5), publisher=publisher)
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_flood_gets_429_with_retry_after_per_user(
    limited: AsyncTestClient[Any], make_token: TokenFactory
) -> None:
    flooder, bystander = auth(make_token("flooder")), auth(make_token("bystander"))
    statuses = [(await limited.get(USER_URL, headers=flooder)).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    refused = await limited.get(USER_URL, headers=flooder)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    body = refused.json()
    assert body["success"] is False and body["error"]["code"] == "rate_limited"
    # Writes count too, and another user is not affected.
    post = await limited.post(USER_URL, json={"subject": "s", "body": "b"}, headers=flooder)
    assert post.status_code == 429
    assert (await limited.get(USER_URL, headers=bystander)).status_code == 200


async def test_rate_limit_fails_open_when_redis_is_down(
    settings: Settings, publisher: RecordingPublisher, make_token: TokenFactory
) -> None:
    dead = PrivateRedis()  # never started: nothing listens on its port
    app = create_app(
        replace(settings, rate_limit_per_minute=1, redis_url=dead.url), publisher=publisher
    )
    async with AsyncTestClient(app=app) as client:
        token = auth(make_token("alice"))
        statuses = [(await client.get(USER_URL, headers=token)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]


async def test_body_over_the_limit_gets_413_and_writes_nothing(
    client: AsyncTestClient[Any], make_token: TokenFactory, db: Any
) -> None:
    token = auth(make_token("alice"))
    huge = {"subject": "s", "body": "x" * (70 * 1024)}
    response = await client.post(USER_URL, json=huge, headers=token)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert db.execute("SELECT count(*) FROM tickets").fetchone() == (0,)
