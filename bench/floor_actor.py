"""The do-nothing actor of ``bench.floor``: Dramatiq's own cost per message, with the middleware
the worker pools use (workers/broker.py) but none of our work. Broker from FLOOR_REDIS_URL."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    CurrentMessage,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

DONE_KEY = "floor:done"

_client = redis.Redis.from_url(os.environ["FLOOR_REDIS_URL"])
middleware = [
    AgeLimit(),
    TimeLimit(),
    ShutdownNotifications(),
    Retries(),
    CurrentMessage(),
    AsyncIO(),
]
dramatiq.set_broker(RedisBroker(client=_client, middleware=middleware))


@dramatiq.actor(queue_name="floor", max_retries=0)
async def nothing(i: int) -> None:
    _client.incr(DONE_KEY)  # one Redis round trip, as small as an acknowledgement
