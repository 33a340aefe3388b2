"""PostgreSQL stopped under the API: it answers 503 with Retry-After at once (no hang, no 500)
and serves again once the database is back, without a restart. A private cluster is used."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.cli import ensure_database, migrate
from domain.settings import Settings
from tests.conftest import USER_URL, RecordingPublisher, TokenFactory, auth
from tests.processes import PrivatePostgres

pytestmark = pytest.mark.slow


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres().init().start()
    ensure_database(cluster.url)
    migrate(cluster.url)
    yield cluster
    cluster.destroy()


async def test_database_down_means_503_then_recovery_without_restart(
    private_pg: PrivatePostgres, settings: Settings, make_token: TokenFactory
) -> None:
    app = create_app(replace(settings, database_url=private_pg.url), publisher=RecordingPublisher())
    token = auth(make_token("alice"))
    async with AsyncTestClient(app=app, timeout=30) as client:

        async def create() -> Any:
            return await client.post(USER_URL, json={"subject": "s", "body": "b"}, headers=token)

        assert (await create()).status_code == 201
        assert (await client.get("/readyz")).status_code == 200

        private_pg.stop()
        for request in (create, lambda: client.get(USER_URL, headers=token)):
            started = time.monotonic()
            response = await request()
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < 6  # answers, does not hang
            assert response.headers["retry-after"] == "5"
            assert response.json()["error"]["code"] == "service_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
        assert (await client.get("/healthz")).status_code == 200  # the process itself is fine

        private_pg.start()
        deadline = time.monotonic() + 20
        statuses = []
        while time.monotonic() < deadline:
            status = (await create()).status_code
            statuses.append(status)
            if status == 201:
                break
        assert statuses[-1] == 201, statuses
        assert set(statuses) <= {201, 503}
        listed = (await client.get(USER_URL, headers=token)).json()
        assert listed["pagination"]["total"] == 2
