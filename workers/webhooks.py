"""The webhooks pool: delivers the host app's webhooks (the ledger's pending rows of the webhook
channel), apart from the notifications pool so that a receiver that hangs, fails or answers
slowly holds up only its own deliveries.

Run: ``dramatiq workers.webhooks --queues webhooks``. A message may arrive twice (at-least-once
delivery); the ledger skips what is already sent, and the receiver can drop a repeat by its
``webhook-id``.
"""

from __future__ import annotations

import dramatiq

from domain.outbox import DELIVER_WEBHOOKS_ACTOR, WEBHOOKS_QUEUE
from workers.broker import broker  # noqa: F401  (the broker and its middleware, before any actor)
from workers.delivering import deliver_rows


@dramatiq.actor(
    actor_name=DELIVER_WEBHOOKS_ACTOR,
    queue_name=WEBHOOKS_QUEUE,
    # The ledger decides when a webhook row has failed for good (a day of failures); these
    # retries only space the attempts, up to five minutes apart (a Retry-After may ask for
    # more), and the outbox sweep publishes an unfinished event again after them.
    max_retries=25,
    min_backoff=1_000,
    max_backoff=300_000,
    time_limit=60_000,
)
async def deliver_webhooks(delivery_ids: list[str]) -> None:
    """POST the webhooks of these ledger rows, skipping what the ledger shows as done."""
    await deliver_rows(delivery_ids)
