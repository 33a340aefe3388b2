"""Response bodies of the operator's view (deliveries, audit trail). Admin-only: recipient
addresses appear here and nowhere a user can see."""

from __future__ import annotations

from typing import Any

import msgspec

from api.schemas import Pagination, pagination_of
from domain.delivery import LedgerStatus
from domain.ids import isoformat_z
from domain.models import Delivery
from domain.operations import HistoryEntry
from domain.tickets import Page


class DeliveryOut(msgspec.Struct):
    id: str
    event_id: str
    event_type: str
    ticket_id: str
    channel: str
    recipient: str
    status: LedgerStatus
    attempts: int
    last_error: str | None
    created_at: str
    updated_at: str
    sent_at: str | None


class DeliveryList(msgspec.Struct):
    data: list[DeliveryOut]
    pagination: Pagination
    success: bool = True


class NotificationCaused(msgspec.Struct):
    id: str
    channel: str
    recipient: str
    status: LedgerStatus
    attempts: int
    sent_at: str | None


class AuditEntry(msgspec.Struct):
    id: str
    type: str
    actor_id: str | None
    actor_is_admin: bool
    payload: dict[str, Any]
    created_at: str
    notifications: list[NotificationCaused]


class AuditTrail(msgspec.Struct):
    data: list[AuditEntry]
    pagination: Pagination
    success: bool = True


def _when(moment: Any) -> str | None:
    return isoformat_z(moment) if moment is not None else None


def delivery_out(row: Any, *, event_type: str, ticket_id: str) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        event_id=row.event_id,
        event_type=event_type,
        ticket_id=ticket_id,
        channel=row.channel,
        recipient=row.recipient,
        status=LedgerStatus(row.status),
        attempts=row.attempts,
        last_error=row.last_error,
        created_at=isoformat_z(row.created_at),
        updated_at=isoformat_z(row.updated_at),
        sent_at=_when(row.sent_at),
    )


def delivery_list(page: Page) -> DeliveryList:
    rows: list[Any] = list(page.items)  # rows of domain.operations.list_deliveries
    return DeliveryList(
        data=[delivery_out(r, event_type=r.event_type, ticket_id=r.ticket_id) for r in rows],
        pagination=pagination_of(page),
    )


def _caused(delivery: Delivery) -> NotificationCaused:
    return NotificationCaused(
        id=delivery.id,
        channel=delivery.channel,
        recipient=delivery.recipient,
        status=LedgerStatus(delivery.status),
        attempts=delivery.attempts,
        sent_at=_when(delivery.sent_at),
    )


def audit_trail(page: Page, entries: list[HistoryEntry]) -> AuditTrail:
    return AuditTrail(
        data=[
            AuditEntry(
                id=e.event.id,
                type=e.event.type,
                actor_id=e.event.actor_id,
                actor_is_admin=e.event.actor_is_admin,
                payload=e.event.payload or {},
                created_at=isoformat_z(e.event.created_at),
                notifications=[_caused(d) for d in e.deliveries],
            )
            for e in entries
        ],
        pagination=pagination_of(page),
    )
