"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text


@get("/healthz", include_in_schema=True, tags=["health"], summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["health"],
    summary="The database is reachable",
    responses={
        503: ResponseSpec(
            data_container=dict[str, str],
            description="The database is unreachable; retry after the seconds in Retry-After.",
        )
    },
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    try:
        async with state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return Response(
            {"status": "unavailable", "database": type(exc).__name__},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return Response({"status": "ok", "database": "ok"})
