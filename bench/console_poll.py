"""What open agent consoles cost the API: N consoles polling as api/console/static/console.js does.

Each simulated console, every POLL_S seconds (the console's POLL_MS), asks for the first page of
the queue (``GET /v1/admin/support/tickets?page=1&per_page=25``) and for its open ticket with
``If-None-Match`` (a 304 while nothing changed: the messages are not read). Starts are spread
over one interval, as real consoles opened at different moments are. One API process
(``helpdesk serve --workers 1``) on a queue of ``--tickets`` tickets; its CPU is read from /proc
while idle and while polled.

    python -m bench.console_poll [--consoles 20] [--seconds 30] [--tickets 500]

Uses the database ``helpdesk_bench_console`` (dropped and created afresh) and Redis database 13
unless told otherwise. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import (
    Stack,
    cpu_s,
    dev_tokens,
    flush_redis,
    free_port,
    percentile,
    prepare_database,
    service_env,
)

POLL_S = 3.0  # console.js: POLL_MS
PER_PAGE = 25  # console.js: PER_PAGE
ADMIN_URL = "/v1/admin/support/tickets"


def seed(base_url: str, count: int) -> list[str]:
    tokens = dev_tokens((f"bench-user-{i}" for i in range(50)), ttl=3600)
    ids = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(count):
            token = tokens[i % 50]
            priority = ("low", "normal", "normal", "high", "urgent")[i % 5]
            fields = {"subject": f"Ticket {i}", "body": "Something is wrong.", "priority": priority}
            response = client.post(
                "/v1/support/tickets", json=fields, headers={"Authorization": f"Bearer {token}"}
            )
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


async def console(
    base_url: str,
    token: str,
    ticket_id: str,
    until: float,
    statuses: Counter[str],
    latencies: list[float],
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    etag: str | None = None
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        await asyncio.sleep(random.uniform(0, POLL_S))
        while time.monotonic() < until:
            started = time.monotonic()
            queue = await client.get(ADMIN_URL, params={"page": 1, "per_page": PER_PAGE})
            latencies.append(time.monotonic() - started)
            statuses[f"list {queue.status_code}"] += 1
            conditional = {"If-None-Match": etag} if etag else {}
            started = time.monotonic()
            ticket = await client.get(f"{ADMIN_URL}/{ticket_id}", headers=conditional)
            latencies.append(time.monotonic() - started)
            statuses[f"ticket {ticket.status_code}"] += 1
            etag = ticket.headers.get("etag", etag)
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consoles", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tickets", type=int, default=500)
    parser.add_argument(
        "--database-url", default="postgresql://root@127.0.0.1:5432/helpdesk_bench_console"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    prepare_database(args.database_url, fresh=True)
    flush_redis(args.redis_url)
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="console-poll-"))
    env = service_env(args.database_url, args.redis_url, PORT=port, LOG_LEVEL="WARNING")
    stack = Stack(env, log_dir).start("web", web_args=["--workers", "1"])
    api = stack["web"]
    base_url = f"http://127.0.0.1:{port}"
    try:
        ids = seed(base_url, args.tickets)
        time.sleep(2)  # let the creates' background publishing finish before measuring
        idle_cpu, idle_start = cpu_s(api.pid, tree=True), time.monotonic()
        time.sleep(10)
        idle_pct = 100 * (cpu_s(api.pid, tree=True) - idle_cpu) / (time.monotonic() - idle_start)

        statuses: Counter[str] = Counter()
        latencies: list[float] = []
        tokens = dev_tokens((f"agent-{i}" for i in range(args.consoles)), admin=True)
        cpu0, start = cpu_s(api.pid, tree=True), time.monotonic()
        until = start + args.seconds

        async def run() -> None:
            await asyncio.gather(
                *(
                    console(base_url, token, random.choice(ids), until, statuses, latencies)
                    for token in tokens
                )
            )

        asyncio.run(run())
        elapsed = time.monotonic() - start
        busy_pct = 100 * (cpu_s(api.pid, tree=True) - cpu0) / elapsed
    finally:
        stack.stop()
        flush_redis(args.redis_url)

    requests = sum(statuses.values())
    ordered = sorted(latencies)
    per_request_ms = (busy_pct - idle_pct) / 100 * elapsed / requests * 1000 if requests else 0
    print(
        f"{args.consoles} consoles polling every {POLL_S:g} s for {elapsed:.0f} s, "
        f"queue of {args.tickets} tickets, one API process:"
    )
    print(f"  requests: {requests} ({requests / elapsed:.1f}/s): {dict(sorted(statuses.items()))}")
    print(
        f"  latency p50 {percentile(ordered, 50) * 1000:.1f} ms, "
        f"p99 {percentile(ordered, 99) * 1000:.1f} ms"
    )
    print(
        f"  API CPU: {busy_pct:.1f} % of one core polled, {idle_pct:.1f} % idle "
        f"(~{per_request_ms:.2f} ms of CPU per request)"
    )


if __name__ == "__main__":
    main()
