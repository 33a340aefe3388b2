"""The do-nothing actor of ``bench.floor``: Dramatiq's own cost per message, with the broker class
and middleware the worker pools use (workers/broker.py) but none of our work. Broker from
FLOOR_REDIS_URL."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    CurrentMessage,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from workers.broker import WakingRedisBroker

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
dramatiq.set_broker(WakingRedisBroker(client=_client, middleware=middleware))


@dramatiq.actor(queue_name="floor", max_retries=0)
async def nothing(i: int) -> None:
    _client.incr(DONE_KEY)  # one Redis round trip, as small as an acknowledgement
