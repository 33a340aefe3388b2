"""Per-user request rate limit, counted in Redis so it holds across API processes.

The ``limits`` library does the counting (an atomic fixed-window counter per user and minute).
Litestar's own rate-limit middleware was not used: it serialises every request of a process
behind one lock around two Redis round trips, and its read-then-write is not atomic across
processes. The check runs right after the token is verified, so the limit is per user.
If Redis is unreachable the limit fails open: availability of support beats strictness.
"""

from __future__ import annotations

import math
import time

import structlog
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from litestar.exceptions import TooManyRequestsException

log = structlog.get_logger("api.rate_limit")

_FAIL_OPEN_S = 5.0  # after a Redis error, skip the check for this long


class UserRateLimiter:
    def __init__(self, redis_url: str, per_minute: int) -> None:
        storage = RedisStorage(
            redis_url.replace("redis://", "async+redis://", 1),
            implementation="redispy",
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
        )
        self.limiter = FixedWindowRateLimiter(storage)
        self.item = RateLimitItemPerMinute(per_minute)
        self._skip_until = 0.0

    async def check(self, user_id: str) -> None:
        """Count one request for ``user_id``; raise 429 with Retry-After when over the limit."""
        if time.monotonic() < self._skip_until:
            return
        try:
            allowed = await self.limiter.hit(self.item, "user", user_id)
            if allowed:
                return
            stats = await self.limiter.get_window_stats(self.item, "user", user_id)
        except Exception as exc:
            self._skip_until = time.monotonic() + _FAIL_OPEN_S
            log.warning("rate_limit.unavailable", error=type(exc).__name__)
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyRequestsException(
            detail=f"rate limit of {self.item.amount} requests per minute exceeded",
            headers={"Retry-After": str(retry_after)},
        )
