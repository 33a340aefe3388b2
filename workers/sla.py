"""The sla pool: breaches urgent tickets whose first-response deadline passed unmet.

Run: ``dramatiq workers.sla --queues sla sla_sweeps``. Firing is a conditional update, so a
wake-up that arrives twice, or after the sweep, breaches nothing more.
"""

from __future__ import annotations

import dramatiq

from domain.errors import NotFound
from domain.outbox import SLA_CHECK_ACTOR, SLA_QUEUE, SLA_SWEEP_QUEUE
from domain.timers import fire_sla_breaches
from workers.broker import broker  # noqa: F401  (the broker and its middleware, before any actor)
from workers.publishing import commit_and_publish
from workers.runtime import runtime

SWEEP_BATCH = 1000  # tickets breached per transaction


@dramatiq.actor(
    actor_name=SLA_CHECK_ACTOR,
    queue_name=SLA_QUEUE,
    max_retries=5,
    min_backoff=200,
    max_backoff=5_000,
    time_limit=30_000,
)
async def check_sla_deadline(ticket_id: str) -> None:
    """Wake-up for one urgent ticket's deadline: breach it if it is due and still unmet."""
    rt = runtime()
    async with rt.sessionmaker() as session:
        try:
            await rt.tickets.breach_if_due(session, ticket_id)
        except NotFound:
            return  # deleted since: nothing to breach
        await commit_and_publish(session)


@dramatiq.actor(
    queue_name=SLA_SWEEP_QUEUE,
    max_retries=0,
    time_limit=60_000,
    max_age=5_000,  # the scheduler sends one every fraction of a second; old ones are moot
)
async def sweep_sla_deadlines() -> None:
    """Backstop: breach every urgent ticket whose deadline passed unmet (lost wake-ups too)."""
    rt = runtime()
    while True:
        async with rt.sessionmaker() as session:
            fired = await fire_sla_breaches(session, rt.clock(), limit=SWEEP_BATCH)
            await commit_and_publish(session)
        if len(fired) < SWEEP_BATCH:
            break
