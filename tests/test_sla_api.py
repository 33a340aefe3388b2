"""The admin API's view of SLA clocks under a policy file: the ``sla`` field of a ticket (each
target's due time and state) and the queue's ``sla_state`` / ``sla_target`` / ``sla_due_before``
filters, 400 on a bad value."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import Settings
from tests.conftest import ADMIN_URL, T0, Clock, RecordingPublisher, create_ticket, iso

POLICY = """
warn_at = 0.5
[urgent]
first_response = "1h"
resolution = "8h"
[high]
resolution = "1d"
"""


@pytest.fixture
async def client(
    settings: Settings, publisher: RecordingPublisher, tmp_path: Path
) -> AsyncIterator[AsyncTestClient[Any]]:
    path = tmp_path / "sla.toml"
    path.write_text(POLICY)
    app = create_app(replace(settings, sla_policy_file=str(path)), publisher=publisher)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def ids(client: AsyncTestClient[Any], admin: dict[str, str], query: str) -> set[str]:
    response = await client.get(f"{ADMIN_URL}?{query}", headers=admin)
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["data"]}


async def test_the_admin_ticket_shows_each_clock_and_the_queue_filters_by_them(
    client: AsyncTestClient[Any], alice: dict[str, str], admin: dict[str, str], clock: Clock
) -> None:
    urgent = (await create_ticket(client, alice, priority="urgent"))["id"]
    high = (await create_ticket(client, alice, priority="high"))["id"]
    low = (await create_ticket(client, alice, priority="low"))["id"]

    view = (await client.get(f"{ADMIN_URL}/{urgent}", headers=admin)).json()
    assert view["sla"] == [
        {
            "target": "first_response",
            "state": "running",
            "started_at": iso(T0),
            "due_at": "2026-03-15T11:00:00Z",
            "warn_at": "2026-03-15T10:30:00Z",
            "warned_at": None,
            "met_at": None,
            "breached_at": None,
            "paused_at": None,
        },
        {
            "target": "resolution",
            "state": "running",
            "started_at": iso(T0),
            "due_at": "2026-03-15T18:00:00Z",
            "warn_at": "2026-03-15T14:00:00Z",
            "warned_at": None,
            "met_at": None,
            "breached_at": None,
            "paused_at": None,
        },
    ]
    assert view["sla_due_at"] == "2026-03-15T11:00:00Z"  # the historical field agrees
    assert (await client.get(f"{ADMIN_URL}/{low}", headers=admin)).json()["sla"] == []

    clock.advance(minutes=5)
    reply = await client.post(
        f"{ADMIN_URL}/{urgent}/messages", json={"body": "on it"}, headers=admin
    )
    assert reply.status_code == 201
    patched = await client.patch(f"{ADMIN_URL}/{high}", json={"status": "resolved"}, headers=admin)
    assert patched.status_code == 200
    assert [(c["target"], c["state"]) for c in patched.json()["sla"]] == [("resolution", "paused")]
    view = (await client.get(f"{ADMIN_URL}/{urgent}", headers=admin)).json()
    assert [(c["target"], c["state"], c["met_at"]) for c in view["sla"]] == [
        ("first_response", "met", clock.iso()),
        ("resolution", "running", None),
    ]

    assert await ids(client, admin, "sla_state=running") == {urgent}
    assert await ids(client, admin, "sla_state=paused") == {high}
    assert await ids(client, admin, "sla_state=met&sla_target=first_response") == {urgent}
    assert await ids(client, admin, "sla_target=resolution") == {urgent, high}
    assert await ids(client, admin, "sla_state=running&sla_target=first_response") == set()
    assert await ids(client, admin, "sla_state=breached") == set()
    # "Due soon": the clock's own deadline with a clock filter.
    assert await ids(client, admin, "sla_state=running&sla_due_before=2026-03-15T18:00:01Z") == {
        urgent
    }
    assert (
        await ids(client, admin, "sla_state=running&sla_due_before=2026-03-15T18:00:00Z") == set()
    )
    for bad in ("sla_state=late", "sla_target=reply", "sla_state="):
        response = await client.get(f"{ADMIN_URL}?{bad}", headers=admin)
        assert response.status_code == 400, (bad, response.text)
