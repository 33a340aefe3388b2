"""Outbound webhooks: the endpoints the host app registers, their secrets and signatures, which
addresses may be called, and each endpoint's health.

Deliveries go through the same outbox and ledger as email and Slack (channel ``webhook``, one
ledger row per event and endpoint, the recipient being the endpoint's id). Messages are signed as
the Standard Webhooks specification says, so receivers verify them with an existing library:
``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp`` (seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; several,
space-separated, while a rotated secret is still valid).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import SplitResult, urlsplit

from sqlalchemy import Boolean, String, Table, Text, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from domain import events
from domain.base import ID, TZ, Base
from domain.errors import NotFound
from domain.events import EventType, NewEvent
from domain.ids import is_valid_id, isoformat_z, new_id
from domain.settings import Settings
from domain.tickets import Page

URL_MAX = 2048
EVENT_TYPES_MAX = 32
# Events about the service's own operation, never sent to the host app.
_INTERNAL_EVENTS = frozenset({EventType.DELIVERY_RETRIED, EventType.WEBHOOK_DISABLED})
# What an endpoint may ask for: every event about a ticket.
SUBSCRIBABLE = tuple(t.value for t in EventType if t not in _INTERNAL_EVENTS)
# A webhook delivery is retried (with backoff) until it is this old, whatever the attempts.
RETRY_FOR = timedelta(days=1)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    url: Mapped[str] = mapped_column(String(URL_MAX))
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    enabled: Mapped[bool] = mapped_column(Boolean)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    failing_since: Mapped[datetime | None] = mapped_column(TZ)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


_endpoints = cast(Table, WebhookEndpoint.__table__)


# -- secrets and signatures --------------------------------------------------------------------

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` entry: HMAC-SHA256, keyed with the secret's decoded bytes, of
    ``{msg_id}.{timestamp}.{body}``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The current secret, and the previous one while its grace period lasts: during a
    rotation receivers may hold either, and the spec lets one message carry both signatures."""
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and now < expires:
        found.append(endpoint.previous_secret)
    return found


