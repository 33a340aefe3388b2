"""Every route is guarded by where it is declared, not by what a handler names its parameters.

These walk the app's routes, so a route added later is checked without anyone listing it here.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import TokenFactory, auth

# /console serves the agent console's static files (api/console): like /schema they are the same
# for everyone and hold no data; the console reads tickets only through the guarded JSON API with
# the agent's token. Its one write, /console/dev-token, exists only in development (tested in
# tests/test_console_browser.py), never in the production app walked here.
# /metrics is scraped by Prometheus, which sends no token; it carries counts and timings only
# (tests/test_metrics.py checks that no label holds an id or an address).
OPEN_PATHS = ("/healthz", "/readyz", "/schema", "/console", "/metrics")
SAMPLE_ID = "01JN2XG6H7J8K9M0N1P2Q3R4S5"


def _routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, concrete path) for every HTTP route of the app."""
    found = []
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", SAMPLE_ID, route.path)
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method not in ("HEAD", "OPTIONS"):
                    found.append((method, path))
    return found


def _guarded(path: str) -> bool:
    return not path.startswith(OPEN_PATHS)


async def test_every_route_but_health_and_schema_needs_a_token(
    client: AsyncTestClient[Any],
) -> None:
    routes = [(m, p) for m, p in _routes(client.app) if _guarded(p)]
    assert len(routes) >= 9  # the user and admin ticket routes at least
    for method, path in routes:
        response = await client.request(method, path, json={})
        assert response.status_code == 401, (method, path, response.status_code)


async def test_every_admin_route_refuses_a_user_token(
    client: AsyncTestClient[Any], make_token: TokenFactory
) -> None:
    user = auth(make_token("plain-user"))
    admin_routes = [(m, p) for m, p in _routes(client.app) if p.startswith("/v1/admin")]
    assert len(admin_routes) >= 4
    for method, path in admin_routes:
        response = await client.request(method, path, json={}, headers=user)
        assert response.status_code == 403, (method, path, response.status_code)


def test_no_dependency_is_a_generator(client: AsyncTestClient[Any]) -> None:
    """A generator dependency is closed by Litestar only when all its siblings resolved; one that
    raised (a 401, a 429) once leaked its database slot. Resources go in the request's exit
    stack instead (api/request_scope.py)."""
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", []):
            for name, provide in handler.resolve_dependencies().items():
                generator = provide.has_sync_generator_dependency or (
                    provide.has_async_generator_dependency
                )
                assert not generator, f"dependency {name!r} of {route.path} is a generator"


# The admin search's filter is a dependency of its own (fourteen query parameters, "assignee=me"
# needs the caller) beside the session; one task group per search is small next to the search.
PARALLEL_DEPENDENCIES_ALLOWED = {("GET", "/v1/admin/support/tickets")}


def test_dependencies_resolve_one_after_another(client: AsyncTestClient[Any]) -> None:
    """Litestar resolves independent dependencies of a handler in a task group per request
    (litestar#4563): on the owner's list that was a tenth of its CPU. So a handler's dependencies
    form one chain (the connection depends on the caller), each step a single dependency."""
    checked = 0
    for route in client.app.routes:
        for method, (_handler, kwargs_model) in getattr(route, "route_handler_map", {}).items():
            if (method, route.path) in PARALLEL_DEPENDENCIES_ALLOWED:
                continue
            checked += 1
            widths = [len(batch) for batch in kwargs_model.dependency_batches]
            assert all(width == 1 for width in widths), (method, route.path, widths)
    assert checked >= 9
