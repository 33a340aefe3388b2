"""Worker processes say they are alive (domain/heartbeats.py), one key per queue consumed."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from domain import heartbeats

log = structlog.get_logger("workers.liveness")


class Heartbeat(Middleware):
    """Beats every few seconds from a daemon thread of each worker process, for each queue the
    process consumes (its delay queues aside); the keys go when the worker shuts down."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._kinds: list[str] = []

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        queues = worker.consumer_whitelist or broker.get_declared_queues()
        self._kinds = [f"worker:{q}" for q in sorted(queues) if not q.endswith((".DQ", ".XQ"))]
        client = broker.client  # type: ignore[attr-defined]
        threading.Thread(
            target=self._run, args=(client,), name="helpdesk-heartbeat", daemon=True
        ).start()

    def _run(self, client: Any) -> None:
        while not self._stop.is_set():
            try:
                for kind in self._kinds:
                    heartbeats.beat(client, kind)
            except Exception as exc:  # Redis down: the pool itself will say so; try again
                log.debug("heartbeat.failed", error=type(exc).__name__)
            self._stop.wait(heartbeats.INTERVAL_S)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            broker.client.delete(*(heartbeats.key(kind) for kind in self._kinds))  # type: ignore[attr-defined]
