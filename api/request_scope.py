"""What a request takes (a database slot, a session) is released by the request's own scope.

Litestar closes generator dependencies only when every dependency of the handler resolved: a
sibling dependency or a guard that raises after a generator dependency started (a 401, a 429)
leaves that generator to the garbage collector, which closes it in another task, where its
clean-up fails and the connection-gate slot it held is never given back. Enough such refusals
wedged the whole API. So no dependency here is a generator (``tests/test_route_guards.py``
walks the app to keep it so): a provider enters its resources into the request's exit stack,
and this middleware closes that stack when the response starts, and again, at the latest,
when the request ends for any reason (an exception, a client that hung up, a cancelled task).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TypeVar

from litestar.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")
_STATE_KEY = "helpdesk.request_resources"


class RequestResources:
    """The resources one request holds, released together, newest first, at most once."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._released = False

    async def enter(self, resource: AbstractAsyncContextManager[T]) -> T:
        if self._released:
            raise RuntimeError("this request has already answered; it cannot take resources")
        return await self._stack.enter_async_context(resource)

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._stack.aclose()


def request_resources(scope: Scope) -> RequestResources:
    """The resources of the request in ``scope`` (see :func:`request_resources_middleware`)."""
    try:
        resources: RequestResources = scope["state"][_STATE_KEY]
    except KeyError:
        raise RuntimeError(
            "No request resources in this scope. Did you forget to add "
            "request_resources_middleware to the app's middleware?"
        ) from None
    return resources


def request_resources_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        resources = RequestResources()
        scope.setdefault("state", {})[_STATE_KEY] = resources

        async def send_after_release(message: Message) -> None:
            # The answer is decided: give the connection back before a slow reader gets it.
            if message["type"] == "http.response.start":
                await resources.release()
            await send(message)

        try:
            await app(scope, receive, send_after_release)
        finally:
            await resources.release()

    return middleware
