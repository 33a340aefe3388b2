"""The delivery ledger against a real database: each (event, channel, recipient) is sent once,
transient failures are retried, permanent ones are recorded and stopped."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.delivery import (
    DeliveryConfig,
    Outcome,
    PermanentDeliveryError,
    TransientDeliveryError,
    deliver_batch,
    plan_deliveries,
)
from domain.events import take_pending_event_ids
from domain.ids import utcnow
from domain.lifecycle import Priority
from domain.notifications import Notice
from domain.policies import TimePolicy
from domain.tickets import Caller, TicketService
from workers.channels.recording import RecordingChannel

TEAM = ("a@support.test", "b@support.test")


class FlakyChannel:
    """Fails with the given errors first, then records successful sends."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.sent: list[Notice] = []

    async def send(self, notice: Notice) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(notice)


async def new_ticket_event(sessions: async_sessionmaker[AsyncSession]) -> str:
    service = TicketService(TimePolicy(timedelta(hours=1), timedelta(days=7)))
    async with sessions() as session:
        await service.create(
            session,
            Caller("user-1", email="u@example.com"),
            subject="Hi",
            body="Help",
            category=None,
            priority=Priority.NORMAL,
        )
        await session.commit()
        (event_id,) = take_pending_event_ids(session)
        return event_id


async def plan(
    sessions: async_sessionmaker[AsyncSession], event_id: str, config: DeliveryConfig
) -> list[str]:
    async with sessions() as session:
        planned = await plan_deliveries(session, event_id, config, utcnow())
        await session.commit()
        return planned.pending


async def run_batch(
    sessions: async_sessionmaker[AsyncSession], delivery_ids: list[str], config: DeliveryConfig
) -> list[Outcome]:
    async with sessions() as session:
        results = await deliver_batch(session, delivery_ids, config, utcnow())
        await session.commit()
        return [result.outcome for result in results]


class RefusingChannel:
    """Refuses one recipient for now (SMTP 4xx), accepts the others."""

    def __init__(self, refused: str, error: Exception | None = None) -> None:
        self.refused: str | None = refused
        self.error = error or TransientDeliveryError("SMTP 452 mailbox busy", retry_after_s=2.0)
        self.sent: list[str] = []

    async def send(self, notice: Notice) -> None:
        if notice.recipient == self.refused:
            raise self.error
        self.sent.append(notice.recipient)


