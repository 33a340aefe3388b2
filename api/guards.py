"""Who may call a route, decided before the request reads its body or takes a connection.

Litestar runs guards in layer order (app, router, controller, handler) before it resolves any
dependency, so a refused request (401, 429, 415, 403) never holds a database slot. The API
router checks :func:`authenticate`, then :func:`within_rate_limit`, then
:func:`json_bodies_only`; the admin controller adds :func:`admin_only`. Handlers read the
caller with ``CallerDep``.

:func:`api_request_guard` runs those three checks as one guard, which is what the router should
carry: Litestar hands every guard its own shallow copy of the route handler, ~7-9 us per guard
per request here (docs/profiling.md).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE

from api.auth import TokenVerifier, bearer_token
from api.rate_limit import UserRateLimiter
from domain.tickets import Caller

_CALLER_KEY = "helpdesk.caller"
Connection = ASGIConnection[Any, Any, Any, Any]


async def authenticate(connection: Connection, _: BaseRouteHandler) -> None:
    """Verify the bearer token (401 otherwise) and remember who is calling."""
    verifier: TokenVerifier = connection.app.state.verifier
    caller = verifier.verify(bearer_token(connection.headers.get("authorization")))
    connection.scope["state"][_CALLER_KEY] = caller


async def within_rate_limit(connection: Connection, _: BaseRouteHandler) -> None:
    """Count the request against its caller's limit (429 with Retry-After when over it)."""
    limiter: UserRateLimiter | None = connection.app.state.rate_limiter
    if limiter is not None:
        await limiter.check(authenticated_caller(connection).user_id)


async def admin_only(connection: Connection, _: BaseRouteHandler) -> None:
    if not authenticated_caller(connection).is_admin:
        raise PermissionDeniedException("this endpoint is for the support team (admin role)")


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def json_bodies_only(connection: Connection, _: BaseRouteHandler) -> None:
    """A request that sends a body must say it is JSON (415 otherwise), before it is read."""
    headers = connection.headers
    has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
    if has_body and not _is_json(headers.get("content-type", "")):
        raise HTTPException(
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail="request bodies must be JSON: send Content-Type: application/json",
        )


async def api_request_guard(connection: Connection, handler: BaseRouteHandler) -> None:
    """Every API route: the token (401), the caller's rate limit (429), a JSON body (415)."""
    await authenticate(connection, handler)
    await within_rate_limit(connection, handler)
    await json_bodies_only(connection, handler)


def authenticated_caller(connection: Connection) -> Caller:
    """The caller :func:`authenticate` verified for this request."""
    try:
        caller: Caller = connection.scope["state"][_CALLER_KEY]
    except KeyError:
        raise RuntimeError(
            "This route has no caller: it is not behind the authenticate guard. "
            "Did you add it outside the API router in api/app.py?"
        ) from None
    return caller
