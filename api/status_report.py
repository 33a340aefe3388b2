"""``helpdesk status``: one screen with what an operator checks first.

Queue depths, outbox lag, failed deliveries, the next SLA deadlines and which kinds of process
are alive, read from the same signals the exporter serves (domain/signals.py).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis

from domain import heartbeats
from domain.settings import Settings
from domain.signals import DatabaseSignals, QueueDepth, database_signals, queue_depths
from workers.exporter import EXPECTED_KINDS


def gather(settings: Settings, *, deadlines: int = 5) -> dict[str, Any]:
    """Everything the screen shows, as plain data (``--json`` prints it as is)."""
    now = datetime.now(UTC)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        depths = queue_depths(client, int(time.time() * 1000))
        alive = heartbeats.live_processes(client)
    finally:
        client.close()
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        signals = database_signals(conn, now, deadlines=deadlines)
    return _as_data(now, depths, alive, signals)


def _as_data(
    now: datetime, depths: list[QueueDepth], alive: dict[str, int], signals: DatabaseSignals
) -> dict[str, Any]:
    return {
        "at": now.isoformat(),
        "processes": {
            kind: alive.get(kind, 0) for kind in sorted(set(EXPECTED_KINDS) | set(alive))
        },
        "queues": [
            {
                "queue": d.queue,
                "waiting": d.waiting,
                "delayed": d.delayed,
                "oldest_age_s": d.oldest_age_s,
            }
            for d in depths
        ],
        "outbox": {
            "unpublished": signals.unpublished_events,
            "oldest_unpublished_age_s": signals.oldest_unpublished_age_s,
            "published_not_completed": signals.published_not_completed,
            "oldest_published_not_completed_age_s": signals.oldest_published_not_completed_age_s,
        },
        "failed_deliveries": signals.failed_deliveries,
        "sla": {
            "running": signals.sla_running,
            "breached_open": signals.sla_breached_open,
            "next_deadlines": [
                {"ticket_id": ticket_id, "target": target, "due_at": due.isoformat()}
                for ticket_id, target, due in signals.next_sla_deadlines
            ],
        },
    }


def render(data: dict[str, Any], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(data, indent=2)
    now = datetime.fromisoformat(data["at"])
    lines = [f"helpdesk status at {now:%Y-%m-%d %H:%M:%S} UTC", "", "Processes (alive)"]
    missing = [kind for kind, count in data["processes"].items() if count == 0]
    for kind, count in data["processes"].items():
        lines.append(f"  {kind:<24} {count:>3}{'   <- none running' if count == 0 else ''}")
    lines += ["", f"  {'Queue':<22} {'waiting':>8} {'delayed':>8} {'oldest':>10}"]
    for q in data["queues"]:
        lines.append(
            f"  {q['queue']:<22} {q['waiting']:>8} {q['delayed']:>8} {_age(q['oldest_age_s']):>10}"
        )
    outbox = data["outbox"]
    lines += [
        "",
        "Outbox",
        f"  not yet published        {outbox['unpublished']:>6}"
        f"   oldest {_age(outbox['oldest_unpublished_age_s'])}",
        f"  published, not finished  {outbox['published_not_completed']:>6}"
        f"   oldest {_age(outbox['oldest_published_not_completed_age_s'])}",
        "",
        "Deliveries failed for good (GET /v1/admin/support/deliveries?status=failed)",
    ]
    failed = data["failed_deliveries"]
    lines += [f"  {channel:<24} {count:>6}" for channel, count in failed.items()] or ["  none"]
    sla = data["sla"]
    lines += [
        "",
        "SLA clocks running "
        + (", ".join(f"{t} {n}" for t, n in sla["running"].items()) or "none")
        + f"   first response breached, still open {sla['breached_open']}",
    ]
    for item in sla["next_deadlines"]:
        due = datetime.fromisoformat(item["due_at"])
        seconds = (due - now).total_seconds()
        when = f"in {_age(seconds)}" if seconds >= 0 else f"{_age(-seconds)} ago"
        lines.append(
            f"  {item['ticket_id']}  {item['target']:<15} due {due:%Y-%m-%d %H:%M:%S} UTC ({when})"
        )
    if missing:
        lines += ["", f"Not running: {', '.join(missing)}"]
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