class GatedChannel(RecordingChannel):
    """Holds every send until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def send(self, notice: Notice) -> None:
        self.started.set()
        await self.gate.wait()
        await super().send(notice)


async def run(
    sessions: async_sessionmaker[AsyncSession], delivery_id: str, config: DeliveryConfig
) -> Outcome:
    (outcome,) = await run_batch(sessions, [delivery_id], config)
    return outcome


async def test_planning_twice_and_delivering_twice_sends_once(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = RecordingChannel()
    config = DeliveryConfig(team_emails=TEAM, channels={"email": channel})
    event_id = await new_ticket_event(sessions)

    first = await plan(sessions, event_id, config)
    second = await plan(sessions, event_id, config)  # a duplicated dispatch message
    assert len(first) == 2 and sorted(first) == sorted(second)
    for delivery_id in first + second:  # every delivery message arrives twice
        await run(sessions, delivery_id, config)

    assert sorted(n.recipient for n in channel.sent) == sorted(TEAM)
    assert db.execute("SELECT status, attempts FROM deliveries").fetchall() == [("sent", 1)] * 2
    assert db.execute("SELECT completed_at IS NOT NULL FROM ticket_events").fetchone() == (True,)
    # Once completed, a late duplicate dispatch plans nothing.
    assert await plan(sessions, event_id, config) == []


async def test_planning_marks_an_event_published_once(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    """A worker can get an event before the publisher has marked it: planning marks it (so the
    sweep does not publish it again), but never moves a mark the publisher already made."""
    config = DeliveryConfig(team_emails=TEAM, channels={"email": RecordingChannel()})
    unmarked = await new_ticket_event(sessions)
    marked = await new_ticket_event(sessions)
    db.execute("UPDATE ticket_events SET published_at = '2000-01-01Z' WHERE id = %s", (marked,))

    assert len(await plan(sessions, unmarked, config)) == 2
    assert len(await plan(sessions, marked, config)) == 2
    query = "SELECT published_at, completed_at FROM ticket_events WHERE id = %s"
    (published, completed) = db.execute(query, (unmarked,)).fetchone() or ()
    assert published is not None and completed is None
    assert db.execute(query, (marked,)).fetchone() == (datetime(2000, 1, 1, tzinfo=UTC), None)
    await plan(sessions, unmarked, config)  # a duplicate dispatch changes nothing
    assert db.execute(query, (unmarked,)).fetchone() == (published, None)

    # Completed at planning (nobody to tell): the publisher's mark stays too.
    marked_and_done = await new_ticket_event(sessions)
    db.execute(
        "UPDATE ticket_events SET published_at = '2000-01-01Z' WHERE id = %s", (marked_and_done,)
    )
    assert await plan(sessions, marked_and_done, replace(config, team_emails=())) == []
    (published, completed) = db.execute(query, (marked_and_done,)).fetchone() or ()
    assert published == datetime(2000, 1, 1, tzinfo=UTC) and completed is not None


async def test_transient_failures_are_retried_then_sent(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = FlakyChannel(TransientDeliveryError("SMTP 451"), TransientDeliveryError("refused"))
    config = DeliveryConfig(team_emails=TEAM[:1], channels={"email": channel})
    (delivery_id,) = await plan(sessions, await new_ticket_event(sessions), config)

    assert await run(sessions, delivery_id, config) is Outcome.RETRY
    assert db.execute("SELECT status, attempts, last_error FROM deliveries").fetchone() == (
        "pending",
        1,
        "SMTP 451",
    )
    assert db.execute("SELECT completed_at FROM ticket_events").fetchone() == (None,)
    assert await run(sessions, delivery_id, config) is Outcome.RETRY
    assert await run(sessions, delivery_id, config) is Outcome.SENT
    assert len(channel.sent) == 1
    assert db.execute("SELECT status, attempts FROM deliveries").fetchone() == ("sent", 3)


async def test_permanent_failure_is_recorded_and_never_retried(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = FlakyChannel(PermanentDeliveryError("SMTP 550 no such user"))
    config = DeliveryConfig(team_emails=TEAM[:1], channels={"email": channel})
    event_id = await new_ticket_event(sessions)
    (delivery_id,) = await plan(sessions, event_id, config)

    assert await run(sessions, delivery_id, config) is Outcome.FAILED
    assert await run(sessions, delivery_id, config) is Outcome.SKIPPED
    assert channel.sent == []
    row = db.execute("SELECT status, attempts, last_error FROM deliveries").fetchone()
    assert row == ("failed", 1, "SMTP 550 no such user")
    # A failed delivery is finished work: the event is complete and will not be re-published.
    assert db.execute("SELECT completed_at IS NOT NULL FROM ticket_events").fetchone() == (True,)


async def test_transient_failures_give_up_after_max_attempts(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = FlakyChannel(*[TransientDeliveryError("down")] * 5)
    config = DeliveryConfig(team_emails=TEAM[:1], channels={"email": channel}, max_attempts=3)
    (delivery_id,) = await plan(sessions, await new_ticket_event(sessions), config)
    outcomes = [await run(sessions, delivery_id, config) for _ in range(4)]
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED, Outcome.SKIPPED]
    status, error = db.execute("SELECT status, last_error FROM deliveries").fetchone() or ()
    assert status == "failed" and "gave up after 3 attempts" in error


async def test_event_with_nobody_to_tell_completes_at_once(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    config = DeliveryConfig(team_emails=(), channels={})
    assert await plan(sessions, await new_ticket_event(sessions), config) == []
    assert db.execute("SELECT completed_at IS NOT NULL FROM ticket_events").fetchone() == (True,)
    assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


async def test_a_batch_retries_only_the_rows_that_failed(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = RefusingChannel(refused=TEAM[1])
    config = DeliveryConfig(team_emails=TEAM, channels={"email": channel})
    ids = await plan(sessions, await new_ticket_event(sessions), config)
    by_recipient = dict(db.execute("SELECT recipient, id FROM deliveries").fetchall())

    outcomes = await run_batch(sessions, ids, config)
    assert dict(zip(ids, outcomes, strict=True)) == {
        by_recipient[TEAM[0]]: Outcome.SENT,
        by_recipient[TEAM[1]]: Outcome.RETRY,
    }
    rows = db.execute("SELECT recipient, status, attempts, last_error FROM deliveries").fetchall()
    assert sorted(rows) == [
        (TEAM[0], "sent", 1, None),
        (TEAM[1], "pending", 1, "SMTP 452 mailbox busy"),
    ]
    assert db.execute("SELECT completed_at FROM ticket_events").fetchone() == (None,)

    channel.refused = None  # the mailbox is free again; the whole message is retried
    outcomes = await run_batch(sessions, ids, config)
    assert sorted(outcomes) == sorted([Outcome.SKIPPED, Outcome.SENT])
    assert sorted(channel.sent) == sorted(TEAM)  # the first recipient was not sent twice
    rows = db.execute("SELECT recipient, status, attempts, last_error FROM deliveries").fetchall()
    assert sorted(rows) == [
        (TEAM[0], "sent", 1, None),
        (TEAM[1], "sent", 2, "SMTP 452 mailbox busy"),  # sent, with what it met on the way
    ]
    assert db.execute("SELECT completed_at IS NOT NULL FROM ticket_events").fetchone() == (True,)


async def test_a_duplicate_batch_running_at_the_same_time_sends_nothing(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = GatedChannel()
    config = DeliveryConfig(team_emails=TEAM, channels={"email": channel})
    ids = await plan(sessions, await new_ticket_event(sessions), config)

    first = asyncio.create_task(run_batch(sessions, ids, config))
    await asyncio.wait_for(channel.started.wait(), timeout=5)  # the first holds the rows
    assert await run_batch(sessions, ids, config) == [Outcome.SKIPPED, Outcome.SKIPPED]
    channel.gate.set()
    assert await first == [Outcome.SENT, Outcome.SENT]
    assert sorted(n.recipient for n in channel.sent) == sorted(TEAM)
    assert db.execute("SELECT count(*) FROM deliveries WHERE status = 'sent'").fetchone() == (2,)


async def test_an_unexpected_error_in_one_send_does_not_resend_the_others(
    sessions: async_sessionmaker[AsyncSession], db: psycopg.Connection[Any]
) -> None:
    channel = RefusingChannel(refused=TEAM[1], error=RuntimeError("bug in a channel"))
    config = DeliveryConfig(team_emails=TEAM, channels={"email": channel})
    ids = await plan(sessions, await new_ticket_event(sessions), config)

    assert sorted(await run_batch(sessions, ids, config)) == sorted([Outcome.SENT, Outcome.RETRY])
    rows = db.execute("SELECT recipient, status, last_error FROM deliveries").fetchall()
    assert sorted(rows) == [
        (TEAM[0], "sent", None),
        (TEAM[1], "pending", "RuntimeError: bug in a channel"),
    ]
    channel.refused = None
    await run_batch(sessions, ids, config)
    assert sorted(channel.sent) == sorted(TEAM)
