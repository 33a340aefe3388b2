"""The sla pool: fires SLA warnings and breaches (every target of the SLA policy) when due.

Run: ``dramatiq workers.sla --queues sla sla_sweeps``. Firing is a conditional update, so a
wake-up that arrives twice, or after the sweep, breaches nothing more.
"""

from __future__ import annotations

import dramatiq

from domain.errors import NotFound
from domain.outbox import SLA_CHECK_ACTOR, SLA_QUEUE, SLA_SWEEP_QUEUE
from domain.timers import fire_sla_breaches, fire_sla_clocks, tickets_planned_by_another_policy
from workers.broker import broker  # noqa: F401  (the broker and its middleware, before any actor)
from workers.publishing import commit_and_publish
from workers.runtime import runtime

SWEEP_BATCH = 1000  # tickets breached (and clocks fired, of each kind) per transaction


@dramatiq.actor(
    actor_name=SLA_CHECK_ACTOR,
    queue_name=SLA_QUEUE,
    max_retries=5,
    min_backoff=200,
    max_backoff=5_000,
    time_limit=30_000,
)
async def check_sla_deadline(ticket_id: str) -> None:
    """Wake-up for one ticket's deadline: fire its SLA timers that are due and still unmet."""
    rt = runtime()
    async with rt.sessionmaker() as session:
        try:
            await rt.tickets.breach_if_due(session, ticket_id)
        except NotFound:
            return  # deleted since: nothing to breach
        await commit_and_publish(session)


_replanned = False


async def _replan_once_per_process() -> None:
    """On this process's first sweep: re-plan the open clocks that another policy planned (the
    service was restarted with a changed SLA_POLICY_FILE). Any number of processes may do it
    at once: each ticket is re-planned under its lock, and a re-planned clock no longer
    matches. Failures are left for the next process start (the sweep itself goes on)."""
    global _replanned
    if _replanned:
        return
    rt = runtime()
    fingerprint = rt.tickets.policy.slas.fingerprint
    seen: set[str] = set()
    while True:
        async with rt.sessionmaker() as session:
            stale = [
                t
                for t in await tickets_planned_by_another_policy(session, fingerprint)
                if t not in seen
            ]
        if not stale:
            break
        for ticket_id in stale:
            seen.add(ticket_id)
            async with rt.sessionmaker() as session:
                try:
                    await rt.tickets.replan_for_policy(session, ticket_id)
                except NotFound:
                    continue
                await commit_and_publish(session)
    _replanned = True


@dramatiq.actor(
    queue_name=SLA_SWEEP_QUEUE,
    max_retries=0,
    time_limit=60_000,
    max_age=5_000,  # the scheduler sends one every fraction of a second; old ones are moot
)
async def sweep_sla_deadlines() -> None:
    """Backstop and the only path for most warnings and clock breaches: fire every SLA timer
    whose moment passed (first-response breaches, then the clocks' warnings and breaches)."""
    rt = runtime()
    await _replan_once_per_process()
    while True:
        async with rt.sessionmaker() as session:
            now = rt.clock()
            breached = await fire_sla_breaches(session, now, limit=SWEEP_BATCH)
            clocks = await fire_sla_clocks(session, now, limit=SWEEP_BATCH)
            await commit_and_publish(session)
        # A full batch of either kind may have left more behind.
        if len(breached) < SWEEP_BATCH and len(clocks) < SWEEP_BATCH:
            break
