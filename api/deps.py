"""Request dependencies: the caller (from the bearer token), a database session, the service."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import TokenVerifier, bearer_token
from api.rate_limit import UserRateLimiter
from domain.db import ConnectionGate
from domain.events import take_pending_event_ids
from domain.tickets import Caller, TicketService

# Handlers name their dependencies explicitly (caller/admin/session/service) with these types.
CallerDep = NamedDependency[Caller]
SessionDep = NamedDependency[AsyncSession]
ServiceDep = NamedDependency[TicketService]


class EventPublisher(Protocol):
    """Hands committed events to the workers; must never raise into a request."""

    def publish_soon(self, event_ids: list[str]) -> None: ...


class NoPublisher:
    """Leaves events in the outbox for the sweep (used when publishing is switched off)."""

    def publish_soon(self, event_ids: list[str]) -> None:
        return None


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    state = request.app.state
    verifier: TokenVerifier = state.verifier
    caller = verifier.verify(bearer_token(request.headers.get("authorization")))
    limiter: UserRateLimiter | None = state.rate_limiter
    if limiter is not None:
        await limiter.check(caller.user_id)
    return caller


async def provide_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise PermissionDeniedException("this endpoint is for the support team (admin role)")
    return caller


async def provide_session(state: State) -> AsyncGenerator[AsyncSession, None]:
    gate: ConnectionGate = state.connection_gate
    async with gate.slot(), state.sessionmaker() as session:
        yield session


def provide_service(state: State) -> TicketService:
    service: TicketService = state.service
    return service


async def commit(session: AsyncSession, state: State) -> None:
    """Commit the transaction, then hand its events to the workers (persist, then publish)."""
    await session.commit()
    event_ids = take_pending_event_ids(session)
    if event_ids:
        publisher: EventPublisher = state.publisher
        publisher.publish_soon(event_ids)
