"""The notifications pool: sends the emails and Slack messages of the ledger's pending rows
(webhooks have their own pool, workers/webhooks.py).

Run: ``dramatiq workers.notifications --queues notifications``. A message may arrive twice
(at-least-once delivery); the ledger skips what is already sent.
"""

from __future__ import annotations

import dramatiq

from domain.outbox import DELIVER_ACTOR, NOTIFICATIONS_QUEUE
from workers.broker import broker  # noqa: F401  (the broker and its middleware, before any actor)
from workers.delivering import deliver_rows


@dramatiq.actor(
    actor_name=DELIVER_ACTOR,
    queue_name=NOTIFICATIONS_QUEUE,
    # More retries than the ledger allows a row (DeliveryConfig.max_attempts, 20), so that the
    # ledger decides when a row has failed for good; with backoff capped at a minute, an SMTP or
    # Slack outage of several minutes still delivers.
    max_retries=25,
    min_backoff=1_000,
    max_backoff=60_000,
    time_limit=60_000,
)
async def deliver_notifications(delivery_ids: list[str]) -> None:
    """Send the notifications of these ledger rows, skipping what the ledger shows as done.

    A retry runs the whole message again: the rows already sent or failed are skipped.
    """
    await deliver_rows(delivery_ids)
