"""Requests get database connections in arrival order, and one that waits too long gets 503."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.exc import TimeoutError as PoolTimeout

from domain.db import ConnectionGate
from domain.settings import Settings
from tests.conftest import USER_URL, TokenFactory, auth


async def _hold_every_slot(gate: ConnectionGate, stack: AsyncExitStack) -> None:
    for _ in range(gate.slots):
        await stack.enter_async_context(gate.slot())


async def test_waiters_get_freed_slots_before_later_arrivals(settings: Settings) -> None:
    gate = ConnectionGate(replace(settings, db_pool_size=1))
    held = [gate.slot() for _ in range(gate.slots)]  # every slot of the gate
    for slot in held:
        await slot.__aenter__()
    admitted: list[str] = []
    release = asyncio.Event()

    async def request(name: str) -> None:
        async with gate.slot():
            admitted.append(name)
            await release.wait()

    waiters = []
    for i in range(3):
        waiters.append(asyncio.create_task(request(f"waiter-{i}")))
        await asyncio.sleep(0)  # queued in this order
    await asyncio.sleep(0.01)
    assert admitted == []
    # Newcomers are scheduled before the slots free up, so they run before the woken waiters:
    # a pool that let them take a free slot would admit them first.
    newcomers = [asyncio.create_task(request(f"newcomer-{i}")) for i in range(3)]
    for slot in held[:3]:
        await slot.__aexit__(None, None, None)
    await asyncio.sleep(0.05)
    assert admitted == ["waiter-0", "waiter-1", "waiter-2"]
    release.set()
    for slot in held[3:]:
        await slot.__aexit__(None, None, None)
    await asyncio.gather(*waiters, *newcomers)
    assert sorted(admitted[3:]) == ["newcomer-0", "newcomer-1", "newcomer-2"]


async def test_a_request_that_waits_too_long_fails_like_a_pool_timeout(settings: Settings) -> None:
    gate = ConnectionGate(replace(settings, db_pool_size=1), timeout_s=0.1)
    async with AsyncExitStack() as held:
        await _hold_every_slot(gate, held)
        with pytest.raises(PoolTimeout):
            async with gate.slot():
                pass
    async with gate.slot():  # free again once released
        pass


async def test_api_answers_503_with_retry_after_when_no_connection_frees_up(
    client: AsyncTestClient[Any], settings: Settings, make_token: TokenFactory
) -> None:
    token = auth(make_token("alice"))
    assert (await client.get(USER_URL, headers=token)).status_code == 200
    gate = ConnectionGate(settings, timeout_s=0.2)
    client.app.state.connection_gate = gate
    async with AsyncExitStack() as held:
        await _hold_every_slot(gate, held)
        busy = await client.get(USER_URL, headers=token)
        assert busy.status_code == 503
        assert busy.headers.get("retry-after")
        assert busy.json()["success"] is False
    assert (await client.get(USER_URL, headers=token)).status_code == 200


async def test_readyz_says_unavailable_while_no_slot_frees_up_and_healthz_stays_up(
    client: AsyncTestClient[Any],
) -> None:
    """A process whose requests cannot get a connection must leave the load balancer."""
    assert (await client.get("/readyz")).status_code == 200
    gate = client.app.state.connection_gate
    async with AsyncExitStack() as held:
        await _hold_every_slot(gate, held)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers.get("retry-after")
        assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
