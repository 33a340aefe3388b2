"""The per-user rate limiter on its own: concurrent requests share one Redis round trip, the
count stays exact per user inside a shared batch, a refusal carries Retry-After, and a Redis
that is down or stuck makes it fail open quickly, with one warning."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from litestar.exceptions import TooManyRequestsException

from api import rate_limit
from api.rate_limit import UserRateLimiter
from domain.logging import configure_logging
from domain.settings import load_settings
from tests.conftest import TEST_REDIS_URL


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of requests counted by each script call (one Redis round trip each)."""
    sizes: list[int] = []
    register = UserRateLimiter.__init__

    def counting_init(self: UserRateLimiter, *args: Any, **kwargs: Any) -> None:
        register(self, *args, **kwargs)
        script = self._count

        async def count(keys: list[str], args: list[Any]) -> Any:
            sizes.append(len(keys))
            return await script(keys=keys, args=args)

        self._count = count  # type: ignore[assignment]

    monkeypatch.setattr(UserRateLimiter, "__init__", counting_init)
    return sizes


async def outcomes(limiter: UserRateLimiter, users: list[str]) -> list[int | None]:
    """Check every user at once: None for admitted, else the Retry-After of the 429."""

    async def one(user: str) -> int | None:
        try:
            await limiter.check(user)
        except TooManyRequestsException as exc:
            assert exc.status_code == 429
            return int((exc.headers or {})["Retry-After"])
        return None

    return list(await asyncio.gather(*(one(user) for user in users)))


async def test_concurrent_requests_share_one_round_trip_and_each_user_counts_alone(
    redis_client: redis.Redis, round_trips: list[int]
) -> None:
    limiter = UserRateLimiter(TEST_REDIS_URL, per_minute=5)
    users = ["flooder"] * 8 + ["bystander"] * 3
    results = await outcomes(limiter, users)
    assert round_trips == [len(users)]
    flooder = results[:8]
    assert flooder.count(None) == 5
    assert all(r is not None and 59 <= r <= 60 for r in flooder if r is not None)
    assert results[8:] == [None, None, None]
    # Sequential requests are counted in the same window.
    assert await outcomes(limiter, ["bystander", "bystander", "bystander"]) == [None, None, 60]
    await limiter.close()


async def test_a_window_ends_after_a_minute_from_the_first_request(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limit, "_WINDOW_MS", 1_000)
    limiter = UserRateLimiter(TEST_REDIS_URL, per_minute=2)
    assert await outcomes(limiter, ["u", "u", "u"]) == [None, None, 1]
    assert 0 < redis_client.pttl("helpdesk:rate:u") <= 1_000
    await asyncio.sleep(1.1)
    assert await outcomes(limiter, ["u"]) == [None]
    await limiter.close()


async def test_a_counter_left_without_an_expiry_gets_one(redis_client: redis.Redis) -> None:
    redis_client.set("helpdesk:rate:stuck", 100)  # e.g. written by hand; would refuse forever
    limiter = UserRateLimiter(TEST_REDIS_URL, per_minute=5)
    assert await outcomes(limiter, ["stuck"]) == [60]
    assert 59_000 < redis_client.pttl("helpdesk:rate:stuck") <= 60_000
    await limiter.close()


async def test_a_request_that_hangs_up_does_not_disturb_its_batch(
    redis_client: redis.Redis,
) -> None:
    limiter = UserRateLimiter(TEST_REDIS_URL, per_minute=5)
    gone = asyncio.ensure_future(limiter.check("u"))
    staying = asyncio.ensure_future(outcomes(limiter, ["u", "u"]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await staying == [None, None]
    assert redis_client.get("helpdesk:rate:u") == b"3"  # the hung-up request was counted
    await limiter.close()


@pytest.fixture
def stuck_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        unstick = threading.Timer(30, listener.close)  # fail rather than hang on a bug
        unstick.start()
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        unstick.cancel()


@pytest.mark.parametrize("down", ["stuck", "refusing"])
async def test_fails_open_within_a_second_and_then_skips_the_check(
    down: str, stuck_redis: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stuck_redis
    if down == "refusing":
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    configure_logging(load_settings({"LOG_FORMAT": "json"}))
    limiter = UserRateLimiter(url, per_minute=1)
    started = time.monotonic()
    assert await outcomes(limiter, ["u"] * 20) == [None] * 20
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    assert await outcomes(limiter, ["u"] * 20) == [None] * 20  # within the 5 s of skipping
    assert time.monotonic() - started < 0.1
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("rate_limit.unavailable", "warning")
    ]
    await limiter.close()
