"""Slack incoming webhook: one message per event, honouring 429 Retry-After."""

from __future__ import annotations

from typing import Any

import httpx

from domain.delivery import PermanentDeliveryError, TransientDeliveryError
from domain.notifications import Notice
from workers.channels.headlines import HEADLINES


def slack_message(notice: Notice) -> dict[str, Any]:
    """The webhook's payload: a one-line ``text`` (what notifications show) and the blocks."""
    headline = HEADLINES[notice.kind]
    fields = [
        _mrkdwn(f"*Priority:*\n{notice.priority}"),
        _mrkdwn(f"*Category:*\n{notice.category or '-'}"),
        _mrkdwn(f"*Requester:*\n{notice.requester}"),
        _mrkdwn(f"*Status:*\n{notice.status}"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        *(
            [{"type": "section", "text": _mrkdwn(_escape(notice.explanation[:2900]))}]
            if notice.explanation
            else []
        ),
        {"type": "section", "text": _mrkdwn(f"*{_escape(notice.subject)}*")},
        {"type": "section", "fields": fields},
    ]
    if notice.reply is not None:
        blocks.append({"type": "section", "text": _mrkdwn(_escape(notice.reply.body[:2900]))})
    blocks.append({"type": "context", "elements": [_mrkdwn(f"Ticket {notice.ticket_id}")]})
    return {
        "text": f"{headline}: {notice.subject} [{notice.priority}] (ticket {notice.ticket_id})",
        "blocks": blocks,
    }


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackChannel:
    def __init__(self, webhook_url: str, *, timeout_s: float = 10.0) -> None:
        self.webhook_url = webhook_url
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the worker's event loop, and reused for its connections.
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    async def send(self, notice: Notice) -> None:
        try:
            response = await self._http().post(self.webhook_url, json=slack_message(notice))
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"Slack unreachable: {type(exc).__name__}") from exc
        if response.status_code < 300:
            return
        detail = f"Slack answered {response.status_code}: {response.text[:200]}"
        if response.status_code == 429:
            raise TransientDeliveryError(detail, retry_after_s=_retry_after(response))
        if response.status_code >= 500:
            raise TransientDeliveryError(detail)
        raise PermanentDeliveryError(detail)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None
