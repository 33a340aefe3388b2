"""The app served in the test's own event loop, so requests sent together run together.

Litestar's ``AsyncTestClient`` runs each request to its end in a thread of its own before the
next one starts (its transport's async method calls the blocking one), which is right for most
tests and useless for races. Here the app's lifespan runs as a task of this loop and httpx
calls the app directly: twenty requests gathered are twenty requests in flight, each on a
database connection of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from litestar import Litestar


@asynccontextmanager
async def served_in_loop(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of ``app``, between its start-up and shutdown."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, to_app.get, from_app.put))  # type: ignore[arg-type]
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await lifespan
