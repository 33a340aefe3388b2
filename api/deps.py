"""Request dependencies: the caller, a database session (or, on the hot paths, a direct
connection), the service.

None of them is a generator: a resource a request takes is entered into the request's own
exit stack (api/request_scope.py), which is closed whatever refuses or ends the request.
"""

from __future__ import annotations

from typing import Any, Protocol

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from api.guards import authenticated_caller
from api.request_scope import request_resources
from domain.db import ConnectionGate, DirectConnection, direct_connection
from domain.events import take_pending_event_ids
from domain.tickets import Caller, TicketService

# Handlers name their dependencies explicitly (caller, then session or db) with these types.
# They form one chain (the connection depends on the caller) on purpose: Litestar resolves two
# or more independent dependencies of a handler in a task group of their own on every request
# (litestar#4563), which cost about a tenth of a list request's CPU (docs/profiling.md, 12).
# tests/test_route_guards.py keeps every route so.
CallerDep = NamedDependency[Caller]
SessionDep = NamedDependency[AsyncSession]
DirectDep = NamedDependency[DirectConnection]


class EventPublisher(Protocol):
    """Hands committed events to the workers; must never raise into a request."""

    def publish_soon(self, event_ids: list[str]) -> None: ...


class NoPublisher:
    """Leaves events in the outbox for the sweep (used when publishing is switched off)."""

    def publish_soon(self, event_ids: list[str]) -> None:
        return None


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    return authenticated_caller(request)


async def open_session(request: Request[Any, Any, Any]) -> AsyncSession:
    """A session behind a connection-gate slot; both go back when the request answers. For a
    handler that must do slow work (a name lookup) before it holds a slot."""
    state = request.app.state
    gate: ConnectionGate = state.connection_gate
    resources = request_resources(request.scope)
    await resources.enter(gate.slot())
    session: AsyncSession = await resources.enter(state.sessionmaker())
    return session


async def provide_session(request: Request[Any, Any, Any], caller: CallerDep) -> AsyncSession:
    """:func:`open_session` as a dependency. ``caller`` is not used: it puts the session after
    the caller in the handler's chain (see above), for a known caller only."""
    return await open_session(request)


async def provide_direct(request: Request[Any, Any, Any], caller: CallerDep) -> DirectConnection:
    """A pooled connection used through psycopg directly (domain/db.py), behind the same gate.
    ``caller`` is not used: it puts the connection after the caller in the handler's chain."""
    state = request.app.state
    gate: ConnectionGate = state.connection_gate
    resources = request_resources(request.scope)
    await resources.enter(gate.slot())
    direct: DirectConnection = await resources.enter(direct_connection(state.engine))
    return direct


def ticket_service(state: State) -> TicketService:
    """The app's one TicketService (made at start-up, holds no request state). Read from the
    app's state rather than injected, so it adds no dependency to a handler's chain."""
    service: TicketService = state.service
    return service


async def commit(session: AsyncSession | DirectConnection, state: State) -> None:
    """Commit the transaction, then hand its events to the workers (persist, then publish)."""
    await session.commit()
    event_ids = take_pending_event_ids(session)
    if event_ids:
        publisher: EventPublisher = state.publisher
        publisher.publish_soon(event_ids)
