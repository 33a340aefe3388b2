"""The host app's webhook endpoints: each event as JSON, signed as Standard Webhooks says.

What a receiver may do to us is bounded: the host must resolve only to allowed addresses (checked
again at every send, since DNS can change after registration) and the request goes to the
address that was checked; redirects are not followed; the whole exchange has one deadline
(WEBHOOK_TIMEOUT_SECONDS), so a receiver that trickles bytes cannot hold a worker longer; at most
64 KiB of the answer is read, undecoded (no decompression bomb).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from domain.db import make_engine, make_sessionmaker
from domain.delivery import PermanentDeliveryError, TransientDeliveryError
from domain.ids import isoformat_z, utcnow
from domain.notifications import Notice
from domain.settings import Settings
from domain.webhooks import (
    HostUnresolvable,
    UrlPolicy,
    WebhookUrlRefused,
    default_port,
    load_for_delivery,
    parse_url,
    record_failure,
    record_success,
    resolve_allowed,
    signature_headers,
    signing_secrets,
)

MAX_RESPONSE_BYTES = 64 * 1024
# A Retry-After beyond this is taken as this: the ledger's retries last a day in all.
MAX_RETRY_AFTER_S = 3600.0
USER_AGENT = "helpdesk-webhooks/1"
# After consecutive failures an endpoint rests 1, 2, 4 ... up to this many seconds (or what its
# Retry-After asks) before the next request; see _Breaker.
MAX_REST_S = 60.0


@dataclass
class _Breaker:
    """One endpoint's recent failures, in this worker process.

    A receiver that hangs would otherwise hold a notifications thread for the whole timeout on
    every delivery and every retry, and so hold up the email and Slack rows queued behind them.
    After a failure the endpoint rests: its deliveries are put off without a request (retried
    when the rest is over); then one request probes it while the others keep waiting, and a
    success lets everything through again. All of a process's sends run on its one event loop,
    so no lock is needed.
    """

    failures: int = 0
    resting_until: float = 0.0  # time.monotonic()
    probing: bool = False


def webhook_payload(notice: Notice) -> dict[str, Any]:
    """The body: ``type``, ``timestamp`` and ``data``, the shape Standard Webhooks suggests."""
    details = dict(notice.details)
    message = None
    if notice.reply is not None:
        message = {
            "id": details.get("message_id"),
            "body": notice.reply.body,
            "is_admin": notice.reply.by_support,
            "created_at": isoformat_z(notice.reply.written_at),
        }
    return {
        "type": notice.event_type,
        "timestamp": isoformat_z(notice.occurred_at) if notice.occurred_at else None,
        "data": {
            "event_id": notice.event_id,
            "ticket": {
                "id": notice.ticket_id,
                "subject": notice.subject,
                "status": notice.status.value,
                "priority": notice.priority.value,
                "category": notice.category.value if notice.category else None,
                "user_id": notice.requester,
                "assignee_id": notice.assignee,
            },
            "message": message,
            "details": details,  # the event's own facts: changes, close reason, SLA deadline
        },
    }


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from now (it may be seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class WebhookChannel:
    """Sends one notice to one endpoint (the notice's recipient is the endpoint's id).

    The endpoint (its URL, secrets, whether it is enabled) is read at each send, from a small
    engine of the channel's own, and its health is written back there: a success clears
    ``failing_since``; a failure sets it, and disables the endpoint once it is old enough.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        tls: ssl.SSLContext | None = None,  # the certificates to trust (tests); default: system
    ) -> None:
        self.settings = settings
        self.policy = UrlPolicy.of(settings)
        self.timeout_s = settings.webhook_timeout_s
        self.disable_after = timedelta(seconds=settings.webhook_disable_after_s)
        self.clock = clock
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self.tls = tls
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._breakers: dict[str, _Breaker] = {}

    def _db(self) -> async_sessionmaker[AsyncSession]:
        # Made on first use, inside the worker's event loop, like the HTTP client.
        if self._sessions is None:
            self._engine = make_engine(self.settings, pool_size=4)
            self._sessions = make_sessionmaker(self._engine)
        return self._sessions

    def _http(self, host: str) -> httpx.AsyncClient:
        """A client per host name: requests go to an address, and a pool keyed by address alone
        would reuse one name's TLS connection (its SNI, its certificate) for another name."""
        client = self._clients.get(host)
        if client is None:
            client = self._clients[host] = httpx.AsyncClient(
                timeout=self.timeout_s,
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: we connect where we checked
                verify=self.tls if self.tls is not None else True,
            )
        return client

    async def send(self, notice: Notice) -> None:
        async with self._db()() as session:
            endpoint = await load_for_delivery(session, notice.recipient)
        if endpoint is None:
            raise PermanentDeliveryError("the webhook endpoint was deleted")
        if not endpoint.enabled:
            why = endpoint.disabled_reason or "by an admin"
            raise PermanentDeliveryError(f"the webhook endpoint is disabled ({why})")
        breaker = self._admit(endpoint.id)
        now = self.clock()
        body = json.dumps(webhook_payload(notice), separators=(",", ":")).encode()
        # webhook-id is the event's id, the same on every retry, so receivers can drop copies.
        headers = signature_headers(
            signing_secrets(endpoint, now), notice.event_id, int(now.timestamp()), body
        )
        try:
            await self.post(endpoint.url, body, headers)
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            if isinstance(exc, TransientDeliveryError):  # the endpoint's trouble, not the row's
                self._rest(endpoint.id, breaker, exc.retry_after_s)
            elif breaker is not None:
                breaker.probing = False
            async with self._db()() as session:
                await record_failure(
                    session,
                    endpoint.id,
                    ticket_id=notice.ticket_id,
                    error=str(exc),
                    now=self.clock(),
                    disable_after=self.disable_after,
                )
                await session.commit()
            raise
        except BaseException:
            if breaker is not None:
                breaker.probing = False
            raise
        self._breakers.pop(endpoint.id, None)
        if endpoint.failing_since is not None:
            async with self._db()() as session:
                await record_success(session, endpoint.id, self.clock())
                await session.commit()

    def _admit(self, endpoint_id: str) -> _Breaker | None:
        """Let a request to the endpoint go, or put the delivery off while it rests or while
        another request probes it. Returns the breaker of a probe (None: the endpoint is fine)."""
        breaker = self._breakers.get(endpoint_id)
        if breaker is None:
            return None
        wait = breaker.resting_until - time.monotonic()
        if wait > 0:
            raise TransientDeliveryError(
                f"not sent: the receiver failed {breaker.failures} time(s) in a row and rests "
                f"{wait:.1f} s more",
                retry_after_s=wait,
            )
        if breaker.probing:
            raise TransientDeliveryError(
                "not sent: another request is probing the failing receiver",
                retry_after_s=self.timeout_s,
            )
        breaker.probing = True
        return breaker

    def _rest(self, endpoint_id: str, breaker: _Breaker | None, retry_after: float | None) -> None:
        breaker = breaker or self._breakers.setdefault(endpoint_id, _Breaker())
        breaker.failures += 1
        breaker.probing = False
        rest = min(2.0 ** (breaker.failures - 1), MAX_REST_S)
        breaker.resting_until = time.monotonic() + max(rest, retry_after or 0.0)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sessions = None

    async def post(self, url: str, body: bytes, signed: dict[str, str]) -> None:
        """POST ``body`` to ``url`` within the limits above; raises the ledger's errors."""
        try:
            parts = parse_url(url, self.policy)
        except WebhookUrlRefused as exc:
            raise PermanentDeliveryError(f"webhook URL refused: {exc}") from None
        host = parts.hostname or ""
        port = default_port(parts)
        try:
            addresses = await resolve_allowed(host, port, allow_private=self.policy.allow_private)
        except HostUnresolvable as exc:
            raise TransientDeliveryError(str(exc)) from None
        except WebhookUrlRefused as exc:
            raise PermanentDeliveryError(str(exc)) from None
        # Connect to the address just checked, not to whatever the name resolves to next; the
        # Host header and TLS (SNI and certificate check) still use the name.
        address = addresses[0]
        pinned_host = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=f"{pinned_host}:{port}").geturl()
        headers = {
            **signed,
            "content-type": "application/json",
            "host": parts.netloc.rpartition("@")[2],
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",
        }
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._http(host).stream(
                    "POST", pinned, content=body, headers=headers, extensions=extensions
                ) as response:
                    answer = await _read_capped(response)
        except TimeoutError:
            raise TransientDeliveryError(
                f"the receiver did not answer within {self.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"receiver unreachable: {type(exc).__name__}") from None
        _raise_for(response, answer, self.clock(), time.monotonic() - started)


async def _read_capped(response: httpx.Response) -> bytes:
    """At most MAX_RESPONSE_BYTES of the body, as sent (never decompressed); the rest unread."""
    received = bytearray()
    async for chunk in response.aiter_raw():
        received += chunk
        if len(received) >= MAX_RESPONSE_BYTES:
            break
    return bytes(received[:MAX_RESPONSE_BYTES])


def _raise_for(response: httpx.Response, answer: bytes, now: datetime, took_s: float) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    snippet = answer[:200].decode("utf-8", errors="replace")
    detail = f"the receiver answered {status} after {took_s:.1f} s: {snippet}"
    if 300 <= status < 400:
        location = response.headers.get("location", "")[:300]
        raise PermanentDeliveryError(
            f"the receiver answered {status}, a redirect to {location!r}; redirects are not "
            "followed: register the final URL"
        )
    if status in (408, 429) or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
        raise TransientDeliveryError(detail, retry_after_s=retry_after)
    raise PermanentDeliveryError(detail)
