"""Sending a batch of ledger rows, for the pools that send (notifications, webhooks). No actor
here: each pool declares its own, so a pool's module declares no other pool's actors."""

from __future__ import annotations

import dramatiq

from domain.delivery import Outcome, deliver_batch
from workers.metrics import count_deliveries
from workers.runtime import runtime


async def deliver_rows(delivery_ids: list[str]) -> None:
    """Send the rows still pending, skipping what the ledger shows as done; a transient failure
    retries the whole message later (the rows already sent or failed are skipped then)."""
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
