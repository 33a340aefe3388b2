"""The one Dramatiq broker. Imported (by workers.actors) before any actor is declared."""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    CurrentMessage,
    Middleware,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from domain.logging import configure_logging
from domain.settings import Settings, load_settings
from workers import runtime


class WorkerRuntime(Middleware):
    """Builds the database engine and channels when a worker process boots, and closes them at
    shutdown: never at import, so importing actors (e.g. to send) opens no connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # Before boot, not after: the worker's threads start consuming before after_worker_boot.
    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        configure_logging(self.settings)
        runtime.start(self.settings)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(runtime.stop())


def build_broker(settings: Settings) -> RedisBroker:
    client = redis.Redis.from_url(
        settings.redis_url,
        # Fail fast when Redis is down; callers treat that as "publish later".
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )
    middleware: list[Middleware] = [
        # Drop messages older than their actor's max_age (stale periodic sweeps).
        AgeLimit(),
        # Kill an actor that runs past its time_limit; each actor sets its own.
        TimeLimit(),
        # Let long actors notice a worker shutdown.
        ShutdownNotifications(),
        # Retry failed messages with exponential backoff. These are only the defaults: every
        # actor sets its own max_retries/min_backoff/max_backoff (never 20 retries over weeks).
        Retries(max_retries=3, min_backoff=1_000, max_backoff=60_000),
        # Log lines and actors can see the message being processed.
        CurrentMessage(),
        # Runs `async def` actors on one event loop thread per worker process.
        AsyncIO(),
        # Engine and channels per worker process (must come after AsyncIO).
        WorkerRuntime(settings),
    ]
    return RedisBroker(client=client, middleware=middleware)


settings = load_settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)
