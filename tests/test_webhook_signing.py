"""Webhook signatures as receivers check them (the standardwebhooks package, an implementation
that is not ours), the addresses we refuse to call, Retry-After, and who gets a webhook."""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from domain.events import EventType
from domain.ids import utcnow
from domain.lifecycle import Priority, Status
from domain.models import Ticket, TicketEvent
from domain.notifications import EMAIL, SLACK, WEBHOOK, Audience, Recipient, recipients_for
from domain.webhooks import (
    SUBSCRIBABLE,
    UrlPolicy,
    WebhookEndpoint,
    WebhookUrlRefused,
    new_secret,
    parse_url,
    refused_address,
    resolve_allowed,
    signature_headers,
    signing_secrets,
)
from tests.notices import sample_notice
from workers.channels.webhook import retry_after_seconds, webhook_payload

NOW = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)


def endpoint(**fields: object) -> WebhookEndpoint:
    values: dict[str, object] = {
        "id": "01JN2XG6H7J8K9M0N1P2Q3R4S5",
        "url": "https://hooks.example.com/in",
        "event_types": ["ticket.created"],
        "enabled": True,
        "secret": new_secret(),
        "previous_secret": None,
        "previous_secret_expires_at": None,
        "failing_since": None,
        "disabled_reason": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(fields)
    return WebhookEndpoint(**values)


def signed(secrets: list[str], body: bytes) -> dict[str, str]:
    # Receivers refuse a timestamp more than five minutes away from their clock: sign "now".
    return signature_headers(secrets, "01JN2XH7J8K9M0N1P2Q3R4S5T6", int(utcnow().timestamp()), body)


def test_a_secret_has_the_standard_form() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret


def test_the_standardwebhooks_library_verifies_our_signature() -> None:
    secret = new_secret()
    body = json.dumps({"type": "ticket.created", "data": {"subject": "Zahlung fehlt €"}}).encode()
    headers = signed([secret], body)
    assert headers["webhook-id"] == "01JN2XH7J8K9M0N1P2Q3R4S5T6"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["type"] == "ticket.created"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # a body changed on the way
        Webhook(secret).verify(body.replace(b"created", b"closed!"), headers)


def test_during_the_grace_period_both_secrets_verify_and_after_it_only_the_new() -> None:
    old, new = new_secret(), new_secret()
    rotated = endpoint(
        secret=new, previous_secret=old, previous_secret_expires_at=NOW + timedelta(hours=24)
    )
    body = b'{"type":"ticket.updated"}'
    during = signed(signing_secrets(rotated, NOW + timedelta(hours=23)), body)
    assert len(during["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, during)
    Webhook(new).verify(body, during)
    after = signed(signing_secrets(rotated, NOW + timedelta(hours=24)), body)
    assert len(after["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(body, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, after)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address)) is None


async def test_a_name_is_refused_when_it_resolves_to_a_private_address() -> None:
    with pytest.raises(WebhookUrlRefused, match="loopback"):
        await resolve_allowed("localhost", 80, allow_private=False)
    assert await resolve_allowed("localhost", 80, allow_private=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "http or https"),
        ("http://hooks.example.com/x", "https"),
        ("https:///x", "host"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com:99999/x", "valid URL"),
        ("https://hooks.example.com/a b", "without spaces"),
    ],
)
def test_malformed_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlRefused, match=reason):
        parse_url(url, UrlPolicy(allow_private=False, require_https=True))


def test_retry_after_is_seconds_or_an_http_date_and_capped() -> None:
    assert retry_after_seconds("7", NOW) == 7
    assert retry_after_seconds("Sun, 15 Mar 2026 10:00:30 GMT", NOW) == 30
    assert retry_after_seconds("Sun, 15 Mar 2026 09:00:00 GMT", NOW) == 0  # in the past
    assert retry_after_seconds("86400", NOW) == 3600
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None


def test_the_payload_is_the_event_with_its_ticket() -> None:
    notice = sample_notice(
        channel=WEBHOOK,
        recipient="01JN2XG6H7J8K9M0N1P2Q3R4S5",
        event_type=EventType.MESSAGE_CREATED,
        occurred_at=NOW,
        details={"message_id": "m-1", "is_admin": False},
    )
    payload = webhook_payload(notice)
    assert payload["type"] == "message.created"
    assert payload["timestamp"] == "2026-03-15T10:00:00Z"
    data = payload["data"]
    assert data["event_id"] == "event-1"
    assert data["ticket"] == {
        "id": "ticket-1",
        "subject": "Payment not received",
        "status": "open",
        "priority": "normal",
        "category": None,
        "user_id": "user-1",
        "assignee_id": None,
    }
    assert data["message"] == {
        "id": "m-1",
        "body": "Hello\n",
        "is_admin": False,
        "created_at": "2026-03-15T10:00:00Z",
    }
    assert json.loads(json.dumps(payload)) == payload
    assert webhook_payload(replace(notice, reply=None))["data"]["message"] is None


def _ticket() -> Ticket:
    return Ticket(
        id="01JN2XG6H7J8K9M0N1P2Q3R4S5",
        user_id="user-1",
        requester_email="req@example.com",
        subject="s",
        status=Status.OPEN.value,
        priority=Priority.NORMAL.value,
        category=None,
        assignee_id=None,
    )


def _event(type_: EventType, **payload: object) -> TicketEvent:
    return TicketEvent(
        id="01JN2XH7J8K9M0N1P2Q3R4S5T6",
        ticket_id="01JN2XG6H7J8K9M0N1P2Q3R4S5",
        type=type_,
        actor_id="user-1",
        actor_is_admin=False,
        payload=payload,
        created_at=NOW,
    )


def test_every_endpoint_that_wants_the_event_gets_one_delivery_besides_the_others() -> None:
    audience = Audience(
        team_emails=("team@x.test",),
        email_enabled=True,
        slack_enabled=True,
        webhook_endpoints=("EP1", "EP2"),
    )
    found = set(recipients_for(_event(EventType.TICKET_CREATED), _ticket(), audience))
    assert found == {
        Recipient(EMAIL, "team@x.test"),
        Recipient(SLACK, "webhook"),
        Recipient(WEBHOOK, "EP1"),
        Recipient(WEBHOOK, "EP2"),
    }
    # An event that tells no one else still reaches the endpoints that asked for it.
    updated = _event(EventType.TICKET_UPDATED, changes={"assignee_id": {"old": None, "new": "a"}})
    assert set(recipients_for(updated, _ticket(), audience)) == {
        Recipient(WEBHOOK, "EP1"),
        Recipient(WEBHOOK, "EP2"),
    }


def test_a_disabled_endpoint_is_news_for_the_team_and_never_a_webhook_type() -> None:
    audience = Audience(team_emails=("team@x.test",), email_enabled=True)
    disabled = _event(EventType.WEBHOOK_DISABLED, endpoint_id="EP1", url="https://x", reason="r")
    assert recipients_for(disabled, _ticket(), audience) == [Recipient(EMAIL, "team@x.test")]
    assert "webhook.disabled" not in SUBSCRIBABLE
    assert "delivery.retried" not in SUBSCRIBABLE
    assert {"ticket.created", "message.created", "ticket.updated"} <= set(SUBSCRIBABLE)
