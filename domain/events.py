"""Domain events: what a change to a ticket caused, written to ``ticket_events`` (the audit trail
and the outbox) in the writer's transaction, and published after its commit.

One path: the ticket's methods return :class:`NewEvent` values; :func:`write` is the only code
that inserts event rows, and it remembers their ids on the session; whoever commits the session
takes them with :func:`take_pending_event_ids` and hands them to the publisher.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import TextClause, text

from domain.db import Executor
from domain.ids import new_id


class EventType(StrEnum):
    TICKET_CREATED = "ticket.created"
    MESSAGE_CREATED = "message.created"
    TICKET_UPDATED = "ticket.updated"
    TICKET_CLOSED = "ticket.closed"
    TICKET_SLA_BREACHED = "ticket.sla_breached"
    # A share of an SLA target has elapsed (SLA policy ``warn_at``); payload names the target.
    TICKET_SLA_WARNING = "ticket.sla_warning"
    DELIVERY_RETRIED = "delivery.retried"  # an operator sent a failed notification again
    # A webhook endpoint failed for too long and was switched off (the team is told); it rides
    # on the ticket whose delivery was the last to fail, as every event belongs to a ticket.
    WEBHOOK_DISABLED = "webhook.disabled"


@dataclass(frozen=True)
class NewEvent:
    """An event a ticket's method caused, not yet written. ``actor_id`` is None for the
    service's own timers (auto-close, SLA breach)."""

    ticket_id: str
    type: EventType
    payload: dict[str, Any]
    at: datetime
    actor_id: str | None = None
    actor_is_admin: bool = False
    id: str = field(default_factory=new_id)


_PENDING_KEY = "pending_event_ids"


def insert_statement(ctes: str = "") -> TextClause:
    """The one INSERT of event rows, optionally after ``ctes`` (``WITH ...``) that write other
    rows in the same statement. The rows go in as arrays, so the text is the same whatever their
    number (prepared once) and a batch of a thousand is one round trip."""
    return text(
        f"""{ctes}
        INSERT INTO ticket_events
            (id, ticket_id, type, actor_id, actor_is_admin, payload, request_id, created_at,
             publish_count)
        SELECT e.id, e.ticket_id, e.type, e.actor_id, e.actor_is_admin, e.payload,
               :e_request_id, e.created_at, 0
        FROM unnest(
            CAST(:e_ids AS varchar[]), CAST(:e_ticket_ids AS varchar[]),
            CAST(:e_types AS varchar[]), CAST(:e_actor_ids AS varchar[]),
            CAST(:e_actor_is_admin AS boolean[]), CAST(:e_payloads AS jsonb[]),
            CAST(:e_created_at AS timestamptz[])
        ) AS e (id, ticket_id, type, actor_id, actor_is_admin, payload, created_at)
        """
    )


_INSERT_EVENTS = insert_statement()


async def write(
    session: Executor,
    new_events: Sequence[NewEvent],
    *,
    statement: TextClause = _INSERT_EVENTS,
    params: dict[str, Any] | None = None,
) -> list[str]:
    """Insert ``new_events`` in the session's transaction and remember their ids for publishing
    after commit; returns the ids. ``statement`` (from :func:`insert_statement`) and ``params``
    let a caller write other rows in the same statement.

    The request id of the HTTP request that caused them (bound in structlog's context) is kept
    on each row, so the logs of the notifications they trigger can be traced back.
    """
    if not new_events:
        return []
    ids = [event.id for event in new_events]
    await session.execute(
        statement,
        {
            **(params or {}),
            "e_request_id": structlog.contextvars.get_contextvars().get("request_id"),
            "e_ids": ids,
            "e_ticket_ids": [event.ticket_id for event in new_events],
            "e_types": [event.type.value for event in new_events],
            "e_actor_ids": [event.actor_id for event in new_events],
            "e_actor_is_admin": [event.actor_is_admin for event in new_events],
            "e_payloads": [json.dumps(event.payload) for event in new_events],
            "e_created_at": [event.at for event in new_events],
        },
    )
    session.info.setdefault(_PENDING_KEY, []).extend(ids)
    return ids


def publish_again_after_commit(session: Executor, event_ids: Sequence[str]) -> None:
    """Hand events written earlier to the publisher again when this session commits (an
    operator's retry: the events pool plans the event once more and finds its pending rows)."""
    session.info.setdefault(_PENDING_KEY, []).extend(event_ids)


def take_pending_event_ids(session: Executor) -> list[str]:
    """The ids of events written in this session since the last call (call after commit)."""
    ids: list[str] = session.info.pop(_PENDING_KEY, [])
    return ids
