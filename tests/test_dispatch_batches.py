"""Events travel to the events pool in batches when they pile up: the API's publisher sends at
most DISPATCH_BATCH events per message, and the pool plans a whole batch in one transaction and
groups the recipients of several events into one delivery message. Batches change the number of
queue hops, never who is told or how often."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import dramatiq
import psycopg
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.publisher import make_publisher
from domain.db import make_engine, make_sessionmaker
from domain.outbox import DISPATCH_ACTOR, DISPATCH_BATCH, EVENTS_QUEUE
from domain.settings import Settings, load_settings
from tests.conftest import QUEUES, TEAM, RecordingPublisher, TokenFactory, auth, create_ticket
from tests.processes import ServiceProcess, dramatiq_workers
from tests.sinks import SmtpSink, eventually


def queued_dispatch_batches(redis_url: str) -> list[list[str]]:
    """The event ids of each dispatch message waiting on the events queue."""
    client = redis.Redis.from_url(redis_url)
    messages = client.hgetall(f"dramatiq:{EVENTS_QUEUE}.msgs").values()
    decoded = [json.loads(raw) for raw in messages]
    assert all(m["actor_name"] == DISPATCH_ACTOR for m in decoded)
    return [m["args"][0] for m in decoded]


async def test_the_publisher_sends_piled_up_events_in_batches(
    settings: Settings, make_token: TokenFactory, db: psycopg.Connection[Any], redis_client: Any
) -> None:
    app = create_app(settings, publisher=RecordingPublisher())  # leaves every event unpublished
    async with AsyncTestClient(app=app) as client:
        for n in range(2 * DISPATCH_BATCH + 7):
            await create_ticket(client, auth(make_token("user-1")), subject=f"T{n}", body="x")
    event_ids = [row[0] for row in db.execute("SELECT id FROM ticket_events ORDER BY id")]

    engine = make_engine(settings, pool_size=2)
    publisher = make_publisher(settings, make_sessionmaker(engine))
    publisher.publish_soon(event_ids)  # all at once, as after a burst
    await publisher.close()  # type: ignore[attr-defined]
    await engine.dispose()

    batches = queued_dispatch_batches(settings.redis_url)
    assert sorted(len(b) for b in batches) == [7, DISPATCH_BATCH, DISPATCH_BATCH]
    assert sorted(e for b in batches for e in b) == event_ids
    published = db.execute("SELECT count(*) FROM ticket_events WHERE publish_count = 1").fetchone()
    assert published == (len(event_ids),)


@pytest.mark.slow
async def test_a_batch_and_a_duplicate_of_it_tell_everyone_once(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
) -> None:
    settings = load_settings(service_env)
    # Written, not yet published (the workers are not running either).
    app = create_app(settings, publisher=RecordingPublisher())
    async with AsyncTestClient(app=app) as client:
        for n in range(12):
            await create_ticket(client, auth(make_token("user-1")), subject=f"T{n}", body="x")
    event_ids = [row[0] for row in db.execute("SELECT id FROM ticket_events ORDER BY id")]
    broker = RedisBroker(url=settings.redis_url, middleware=[])
    # One batch of every event, then the same events again in two overlapping batches.
    for batch in (event_ids, event_ids[:8], event_ids[4:]):
        broker.enqueue(
            dramatiq.Message(
                queue_name=EVENTS_QUEUE,
                actor_name=DISPATCH_ACTOR,
                args=(batch,),
                kwargs={},
                options={},
            )
        )
    processes.append(dramatiq_workers(service_env, QUEUES).start())

    expected = len(event_ids) * len(TEAM)
    assert await eventually(lambda: len(smtp_sink.received) >= expected, within_s=30)
    assert await eventually(
        lambda: (
            db.execute("SELECT count(*) FROM ticket_events WHERE completed_at IS NULL").fetchone()
            == (0,)
        ),
        within_s=10,
    )
    deliveries = Counter(smtp_sink.deliveries())
    assert len(deliveries) == expected
    assert set(deliveries.values()) == {1}  # nobody told twice
