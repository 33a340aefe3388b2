"""Per-user request rate limit, counted in Redis so it holds across API processes.

A fixed window per user, as before: the first request opens a one-minute window (an atomic INCR
on the user's key, which then expires after a minute), the ones past the limit within it get
429 with ``Retry-After`` (the time left in the window).

The requests of a process that wait for their count at the same moment share one Redis round
trip: the first starts a batch at the end of the event loop's current turn, the others join it
until it is sent, and one Lua script counts the whole batch, refused requests' Retry-After
included (the ``limits`` library needed three round trips for a refusal). With 16-32 requests
in flight a round trip per request cost ~55-90 us of this process's CPU in redis-py (mostly the
socket calls and the connection pool), a shared one ~20 us per request (docs/profiling.md).
A lone request still gets its answer in one round trip.

Litestar's own rate-limit middleware was not used: it serialises every request of a process
behind one lock around two Redis round trips, and its read-then-write is not atomic across
processes. The check runs right after the token is verified, so the limit is per user.
If Redis is unreachable the limit fails open: availability of support beats strictness.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import structlog
from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from api.metrics import RATE_LIMIT_REFUSALS

log = structlog.get_logger("api.rate_limit")

_FAIL_OPEN_S = 5.0  # after a Redis error, skip the check for this long
_TIMEOUT_S = 0.5  # connect and answer; a batch waits at most this long for Redis
_WINDOW_MS = 60_000
_KEY_PREFIX = "helpdesk:rate:"
MAX_BATCH = 500  # counts per round trip; more waiting requests go in the next one

# KEYS: one per request (a user's key appears once per request of theirs in the batch).
# ARGV: the window in ms, the limit. Returns, per request, -1 when it is within the limit,
# else the milliseconds left in its window. A key found without an expiry gets one.
_COUNT = """
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local answers = {}
for i, key in ipairs(KEYS) do
    local count = redis.call('INCR', key)
    local answer = -1
    if count == 1 then
        redis.call('PEXPIRE', key, window)
    elseif count > limit then
        answer = redis.call('PTTL', key)
        if answer < 0 then
            redis.call('PEXPIRE', key, window)
            answer = window
        end
    end
    answers[i] = answer
end
return answers
"""


@dataclass(frozen=True)
class PerMinute:
    """How many requests a user may make per minute."""

    amount: int


class UserRateLimiter:
    def __init__(self, redis_url: str, per_minute: int) -> None:
        self.item = PerMinute(per_minute)
        self._redis = Redis.from_url(
            redis_url,
            socket_connect_timeout=_TIMEOUT_S,
            socket_timeout=_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # a failure fails open at once, never retried
        )
        self._count = self._redis.register_script(_COUNT)
        self._waiting: list[tuple[str, asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._skip_until = 0.0

    async def check(self, user_id: str) -> None:
        """Count one request for ``user_id``; raise 429 with Retry-After when over the limit."""
        if time.monotonic() < self._skip_until:
            return
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        if self._sender is None or self._sender.get_loop() is not loop:
            if self._sender is not None:  # the loop it ran on is gone (a test client's)
                self._waiting = []
            # It runs at the end of this turn of the loop, so that the requests handled in the
            # same turn share the round trip; those arriving while it is under way share the
            # next one.
            self._sender = loop.create_task(self._send_waiting())
        self._waiting.append((_KEY_PREFIX + user_id, answer))
        try:
            retry_after_ms = await answer
        except _RedisUnavailable:
            return  # fail open
        if retry_after_ms < 0:
            return
        RATE_LIMIT_REFUSALS.inc()
        raise TooManyRequestsException(
            detail=f"rate limit of {self.item.amount} requests per minute exceeded",
            headers={"Retry-After": str(max(1, math.ceil(retry_after_ms / 1000)))},
        )

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                if time.monotonic() < self._skip_until:
                    _answer_all(batch, _RedisUnavailable())  # Redis failed a moment ago
                else:
                    await self._send(batch)
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    async def _send(self, batch: list[tuple[str, asyncio.Future[int]]]) -> None:
        try:
            async with asyncio.timeout(_TIMEOUT_S * 2):
                answers = await self._count(
                    keys=[key for key, _ in batch], args=[_WINDOW_MS, self.item.amount]
                )
        except Exception as exc:
            self._skip_until = time.monotonic() + _FAIL_OPEN_S
            log.warning("rate_limit.unavailable", error=type(exc).__name__)
            _answer_all(batch, _RedisUnavailable())
            return
        for (_, future), retry_after_ms in zip(batch, answers, strict=True):
            if not future.done():  # not if its request was cancelled meanwhile (hung up)
                future.set_result(int(retry_after_ms))

    async def close(self) -> None:
        await self._redis.aclose()


class _RedisUnavailable(Exception):
    """The batch a request waited on got no answer from Redis."""


def _answer_all(batch: list[tuple[str, asyncio.Future[int]]], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
