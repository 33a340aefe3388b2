"""The notifications pool: sends the emails and Slack messages of the ledger's pending rows.

Run: ``dramatiq workers.notifications --queues notifications``. A message may arrive twice
(at-least-once delivery); the ledger skips what is already sent.
"""

from __future__ import annotations

import dramatiq

from domain.delivery import Outcome, deliver_batch
from domain.outbox import DELIVER_ACTOR, NOTIFICATIONS_QUEUE
from workers.broker import broker  # noqa: F401  (the broker and its middleware, before any actor)
from workers.metrics import count_deliveries
from workers.runtime import runtime


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
    rt = runtime()
    async with rt.sessionmaker() as session:
        results = await deliver_batch(session, delivery_ids, rt.delivery, rt.clock())
        await session.commit()
    count_deliveries(results)
    retries = [r for r in results if r.outcome is Outcome.RETRY]
    if retries:
        waits = [r.retry_after_s for r in retries if r.retry_after_s is not None]
        delay_ms = int(max(waits) * 1000) if waits else None
        raise dramatiq.Retry(retries[0].error or "transient delivery failure", delay=delay_ms)
