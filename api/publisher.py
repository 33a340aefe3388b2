"""Hands committed events to the workers (persist, then publish), off the request's critical path.

Requests drop event ids here after their commit; one background task per API process sends them
to the broker at once, and another marks what was sent as published, one UPDATE for everything
sent in the last ``MARK_EVERY_S`` (marking is bookkeeping for the sweep, which waits seconds
before it publishes an unmarked event: a transaction per event cost more than the create).
If Redis is down, nothing fails: the events stay unpublished and the outbox sweep sends them
when Redis is back.

The broker's client is synchronous and the sends run on the event loop itself, not in a thread:
a thread doing one Redis round trip per event must win the GIL back from the busy loop after
every socket call (up to the 5 ms switch interval each), which under load made commit-to-publish
take ~0.5 s (bench/pipeline.py). On the loop a send costs ~0.1 ms of blocking; short socket
timeouts and the back-off after a failure bound what a dead or hanging Redis can cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime

import anyio
import redis
import structlog
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.deps import EventPublisher
from domain.ids import utcnow
from domain.outbox import DISPATCH_ACTOR, DISPATCH_BATCH, EVENTS_QUEUE, mark_each_published
from domain.settings import Settings

log = structlog.get_logger("api.publisher")

BATCH = 100  # events sent per turn before requests get the loop back
MARK_EVERY_S = 0.05  # sent events are marked published together, once per this interval
BACKOFF_S = 5.0  # after a broker failure, leave publishing to the sweep for this long


class BrokerPublisher:
    def __init__(self, broker: RedisBroker, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.broker = broker
        self.sessionmaker = sessionmaker
        self._pending: list[str] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sent: list[tuple[str, datetime]] = []  # handed to the broker, not yet marked
        self._marker: asyncio.Task[None] | None = None
        self._down_until = 0.0

    def publish_soon(self, event_ids: list[str]) -> None:
        self._pending.extend(event_ids)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                await self._publish(batch)
                await asyncio.sleep(0)  # let waiting requests run between batches

    async def _publish(self, batch: Sequence[str]) -> None:
        if time.monotonic() < self._down_until:
            return  # the broker failed a moment ago; the sweep will publish these
        sent_at = utcnow()
        self._sent += [(event_id, sent_at) for event_id in self._enqueue(batch)]
        if self._sent and (self._marker is None or self._marker.done()):
            self._marker = asyncio.get_running_loop().create_task(self._mark_soon())

    async def _mark_soon(self) -> None:
        # Until nothing is left: events sent while a mark was running are marked in the next
        # round (a new marker is only started when this one has finished).
        while self._sent:
            await asyncio.sleep(MARK_EVERY_S)
            await self._mark()

    async def _mark(self) -> None:
        sent, self._sent = self._sent, []
        try:
            async with self.sessionmaker() as session:
                await mark_each_published(session, sent)
                await session.commit()
        except Exception as exc:
            # Not marked means the sweep may publish them once more: a duplicate, never a loss.
            log.warning("outbox.mark_published_failed", error=type(exc).__name__, count=len(sent))

    def _enqueue(self, batch: Sequence[str]) -> list[str]:
        sent: list[str] = []
        for start in range(0, len(batch), DISPATCH_BATCH):
            event_ids = list(batch[start : start + DISPATCH_BATCH])
            # Sent by actor name through the broker's public API: the API does not import
            # the workers' code, only the names both sides share (domain.outbox).
            message: Message[None] = Message(
                queue_name=EVENTS_QUEUE,
                actor_name=DISPATCH_ACTOR,
                args=(event_ids,),
                kwargs={},
                options={},
            )
            try:
                self.broker.enqueue(message)
            except redis.RedisError as exc:
                self._down_until = time.monotonic() + BACKOFF_S
                log.warning(
                    "outbox.publish_failed", error=type(exc).__name__, left=len(batch) - len(sent)
                )
                break
            sent += event_ids
        return sent

    async def close(self) -> None:
        """Publish what is queued and mark it (briefly), then stop; anything left is the sweep's."""
        if self._task is not None:
            self._task.cancel()
        with anyio.move_on_after(5):
            if self._pending:
                batch, self._pending = self._pending, []
                await self._publish(batch)
            if self._marker is not None:
                await self._marker  # a short wait, then it marks what was sent
            if self._sent:
                await self._mark()
        if self._marker is not None:
            self._marker.cancel()
        self.broker.close()


def make_publisher(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> EventPublisher:
    # Short timeouts: sends run on the event loop, so a hanging Redis must not hold it for long.
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=0.25, socket_timeout=0.5
    )
    # No middleware: this broker only enqueues; the workers' broker runs the actors.
    broker = RedisBroker(client=client, middleware=[])
    broker.declare_queue(EVENTS_QUEUE)
    return BrokerPublisher(broker, sessionmaker)
