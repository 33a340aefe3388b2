"""Notification delivery with a ledger: one row per (event, channel, recipient), sent at most once
as far as the ledger knows, retried on transient failures, stopped on permanent ones."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol, cast

import structlog
from sqlalchemy import String, Table, any_, bindparam, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.ext.asyncio import AsyncSession

from domain.ids import new_id
from domain.models import Delivery, Message, Staff, Ticket, TicketEvent
from domain.notifications import (
    EMAIL,
    SLACK,
    WEBHOOK,
    Audience,
    Notice,
    Recipient,
    notice_for,
    recipients_for,
)
from domain.webhooks import RETRY_FOR as WEBHOOK_RETRY_FOR
from domain.webhooks import WebhookEndpoint

log = structlog.get_logger("domain.delivery")


class LedgerStatus(StrEnum):
    """A ledger row's state: pending until sent, or failed for good (an operator's case)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class TransientDeliveryError(Exception):
    """Try again later (connection refused, SMTP 4xx, HTTP 5xx/429)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(Exception):
    """Retrying will not help (SMTP 5xx reject, HTTP 4xx): record it for an operator."""


class Channel(Protocol):
    """Sends one notice. Raises TransientDeliveryError or PermanentDeliveryError on failure."""

    async def send(self, notice: Notice) -> None: ...


@dataclass(frozen=True)
class DeliveryConfig:
    team_emails: Sequence[str]
    channels: Mapping[str, Channel]
    max_attempts: int = 20


class Outcome(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"  # already sent/failed, or another worker holds it right now
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    retry_after_s: float | None = None
    error: str | None = None
    channel: str | None = None  # the row's channel when it was attempted (for the metrics)


# The statements of the hot path are built once, with bind parameters: building a statement and
# its cache key costs more CPU than running it against a local PostgreSQL. Updates go through
# the tables (Core), not the ORM's unit of work.
_deliveries = cast(Table, Delivery.__table__)
_events = cast(Table, TicketEvent.__table__)

# The enabled webhook endpoints that want the event's type (an empty table costs nothing;
# `@>` can use the endpoints' GIN index when there are many). Only endpoints registered before
# the event: an event planned again later (re-published) is no news to a newer endpoint.
_WANTED_BY_WEBHOOKS = (
    select(func.array_agg(WebhookEndpoint.id))
    .where(
        WebhookEndpoint.enabled,
        WebhookEndpoint.event_types.contains(array([TicketEvent.type])),
        WebhookEndpoint.created_at <= TicketEvent.created_at,
    )
    .scalar_subquery()
)
_LOAD_EVENT = (
    select(TicketEvent, Ticket, Staff.email, _WANTED_BY_WEBHOOKS)
    .outerjoin(Ticket, Ticket.id == TicketEvent.ticket_id)
    .outerjoin(Staff, Staff.user_id == Ticket.assignee_id)
    .where(TicketEvent.id == bindparam("event_id"))
    .with_for_update(of=TicketEvent)
    .execution_options(populate_existing=True)  # the locked row as it is now
)
_PENDING_OF_EVENT = select(_deliveries.c.id, _deliveries.c.channel).where(
    _deliveries.c.event_id == bindparam("event_id"), _deliveries.c.status == LedgerStatus.PENDING
)
# New ledger rows and the ones still pending, in one statement and so one snapshot. Only the
# recipients without a row yet are inserted: an insert that met an existing row would wait for
# a delivery updating that row (uncommitted) while this transaction holds the event lock, and
# that delivery next waits for the event lock: a deadlock whenever a re-published event is
# planned again while its deliveries finish. The statement does not see its own inserts, so the
# pending rows are those it inserted plus the earlier pending ones. The rows go in as arrays:
# the statement's text is the same whatever the number of recipients (prepared once).
_INSERT_AND_LIST_PENDING = text(
    """
    WITH existing AS (
        SELECT id, channel, recipient, status FROM deliveries WHERE event_id = :event_id
    ), inserted AS (
        INSERT INTO deliveries
            (id, event_id, channel, recipient, status, attempts, created_at, updated_at)
        SELECT r.id, :event_id, r.channel, r.recipient, 'pending', 0, :now, :now
        FROM unnest(
            CAST(:ids AS varchar[]), CAST(:channels AS varchar[]), CAST(:recipients AS varchar[])
        ) AS r (id, channel, recipient)
        WHERE NOT EXISTS (
            SELECT 1 FROM existing e WHERE e.channel = r.channel AND e.recipient = r.recipient
        )
        ON CONFLICT (event_id, channel, recipient) DO NOTHING
        RETURNING id, channel
    )
    SELECT id, channel FROM inserted
    UNION ALL
    SELECT id, channel FROM existing WHERE status = 'pending'
    """
)
# The rows of a batch, locked, each with its event, ticket and message. Rows another worker holds
# are skipped (it is sending them). Ordered, so two batches that overlap lock in the same order.
_LOAD_DELIVERIES = (
    select(
        Delivery.id,
        Delivery.event_id,
        Delivery.channel,
        Delivery.recipient,
        Delivery.status,
        Delivery.attempts,
        Delivery.created_at,
        TicketEvent,
        Ticket,
        Message,
    )
    .select_from(Delivery)
    .outerjoin(TicketEvent, TicketEvent.id == Delivery.event_id)
    .outerjoin(Ticket, Ticket.id == TicketEvent.ticket_id)
    .outerjoin(Message, Message.id == TicketEvent.payload["message_id"].astext)
    .where(Delivery.id == any_(bindparam("delivery_ids", type_=ARRAY(String))))
    .order_by(Delivery.id)
    .with_for_update(of=Delivery, skip_locked=True)
)
# Every row's result in one statement. A retry keeps the row pending with its error; a sent row
# keeps the last error it met on the way (an operator may want to see it).
_RECORD_RESULTS = text(
    """
    UPDATE deliveries AS d
    SET status = r.status,
        attempts = r.attempts,
        updated_at = :now,
        last_error = COALESCE(r.error, d.last_error),
        sent_at = CASE WHEN r.status = 'sent' THEN :now ELSE d.sent_at END
    FROM unnest(
        CAST(:ids AS varchar[]),
        CAST(:statuses AS varchar[]),
        CAST(:attempts AS integer[]),
        CAST(:errors AS text[])
    ) AS r (id, status, attempts, error)
    WHERE d.id = r.id
    """
)
_LOCK_OPEN_EVENT = (
    select(_events.c.id)
    .where(_events.c.id == bindparam("event_id"), _events.c.completed_at.is_(None))
    .with_for_update()
)
_COMPLETE_EVENT = (
    update(_events)
    .where(
        _events.c.id == bindparam("event_id"),
        _events.c.completed_at.is_(None),
        ~exists().where(
            _deliveries.c.event_id == bindparam("event_id"),
            _deliveries.c.status == LedgerStatus.PENDING,
        ),
    )
    .values(completed_at=bindparam("now"))
)


@dataclass(frozen=True)
class DeliveryPlan:
    pending: list[str]  # ledger rows still to send
    event: TicketEvent | None  # None when the event no longer exists
    channels: list[str] = field(default_factory=list)  # each pending row's channel, in order

    def pending_for(self, *, webhooks: bool) -> list[str]:
        """The pending rows of the webhook channel (its own pool), or of the others."""
        return [
            i
            for i, c in zip(self.pending, self.channels, strict=True)
            if (c == WEBHOOK) == webhooks
        ]


async def plan_deliveries(
    session: AsyncSession, event_id: str, config: DeliveryConfig, now: datetime
) -> DeliveryPlan:
    """Record a ledger row for everyone who must hear of the event; return the pending row ids
    (and the event, for the caller's other decisions: loading it again costs a query).

    Idempotent: running it again for the same event adds nothing and returns what is still
    pending. An event with nothing left pending is marked completed.

    At most three statements: the event (locked) with its ticket and the assignee's email; the
    ledger rows inserted and the pending ones read back; the event's update at commit.
    """
    loaded = (await session.execute(_LOAD_EVENT, {"event_id": event_id})).first()
    if loaded is None:
        return DeliveryPlan([], None)
    event, ticket, assignee_email, webhook_endpoints = loaded
    if event.completed_at is not None:
        return DeliveryPlan([], event)
    if event.published_at is None:
        event.published_at = now  # picked up before the publisher could mark it
    if ticket is None:
        event.completed_at = now
        return DeliveryPlan([], event)
    audience = Audience(
        team_emails=config.team_emails,
        email_enabled=EMAIL in config.channels,
        slack_enabled=SLACK in config.channels,
        assignee_email=assignee_email if ticket.assignee_id else None,
        webhook_endpoints=(webhook_endpoints or []) if WEBHOOK in config.channels else (),
    )
    recipients = recipients_for(event, ticket, audience)
    if recipients:
        params = {
            "event_id": event.id,
            "now": now,
            "ids": [new_id() for _ in recipients],
            "channels": [r.channel for r in recipients],
            "recipients": [r.address for r in recipients],
        }
        pending = (await session.execute(_INSERT_AND_LIST_PENDING, params)).all()
    else:
        pending = (await session.execute(_PENDING_OF_EVENT, {"event_id": event.id})).all()
    if not pending:
        event.completed_at = now
    return DeliveryPlan([row[0] for row in pending], event, [row[1] for row in pending])


async def deliver_batch(
    session: AsyncSession, delivery_ids: Sequence[str], config: DeliveryConfig, now: datetime
) -> list[DeliveryResult]:
    """Send the notifications of ledger rows still pending (one result per id, in order).

    The rows stay locked during the sends, so a duplicate message for the same rows waits or
    skips them; the caller commits. The sends run concurrently, so the batch is settled about as
    soon as its slowest send: a worker killed before the commit sends the batch again (the
    ledger cannot know which of its emails the server took). One statement loads the rows with
    their events, tickets and messages, one records every result, and the events whose rows
    are all finished are marked completed.
    """
    loaded = (await session.execute(_LOAD_DELIVERIES, {"delivery_ids": list(delivery_ids)})).all()
    attempts: list[_Attempt] = []
    for (
        row_id,
        event_id,
        channel,
        recipient,
        status,
        tries,
        created,
        event,
        ticket,
        message,
    ) in loaded:
        if status == LedgerStatus.PENDING:
            attempts.append(
                _Attempt(
                    row_id, event_id, channel, recipient, tries, created, event, ticket, message
                )
            )
    if not attempts:
        return [DeliveryResult(Outcome.SKIPPED) for _ in delivery_ids]
    await asyncio.gather(*(attempt.run(config, now) for attempt in attempts))
    await session.execute(
        _RECORD_RESULTS,
        {
            "now": now,
            "ids": [a.id for a in attempts],
            "statuses": [a.status for a in attempts],
            "attempts": [a.attempts for a in attempts],
            "errors": [a.result.error[:2000] if a.result.error else None for a in attempts],
        },
    )
    finished_events = sorted({a.event_id for a in attempts if a.status != LedgerStatus.PENDING})
    for event_id in finished_events:  # in order: two batches lock shared events alike
        await complete_event_if_done(session, event_id, now)
    results = {a.id: a.result for a in attempts}
    return [results.get(i, DeliveryResult(Outcome.SKIPPED)) for i in delivery_ids]


_LEDGER_STATUS = {Outcome.SENT: LedgerStatus.SENT, Outcome.FAILED: LedgerStatus.FAILED}


@dataclass
class _Attempt:
    """One pending ledger row and what became of it."""

    id: str
    event_id: str
    channel: str
    recipient: str
    attempts: int
    created_at: datetime
    event: TicketEvent | None
    ticket: Ticket | None
    message: Message | None
    result: DeliveryResult = DeliveryResult(Outcome.SKIPPED)

    @property
    def status(self) -> LedgerStatus:
        """The ledger status the result leaves the row in (a retry stays pending)."""
        return _LEDGER_STATUS.get(self.result.outcome, LedgerStatus.PENDING)

    async def run(self, config: DeliveryConfig, now: datetime) -> None:
        bound = log.bind(
            event_id=self.event_id,
            ticket_id=self.ticket.id if self.ticket else None,
            channel=self.channel,
            delivery_id=self.id,
            request_id=self.event.request_id if self.event else None,
        )
        if self.event is None or self.ticket is None:
            return self._fail("event or ticket no longer exists", bound)
        channel = config.channels.get(self.channel)
        if channel is None:
            return self._fail("channel is not configured", bound)
        notice = notice_for(
            self.event, self.ticket, Recipient(self.channel, self.recipient), message=self.message
        )
        self.attempts += 1
        try:
            await channel.send(notice)
        except PermanentDeliveryError as exc:
            return self._fail(str(exc), bound)
        except TransientDeliveryError as exc:
            return self._retry(str(exc), exc.retry_after_s, config, bound, now - self.created_at)
        except Exception as exc:
            # A bug or a failure the channel did not classify: retried like a transient one
            # (and given up after max_attempts), so the other rows of the batch are still
            # recorded as sent instead of the whole batch being sent again.
            bound.exception("delivery.unexpected_error")
            error = f"{type(exc).__name__}: {exc}"
            return self._retry(error, None, config, bound, now - self.created_at)
        self.result = DeliveryResult(Outcome.SENT, channel=self.channel)
        bound.info("delivery.attempt", outcome="sent", attempt=self.attempts)
        return None

    def _retry(
        self,
        error: str,
        retry_after_s: float | None,
        config: DeliveryConfig,
        bound: structlog.typing.FilteringBoundLogger,
        age: timedelta,
    ) -> None:
        if self.attempts >= config.max_attempts and (
            # A webhook receiver may be down for hours: its rows are retried for a day (the
            # outbox sweep sends them again once the message's own retries are spent).
            self.channel != WEBHOOK or age >= WEBHOOK_RETRY_FOR
        ):
            return self._fail(f"gave up after {self.attempts} attempts: {error}", bound)
        self.result = DeliveryResult(
            Outcome.RETRY, retry_after_s=retry_after_s, error=error, channel=self.channel
        )
        bound.warning("delivery.attempt", outcome="retry", attempt=self.attempts, error=error)
        return None

    def _fail(self, error: str, bound: structlog.typing.FilteringBoundLogger) -> None:
        self.result = DeliveryResult(Outcome.FAILED, error=error, channel=self.channel)
        bound.error("delivery.attempt", outcome="failed", attempt=self.attempts, error=error)


async def complete_event_if_done(session: AsyncSession, event_id: str, now: datetime) -> bool:
    """Mark the event completed when none of its deliveries is pending (event row locked first,
    so two deliveries finishing at once cannot both miss the moment).

    The lock is its own statement on purpose: the conditional UPDATE that follows starts after
    the lock is granted, so under READ COMMITTED it sees what the previous holder committed.
    """
    if await session.scalar(_LOCK_OPEN_EVENT, {"event_id": event_id}) is None:
        return False
    done = await session.execute(_COMPLETE_EVENT, {"event_id": event_id, "now": now})
    return bool(getattr(done, "rowcount", 0))
