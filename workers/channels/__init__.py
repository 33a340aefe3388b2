"""Notification channels: ``email`` (SMTP), ``slack`` (incoming webhook), ``webhook`` (the host
app's endpoints), ``recording`` (tests).

Each has ``async send(notice)`` and raises the domain's Transient/PermanentDeliveryError.
"""

from __future__ import annotations

import structlog

from domain.delivery import Channel
from domain.notifications import EMAIL, SLACK, WEBHOOK
from domain.settings import Settings
from workers.channels.email import SmtpChannel
from workers.channels.slack import SlackChannel
from workers.channels.webhook import WebhookChannel

log = structlog.get_logger("workers.channels")


def configured_channels(settings: Settings) -> dict[str, Channel]:
    """The channels the settings enable; the others are skipped quietly (logged once here)."""
    channels: dict[str, Channel] = {}
    if settings.smtp_host:
        channels[EMAIL] = SmtpChannel(settings)
    else:
        log.info("channel.disabled", channel=EMAIL, reason="SMTP_HOST is not set")
    if settings.smtp_host and not settings.admin_emails:
        log.info("channel.no_team_emails", reason="ADMIN_EMAILS is empty: the team gets no email")
    if settings.slack_webhook_url:
        channels[SLACK] = SlackChannel(settings.slack_webhook_url)
    else:
        log.info("channel.disabled", channel=SLACK, reason="SLACK_WEBHOOK_URL is not set")
    # Always on: the endpoints registered through the API say who gets what (none: nothing).
    channels[WEBHOOK] = WebhookChannel(settings)
    return channels
