"""The workers' broker middleware, on Dramatiq's in-memory broker: a message whose actor found
the database unreachable is retried in two seconds, whatever the actor's backoff."""

from __future__ import annotations

import logging
import time

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from workers.broker import DATABASE_DOWN_RETRY_MS, RetrySoonWhenDatabaseDown


def database_down() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_every_actor_turns_a_database_outage_into_a_retry_soon() -> None:
    broker = StubBroker(middleware=[RetrySoonWhenDatabaseDown()])
    failures: list[Exception] = [database_down(), PoolTimeout("pool exhausted"), ValueError()]

    @dramatiq.actor(broker=broker)
    def work() -> None:
        raise failures.pop(0)

    for _ in range(2):
        with pytest.raises(dramatiq.Retry) as retry:
            work()
        assert retry.value.delay == DATABASE_DOWN_RETRY_MS
    with pytest.raises(ValueError):  # anything else is the actor's own failure, left as it is
        work()


def test_the_retry_comes_in_two_seconds_without_an_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = StubBroker(middleware=[Retries(), RetrySoonWhenDatabaseDown()])
    broker.emit_after("process_boot")
    attempts: list[float] = []

    # A backoff of a minute: only the outage rule can bring the retry back within seconds.
    @dramatiq.actor(broker=broker, max_retries=3, min_backoff=60_000, max_backoff=60_000)
    def work() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise database_down()

    worker = Worker(broker, worker_timeout=50)
    worker.start()
    try:
        with caplog.at_level(logging.INFO):
            work.send()
            broker.join(work.queue_name, timeout=15_000)
    finally:
        worker.stop()
    assert len(attempts) == 2
    assert DATABASE_DOWN_RETRY_MS / 1000 <= attempts[1] - attempts[0] < 10
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
