"""The signals to scale and alert on, read from Redis and PostgreSQL: how much work waits in each
queue, how far the outbox lags, what failed for good, and the SLA clock. Read by the exporter
(workers/exporter.py) at each scrape and by ``helpdesk status``.

Every query here uses a partial index (ticket_events_unhandled, deliveries_failed,
tickets_sla_armed) or touches only a handful of rows, so a scrape every 15 s costs nothing a
busy database would notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from domain.models import SLA_ACTIVE_STATUSES
from domain.outbox import ALL_QUEUES

NAMESPACE = "dramatiq"  # the Redis broker's key prefix (Dramatiq's default)


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    waiting: int  # ready to run, not yet taken by a worker
    delayed: int  # retries and timers waiting for their time (the queue's delay queue)
    oldest_age_s: float | None  # how long the next message to run has waited, when known


@dataclass(frozen=True)
class DatabaseSignals:
    unpublished_events: int
    oldest_unpublished_age_s: float | None
    published_not_completed: int
    oldest_published_not_completed_age_s: float | None
    failed_deliveries: dict[str, int]  # by channel
    sla_running: dict[str, int]  # clocks running (not paused, not yet breached), by target
    sla_breached_open: int  # active tickets whose first-response deadline passed unmet
    # (ticket id, target, due) of the running clocks due soonest
    next_sla_deadlines: list[tuple[str, str, datetime]] = field(default_factory=list)


def queue_depths(client: Any, now_ms: int) -> list[QueueDepth]:
    """Depths of every queue and the age of each one's next message, in two pipelined round
    trips (the lengths and heads, then the heads' messages)."""
    pipe = client.pipeline(transaction=False)
    for queue in ALL_QUEUES:
        pipe.llen(f"{NAMESPACE}:{queue}")
        pipe.llen(f"{NAMESPACE}:{queue}.DQ")
        pipe.lindex(f"{NAMESPACE}:{queue}", 0)  # the head: the next message a worker takes
    answers = pipe.execute()
    heads = answers[2::3]
    pipe = client.pipeline(transaction=False)
    for queue, head in zip(ALL_QUEUES, heads, strict=True):
        # A message taken between the two reads is simply not found (no age).
        pipe.hget(f"{NAMESPACE}:{queue}.msgs", head or "")
    messages = pipe.execute()
    return [
        QueueDepth(queue, int(waiting), int(delayed), _age_s(raw, now_ms))
        for queue, waiting, delayed, raw in zip(
            ALL_QUEUES, answers[0::3], answers[1::3], messages, strict=True
        )
    ]


def _age_s(raw: bytes | None, now_ms: int) -> float | None:
    if raw is None:
        return None
    try:
        enqueued_ms = int(json.loads(raw)["message_timestamp"])
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, (now_ms - enqueued_ms) / 1000)


_ACTIVE = tuple(str(status) for status in SLA_ACTIVE_STATUSES)
# The clocks the sweep still has to fire (the partial index sla_clocks_breach_due).
_RUNNING = "state = 'running' AND breached_at IS NULL"


def database_signals(
    conn: psycopg.Connection[Any], now: datetime, *, deadlines: int = 0
) -> DatabaseSignals:
    """The outbox, the ledger's failures and the SLA clock, in four short queries."""
    unpublished, oldest_unpublished, published, oldest_published = conn.execute(
        "SELECT count(*) FILTER (WHERE published_at IS NULL),"
        " min(created_at) FILTER (WHERE published_at IS NULL),"
        " count(*) FILTER (WHERE published_at IS NOT NULL),"
        " min(published_at) FILTER (WHERE published_at IS NOT NULL)"
        " FROM ticket_events WHERE completed_at IS NULL"
    ).fetchone() or (0, None, 0, None)
    failed = dict(
        conn.execute(
            "SELECT channel, count(*) FROM deliveries WHERE status = 'failed' GROUP BY channel"
        ).fetchall()
    )
    running = dict(
        conn.execute(
            f"SELECT target, count(*) FROM sla_clocks WHERE {_RUNNING} GROUP BY target"
        ).fetchall()
    )
    breached = (
        conn.execute(
            "SELECT count(*) FROM tickets"
            " WHERE sla_breached_at IS NOT NULL AND status = ANY(%(active)s)",
            {"active": list(_ACTIVE)},
        ).fetchone()
        or (0,)
    )[0]
    next_deadlines: list[tuple[str, str, datetime]] = []
    if deadlines:
        next_deadlines = [
            (ticket_id, target, due)
            for ticket_id, target, due in conn.execute(
                f"SELECT ticket_id, target, due_at FROM sla_clocks WHERE {_RUNNING}"
                " ORDER BY due_at LIMIT %(n)s",
                {"n": deadlines},
            ).fetchall()
        ]
    return DatabaseSignals(
        unpublished_events=int(unpublished),
        oldest_unpublished_age_s=_seconds_since(oldest_unpublished, now),
        published_not_completed=int(published),
        oldest_published_not_completed_age_s=_seconds_since(oldest_published, now),
        failed_deliveries={str(k): int(v) for k, v in failed.items()},
        sla_running={str(k): int(v) for k, v in running.items()},
        sla_breached_open=int(breached),
        next_sla_deadlines=next_deadlines,
    )


def _seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())
