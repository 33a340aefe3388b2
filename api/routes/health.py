"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text

from domain.db import ConnectionGate

# Readiness waits this long for a database slot and an answer: a process whose requests cannot
# get a connection (a wedged gate, a dead pool) must leave the load balancer, not wait 5 s.
READY_TIMEOUT_S = 2.0


@get("/healthz", include_in_schema=True, tags=["health"], summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["health"],
    summary="This process can serve requests that need the database",
    description=(
        "Takes a database connection through the same gate as every request, within "
        f"{READY_TIMEOUT_S:g} s, and runs `SELECT 1`."
    ),
    responses={
        503: ResponseSpec(
            data_container=dict[str, str],
            description="No database connection within the time; retry after Retry-After.",
        )
    },
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    gate: ConnectionGate = state.connection_gate
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with gate.slot(timeout_s=READY_TIMEOUT_S), state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return Response(
            {"status": "unavailable", "database": type(exc).__name__},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return Response({"status": "ok", "database": "ok"})
