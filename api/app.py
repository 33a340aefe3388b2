"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from redis.asyncio import Redis

from api.auth import TokenVerifier
from api.console import console_router
from api.deps import (
    EventPublisher,
    provide_caller,
    provide_direct,
    provide_session,
)
from api.errors import EXCEPTION_HANDLERS
from api.etags import EXCEPTION_HANDLERS as VERSION_HANDLERS
from api.guards import api_request_guard
from api.idempotency import EXCEPTION_HANDLERS as IDEMPOTENCY_HANDLERS
from api.metrics import WAITING_FOR_DATABASE, metrics_endpoint
from api.publisher import make_publisher
from api.rate_limit import UserRateLimiter
from api.request_log import request_log_middleware
from api.request_scope import request_resources_middleware
from api.routes.admin_tickets import AdminTicketController
from api.routes.health import healthz, readyz
from api.routes.operations import DeliveryController, TicketHistoryController
from api.routes.user_tickets import UserTicketController
from api.routes.webhooks import WebhookController
from domain import heartbeats
from domain.db import ConnectionGate, make_engine, make_sessionmaker
from domain.idempotency import IdempotencyKeys
from domain.logging import configure_logging
from domain.policies import TimePolicy, time_policy
from domain.settings import Settings, load_settings
from domain.tickets import TicketService


def create_app(
    settings: Settings | None = None, publisher: EventPublisher | None = None
) -> Litestar:
    """Build the API. Fails at once, naming the variable to set, if no token key is configured."""
    settings = settings or load_settings()
    configure_logging(settings)
    verifier = TokenVerifier(settings)
    policy = time_policy(settings)  # a bad SLA_POLICY_FILE stops the API here, naming the line

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        # Servers (granian) set up their own logging after importing us; take it back.
        configure_logging(settings)
        # The OpenAPI schema is built here, not by the first request for /schema (which needs no
        # token): building it held the event loop for ~260 ms and grew the process by ~13 MB,
        # for every request in flight (bench/abuse.py, case open-endpoints).
        app.openapi_schema  # noqa: B018 (the property builds and keeps it)
        # Engine and publisher are made when the server starts, never at import.
        app.state.engine = make_engine(settings)
        app.state.sessionmaker = make_sessionmaker(app.state.engine)
        app.state.connection_gate = ConnectionGate(settings, waiting=WAITING_FOR_DATABASE)
        app.state.publisher = publisher or make_publisher(settings, app.state.sessionmaker)
        heartbeat_redis = Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        stop_beating = asyncio.Event()
        heartbeat = asyncio.get_running_loop().create_task(
            heartbeats.beat_until(stop_beating, heartbeat_redis, "api")
        )
        try:
            yield
        finally:
            stop_beating.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(heartbeat, timeout=5)
            await heartbeat_redis.aclose()
            close = getattr(app.state.publisher, "close", None)
            if close is not None:
                await close()
            await app.state.engine.dispose()

    # Every ticket route: the token is verified, the caller's rate limit counted and a body's
    # type checked before the body is read or a connection taken (the admin controller adds
    # its admin guard after these).
    ticket_api = Router(
        path="/",
        route_handlers=[
            UserTicketController,
            AdminTicketController,
            DeliveryController,
            TicketHistoryController,
            WebhookController,
        ],
        guards=[api_request_guard],
    )
    return Litestar(
        route_handlers=[ticket_api, healthz, readyz, metrics_endpoint, console_router(settings)],
        dependencies={
            "caller": Provide(provide_caller, sync_to_thread=False),
            "session": Provide(provide_session),
            "db": Provide(provide_direct),
        },
        exception_handlers={**EXCEPTION_HANDLERS, **IDEMPOTENCY_HANDLERS, **VERSION_HANDLERS},
        # Outermost first: the access line covers everything; resources are released inside it.
        middleware=[request_log_middleware, request_resources_middleware],
        lifespan=[lifespan],
        state=State(_initial_state(settings, verifier, policy)),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Support API",
            version="1.0.0",
            description=(
                "In-app support tickets. Every endpoint needs `Authorization: Bearer <JWT>`. "
                'Errors always have the shape `{"success": false, "error": {"code", '
                '"message", "details"}}`. Validation errors are 400 with per-field details.'
            ),
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/"), JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
                }
            ),
        ),
        debug=False,
    )


def _initial_state(
    settings: Settings, verifier: TokenVerifier, policy: TimePolicy
) -> dict[str, object]:
    limiter = (
        UserRateLimiter(settings.redis_url, settings.rate_limit_per_minute)
        if settings.rate_limit_per_minute > 0
        else None
    )
    return {
        "settings": settings,
        "verifier": verifier,
        "service": TicketService(policy),
        "idempotency_keys": IdempotencyKeys(),
        "rate_limiter": limiter,
    }
