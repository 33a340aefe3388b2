"""The one Dramatiq broker and its middleware. Each pool's module of actors imports it first.

A pool declares only its own actors (``workers/events.py``, ``workers/notifications.py``,
``workers/sla.py``, ``workers/maintenance.py``, one per Procfile line), so a message for another
pool's actor is sent by name (:func:`send_by_name`), as the API sends its events.

Idle consumers wait on Redis instead of polling it (:class:`WakingRedisBroker`): Dramatiq's
Redis consumer finds new messages only by polling, sleeping up to ``dramatiq_worker_timeout``
between polls, so a prompt pipeline needed 100 ms polls in every process, most of the idle
CPU of ``make run`` (docs/profiling.md, section 9).
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    CurrentMessage,
    Middleware,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from domain.logging import configure_logging
from domain.settings import Settings, load_settings
from workers import runtime
from workers.liveness import Heartbeat
from workers.metrics import pool_metrics_middleware

log = structlog.get_logger("workers.broker")


class LogFormat(Middleware):
    """Our log format (JSON lines by default) in each worker process, set up before any other
    middleware logs at boot: Dramatiq's own lines then come out as JSON like ours."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        configure_logging(self.settings)


class WorkerRuntime(Middleware):
    """Builds the database engine and channels when a worker process boots, and closes them at
    shutdown: never at import, so importing actors (e.g. to send) opens no connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # Before boot, not after: the worker's threads start consuming before after_worker_boot.
    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        ignore_repeated_sigterm()
        runtime.start(self.settings)

    # After shutdown, not before: Dramatiq emits before_worker_shutdown while the worker's
    # threads still finish their messages, which then found no runtime (sweeps logging errors at
    # every stop). after_* hooks run in reverse order, so this one runs while the AsyncIO
    # middleware's event loop (listed before this one) is still up.
    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(runtime.stop())


DATABASE_DOWN_RETRY_MS = 2_000


class RetrySoonWhenDatabaseDown(Middleware):
    """A database outage is not the message's fault: its message is retried every two seconds
    rather than on the actor's growing backoff, so work resumes within moments of PostgreSQL
    coming back.

    Each actor is wrapped as it is declared, so that the outage leaves it as ``dramatiq.Retry``:
    Retries then honours the delay (the attempt still counts against the actor's
    ``max_retries``), and the worker does not log the outage as an unhandled error.
    """

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        run = actor.fn

        @functools.wraps(run)
        def run_or_retry_soon(*args: Any, **kwargs: Any) -> Any:
            try:
                return run(*args, **kwargs)
            except (OperationalError, PoolTimeout) as exc:
                log.warning(
                    "actor.database_unavailable",
                    actor=actor.actor_name,
                    error=type(exc).__name__,
                )
                raise dramatiq.Retry("database unavailable", delay=DATABASE_DOWN_RETRY_MS) from exc

        actor.fn = run_or_retry_soon


SIGTERM_REPEAT_WINDOW_S = 3.0


def ignore_repeated_sigterm() -> None:
    """One stop request should stop a worker process gracefully, even when it arrives twice.

    A process manager that signals the pool's whole process group (honcho, under ``make run``)
    reaches each worker process directly, and Dramatiq's main process forwards the same SIGTERM
    to it again. Dramatiq treats a second SIGTERM as "exit now", which skips stopping the
    worker's threads, so the process hung until the manager's SIGKILL (seen on every ``make
    run`` stop). A repeat within a few seconds of the first is taken as the same request; a
    later one still forces the exit. Only inside Dramatiq's worker processes (their SIGTERM
    handler is Dramatiq's), and only from the main thread, where handlers can be set.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    dramatiq_handler = signal.getsignal(signal.SIGTERM)
    if not callable(dramatiq_handler):
        return
    first_at: float | None = None

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal first_at
        now = time.monotonic()
        if first_at is not None and now - first_at < SIGTERM_REPEAT_WINDOW_S:
            return
        if first_at is None:
            first_at = now
        dramatiq_handler(signum, frame)

    signal.signal(signal.SIGTERM, handler)


