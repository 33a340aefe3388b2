"""Request and response bodies of the webhook endpoints' API (/v1/admin/support/webhooks).

The signing secret appears in two answers only, the create and the rotate; a list or a get
never shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from api.schemas import Pagination, pagination_of
from domain.ids import isoformat_z
from domain.tickets import Page
from domain.webhooks import (
    EVENT_TYPES_MAX,
    SUBSCRIBABLE,
    URL_MAX,
    WebhookEndpoint,
    check_event_types,
)

Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=URL_MAX,
        description=(
            "Where events are POSTed: https (http only in development or with "
            "WEBHOOK_ALLOW_PRIVATE); the host must resolve to public addresses only."
        ),
        examples=["https://app.example.com/hooks/helpdesk"],
    ),
]
EventTypes = Annotated[
    list[Annotated[str, Meta(max_length=64)]],
    Meta(
        min_length=1,
        max_length=EVENT_TYPES_MAX,
        description=f"The events wanted, among: {', '.join(SUBSCRIBABLE)}.",
        examples=[["ticket.created", "message.created"]],
    ),
]


class CreateWebhook(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    event_types: EventTypes
    enabled: bool = True

    def __post_init__(self) -> None:
        check_event_types(self.event_types)


class UpdateWebhook(msgspec.Struct, forbid_unknown_fields=True):
    """Every field optional. ``enabled: true`` on a disabled endpoint clears its failure."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    event_types: EventTypes | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.event_types, list):
            check_event_types(self.event_types)


class WebhookOut(msgspec.Struct):
    id: str
    url: str
    event_types: list[str]
    enabled: bool
    failing_since: str | None  # deliveries have failed without a success since then
    disabled_reason: str | None  # set when the service disabled it
    previous_secret_expires_at: str | None  # after a rotation: the old secret's last moment
    created_at: str
    updated_at: str


class WebhookWithSecret(WebhookOut):
    """The create and rotate answers: the secret, shown this once."""

    secret: str


class WebhookList(msgspec.Struct):
    data: list[WebhookOut]
    pagination: Pagination
    success: bool = True


def _when(moment: datetime | None) -> str | None:
    return isoformat_z(moment) if moment is not None else None


def webhook_out(endpoint: WebhookEndpoint) -> WebhookOut:
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        enabled=endpoint.enabled,
        failing_since=_when(endpoint.failing_since),
        disabled_reason=endpoint.disabled_reason,
        previous_secret_expires_at=_when(endpoint.previous_secret_expires_at),
        created_at=isoformat_z(endpoint.created_at),
        updated_at=isoformat_z(endpoint.updated_at),
    )


def webhook_with_secret(endpoint: WebhookEndpoint) -> WebhookWithSecret:
    shown = msgspec.structs.asdict(webhook_out(endpoint))
    return WebhookWithSecret(**shown, secret=endpoint.secret)


def webhook_list(page: Page) -> WebhookList:
    endpoints: list[Any] = list(page.items)  # WebhookEndpoint rows (domain.webhooks)
    return WebhookList(data=[webhook_out(e) for e in endpoints], pagination=pagination_of(page))