def signature_headers(
    secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


# -- which addresses may be called -------------------------------------------------------------


class WebhookUrlRefused(ValueError):
    """The URL is malformed, or names an address the operator has not allowed."""


class HostUnresolvable(WebhookUrlRefused):
    """The host does not resolve (at send time, maybe only for now)."""


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: bool  # WEBHOOK_ALLOW_PRIVATE: loopback and private networks (dev, tests)
    require_https: bool  # everywhere but development and WEBHOOK_ALLOW_PRIVATE

    @classmethod
    def of(cls, settings: Settings) -> UrlPolicy:
        return cls(
            allow_private=settings.webhook_allow_private,
            require_https=not (settings.webhook_allow_private or settings.is_development),
        )


def parse_url(url: str, policy: UrlPolicy) -> SplitResult:
    """Check the URL's form (not its address): http(s), a host, no credentials or fragment."""
    if len(url) > URL_MAX or any(c.isspace() or ord(c) < 32 for c in url):
        raise WebhookUrlRefused(f"must be a URL of at most {URL_MAX} characters, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlRefused("must be an http or https URL")
    if parts.scheme != "https" and policy.require_https:
        raise WebhookUrlRefused("must be an https URL")
    if not parts.hostname:
        raise WebhookUrlRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("must not carry credentials (user:password@)")
    if parts.fragment:
        raise WebhookUrlRefused("must not have a #fragment")
    if port == 0:
        raise WebhookUrlRefused("must not name port 0")
    return parts


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A resolver that does not answer must not hold a request (or a delivery) for long.
RESOLVE_TIMEOUT_S = 3.0


def refused_address(address: IPAddress) -> str | None:
    """Why a request to ``address`` is not allowed without WEBHOOK_ALLOW_PRIVATE, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for flag, what in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, flag):
            return f"{address} is a {what} address"
    if not address.is_global:  # shared (100.64/10), documentation, 6to4 of private, ...
        return f"{address} is not a public address"
    return None


async def resolve_allowed(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """The addresses ``host`` resolves to, all of them allowed; raises WebhookUrlRefused when
    any is not (a name with one private address among public ones could be steered to it)."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except TimeoutError:
            raise HostUnresolvable(f"host {host!r} did not resolve in time") from None
        except (OSError, UnicodeError) as exc:
            raise HostUnresolvable(f"host {host!r} does not resolve ({exc})") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise HostUnresolvable(f"host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = refused_address(address)
            if reason is not None:
                raise WebhookUrlRefused(
                    f"{host} is not allowed: {reason} (WEBHOOK_ALLOW_PRIVATE is off)"
                )
    return addresses


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, policy: UrlPolicy) -> str:
    """The URL, once its form and every address its host resolves to are allowed."""
    parts = parse_url(url, policy)
    assert parts.hostname is not None  # parse_url refuses a URL without one
    await resolve_allowed(parts.hostname, default_port(parts), allow_private=policy.allow_private)
    return url


# -- the endpoints: registered, listed, changed, deleted, rotated --------------------------------


def check_event_types(event_types: Sequence[str]) -> list[str]:
    """The wanted types, each known and listed once (order kept); ValueError otherwise."""
    unknown = [t for t in event_types if t not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(
            f"`event_types` has unknown type(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(SUBSCRIBABLE)}"
        )
    if not event_types:
        raise ValueError("`event_types` must name at least one event type")
    return list(dict.fromkeys(event_types))


async def create_endpoint(
    session: AsyncSession, *, url: str, event_types: Sequence[str], enabled: bool, now: datetime
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the caller shows it once, then never again)."""
    endpoint = WebhookEndpoint(
        id=new_id(),
        url=url,
        event_types=check_event_types(event_types),
        enabled=enabled,
        secret=new_secret(),
        previous_secret=None,
        previous_secret_expires_at=None,
        failing_since=None,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    await session.flush()
    return endpoint


async def list_endpoints(session: AsyncSession, *, page: int, per_page: int) -> Page:
    """Endpoints, newest first."""
    query = (
        select(WebhookEndpoint, func.count().over().label("total"))
        .order_by(WebhookEndpoint.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    rows = (await session.execute(query)).all()
    total = int(rows[0].total) if rows else 0
    if not rows and page > 1:  # past the last page: no row carries the total
        total = int(await session.scalar(select(func.count()).select_from(_endpoints)) or 0)
    items: Any = [endpoint for endpoint, _ in rows]
    return Page(items=items, page=page, per_page=per_page, total=total)


async def get_endpoint(
    session: AsyncSession, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint:
    if not is_valid_id(endpoint_id):
        raise NotFound("webhook endpoint")
    endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=for_update)
    if endpoint is None:
        raise NotFound("webhook endpoint")
    return endpoint


async def update_endpoint(
    session: AsyncSession,
    endpoint_id: str,
    *,
    now: datetime,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given. Enabling an endpoint again starts its health afresh: it is no longer
    failing, and no longer says why it was disabled."""
    endpoint = await get_endpoint(session, endpoint_id, for_update=True)
    if url is not None:
        endpoint.url = url
    if event_types is not None:
        endpoint.event_types = check_event_types(event_types)
    if enabled is not None:
        if enabled and not endpoint.enabled:
            endpoint.failing_since = None
            endpoint.disabled_reason = None
        endpoint.enabled = enabled
    endpoint.updated_at = now
    await session.flush()
    return endpoint


async def delete_endpoint(session: AsyncSession, endpoint_id: str) -> None:
    """Remove the endpoint; its pending deliveries then fail (the ledger keeps them)."""
    endpoint = await get_endpoint(session, endpoint_id, for_update=True)
    await session.delete(endpoint)
    await session.flush()


async def rotate_secret(
    session: AsyncSession, endpoint_id: str, *, now: datetime, grace: timedelta
) -> WebhookEndpoint:
    """A new secret; the current one stays valid (messages carry both signatures) for
    ``grace``, so receivers can switch without dropping a message."""
    endpoint = await get_endpoint(session, endpoint_id, for_update=True)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = now + grace
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    await session.flush()
    return endpoint


# -- health: an endpoint failing for too long is disabled, and the team told ----------------------


async def load_for_delivery(session: AsyncSession, endpoint_id: str) -> WebhookEndpoint | None:
    return await session.get(WebhookEndpoint, endpoint_id)


async def record_success(session: AsyncSession, endpoint_id: str, now: datetime) -> None:
    """The endpoint answered: it is not failing any more."""
    await session.execute(
        update(_endpoints)
        .where(_endpoints.c.id == endpoint_id, _endpoints.c.failing_since.is_not(None))
        .values(failing_since=None, updated_at=now)
    )


async def record_failure(
    session: AsyncSession,
    endpoint_id: str,
    *,
    ticket_id: str,
    error: str,
    now: datetime,
    disable_after: timedelta,
) -> bool:
    """Note that a delivery to the endpoint failed; disable it when it has failed for
    ``disable_after`` without a success in between. Returns whether this call disabled it.

    Disabling is a conditional update, so of many deliveries failing at once exactly one
    writes the ``webhook.disabled`` event that tells the team (through the normal outbox).
    """
    await session.execute(
        update(_endpoints)
        .where(_endpoints.c.id == endpoint_id, _endpoints.c.failing_since.is_(None))
        .values(failing_since=now, updated_at=now)
    )
    disabled = (
        await session.execute(
            update(_endpoints)
            .where(
                _endpoints.c.id == endpoint_id,
                _endpoints.c.enabled,
                _endpoints.c.failing_since <= now - disable_after,
            )
            .values(enabled=False, updated_at=now)
            .returning(_endpoints.c.url, _endpoints.c.failing_since)
        )
    ).first()
    if disabled is None:
        return False
    url, since = disabled
    why = f"failing since at least {isoformat_z(since)}; last error: {error[:500]}"
    await session.execute(
        update(_endpoints).where(_endpoints.c.id == endpoint_id).values(disabled_reason=why)
    )
    payload = {"endpoint_id": endpoint_id, "url": url, "failing_since": isoformat_z(since)}
    payload["reason"] = why
    await events.write(session, [NewEvent(ticket_id, EventType.WEBHOOK_DISABLED, payload, now)])
    return True
