"""Which processes are alive: each process sets a key in Redis every few seconds that expires
soon after, so ``helpdesk status`` and the exporter can tell which kinds of process run.

Keys are ``helpdesk:alive:<kind>:<host>:<pid>``; kinds are ``api``, ``scheduler``, ``exporter``
and ``worker:<queue>`` for each queue a worker process consumes. One ``SET ... EX`` every
:data:`INTERVAL_S` per process: nothing a busy or an idle process would notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from typing import Any

PREFIX = "helpdesk:alive:"
INTERVAL_S = 5.0
# Three missed beats before a process counts as gone.
TTL_S = 15


def key(kind: str) -> str:
    return f"{PREFIX}{kind}:{socket.gethostname()}:{os.getpid()}"


def beat(client: Any, kind: str) -> None:
    """Say that this process (of ``kind``) is alive, for the next :data:`TTL_S` seconds."""
    client.set(key(kind), "1", ex=TTL_S)


def live_processes(client: Any) -> dict[str, int]:
    """How many processes of each kind beat within the last :data:`TTL_S` seconds."""
    kinds: Counter[str] = Counter()
    for raw in client.scan_iter(match=f"{PREFIX}*", count=1000):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        kind = name[len(PREFIX) :].rsplit(":", 2)[0]
        kinds[kind] += 1
    return dict(kinds)


async def beat_until(stop: asyncio.Event, client: Any, kind: str) -> None:
    """Beat every :data:`INTERVAL_S` until ``stop`` is set, then take the key away (an asyncio
    Redis client; the API's). Stopped by the event rather than by cancelling: the Redis client
    may swallow a cancellation that lands while it connects, and the loop would go on."""
    while not stop.is_set():
        # Redis down: /readyz and the rate limiter say so; beat again at the next turn.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.set(key(kind), "1", ex=TTL_S), timeout=2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=INTERVAL_S)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.delete(key(kind)), timeout=2)