# A blocking wait stays below the client's 5 s socket timeout; a consumer comes back at least
# this often anyway (Dramatiq's heartbeat, a stop request).
MAX_WAIT_MS = 4_000


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker whose idle consumers wait on Redis for work instead of polling.

    An idle consumer blocks in ``BLMOVE queue queue RIGHT RIGHT`` (a no-op move of the queue's
    last message onto itself) until a message is pushed, for at most ``dramatiq_worker_timeout``
    ms, then fetches as Dramatiq always does (its Lua script: pop, record the ack, heartbeat).
    Messages are never taken off the queue by the wait, so nothing changes about delivery,
    acks or requeues, and whoever sends (the API's own broker, another pool) needs no change.
    A delay-queue consumer waits at most until the earliest eta among the messages it holds,
    so a delayed message moves to its queue when it is due, not at the next poll.
    """

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer


class _WakingConsumer(_RedisConsumer):
    """Dramatiq's consumer with the idle sleep replaced by a wait for work (see the broker)."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._queue_key = f"{broker.namespace}:{queue_name}"
        self._etas: dict[str, int] = {}  # message id -> eta (ms), of fetched delayed messages
        self._room = threading.Event()  # set when an ack or nack makes room under the prefetch
        self._blocking_wait = True

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # Dramatiq's consumer skips these too (its issue #266)
                        self.logger.warning("Found 'None' message in %r.", self.queue_name)
                        continue
                    message = dramatiq.Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    eta = message.options.get("eta")
                    if isinstance(eta, int | float):
                        self._etas[message.message_id] = int(eta)
                    return MessageProxy(message)
                messages = []
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = messages = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                if not messages:
                    self._wait_for_work()
                    return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _wait_for_work(self) -> None:
        wait_ms = min(self.timeout, MAX_WAIT_MS)
        if self._etas:  # wake up when the first delayed message we hold comes due
            wait_ms = min(wait_ms, min(list(self._etas.values())) - current_millis())
        if wait_ms <= 0:
            return
        self._room.clear()
        if self.outstanding_message_count >= self.prefetch:
            self._room.wait(wait_ms / 1000)  # full: nothing to fetch until one is done
            return
        if not self._blocking_wait:
            time.sleep(wait_ms / 1000)
            return
        try:
            self.broker.client.blmove(
                self._queue_key, self._queue_key, wait_ms / 1000, "RIGHT", "RIGHT"
            )
        except redis.TimeoutError:
            pass  # a slow Redis: fetch again, as after any wake-up
        except redis.ResponseError as exc:  # a Redis older than 6.2 has no BLMOVE
            self._blocking_wait = False
            log.warning("broker.polling_instead_of_waiting", error=str(exc))

    def ack(self, message: MessageProxy) -> None:
        try:
            super().ack(message)
        finally:
            self._done(message)

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)
        finally:
            self._done(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        messages = list(messages)
        super().requeue(messages)
        for message in messages:
            self._etas.pop(message.message_id, None)

    def _done(self, message: MessageProxy) -> None:
        self._etas.pop(message.message_id, None)
        self._room.set()


def build_broker(settings: Settings) -> RedisBroker:
    client = redis.Redis.from_url(
        settings.redis_url,
        # Fail fast when Redis is down; callers treat that as "publish later".
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )
    middleware: list[Middleware] = [
        # First, so that the other middleware's boot lines are in our format too.
        LogFormat(settings),
        # Messages processed/failed/retried per actor, when the pool exposes metrics.
        *pool_metrics_middleware(),
        # helpdesk status and the exporter see which queues have a live consumer.
        Heartbeat(),
        # Drop messages older than their actor's max_age (stale periodic sweeps).
        AgeLimit(),
        # Kill an actor that runs past its time_limit; each actor sets its own.
        TimeLimit(),
        # Let long actors notice a worker shutdown.
        ShutdownNotifications(),
        # Retry failed messages with exponential backoff. These are only the defaults: every
        # actor sets its own max_retries/min_backoff/max_backoff (never 20 retries over weeks).
        Retries(max_retries=3, min_backoff=1_000, max_backoff=60_000),
        # A database outage retries in two seconds instead (still within max_retries).
        RetrySoonWhenDatabaseDown(),
        # Log lines and actors can see the message being processed.
        CurrentMessage(),
        # Runs `async def` actors on one event loop thread per worker process.
        AsyncIO(),
        # Engine and channels per worker process (must come after AsyncIO).
        WorkerRuntime(settings),
    ]
    return WakingRedisBroker(client=client, middleware=middleware)


def send_by_name(queue_name: str, actor_name: str, *args: Any, delay_ms: int | None = None) -> None:
    """Queue a message for an actor this process may not declare (another pool's): Dramatiq's
    ``actor.send`` needs the actor, a message only its name and queue (``domain.outbox``)."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={}
    )
    broker.enqueue(message, delay=delay_ms)


settings = load_settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)
