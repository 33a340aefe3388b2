"""The exporter: the signals to scale and alert on (domain/signals.py) as Prometheus gauges.

Run: ``helpdesk exporter`` (a Procfile line). One small process for the whole deployment: it
reads Redis and PostgreSQL when Prometheus scrapes it, so its numbers are never staler than the
scrape. Several replicas are harmless (they report the same values; aggregate with ``max``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from domain import heartbeats
from domain.outbox import ALL_QUEUES
from domain.settings import Settings
from domain.signals import DatabaseSignals, QueueDepth, database_signals, queue_depths

log = structlog.get_logger("workers.exporter")

# The kinds of process a complete deployment runs (helpdesk_live_processes reports 0 for a kind
# none of whose processes beat, so an alert can fire on it).
EXPECTED_KINDS = ("api", "scheduler", *(f"worker:{queue}" for queue in ALL_QUEUES))


class SignalsCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self._redis = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        self._database_url = settings.database_url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # scrapes may overlap; one connection, one at a time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "helpdesk_signal_source_up",
            "1 when the exporter could read the source (redis, postgresql) at this scrape.",
            labels=["source"],
        )
        with self._lock:
            depths, alive = self._read_redis()
            signals = self._read_database()
        up.add_metric(["redis"], 0 if depths is None else 1)
        up.add_metric(["postgresql"], 0 if signals is None else 1)
        yield up
        if depths is not None and alive is not None:
            yield from _queue_families(depths)
            yield _live_family(alive)
        if signals is not None:
            yield from _database_families(signals)

    def _read_redis(self) -> tuple[list[QueueDepth] | None, dict[str, int] | None]:
        try:
            return queue_depths(self._redis, int(time.time() * 1000)), heartbeats.live_processes(
                self._redis
            )
        except redis.RedisError as exc:
            log.warning("exporter.redis_unavailable", error=type(exc).__name__)
            return None, None

    def _read_database(self) -> DatabaseSignals | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._database_url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="helpdesk-exporter",
                )
            return database_signals(self._conn, datetime.now(UTC))
        except psycopg.Error as exc:
            log.warning("exporter.database_unavailable", error=type(exc).__name__)
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None


def _labelled(
    name: str, documentation: str, label: str, values: dict[str, float]
) -> GaugeMetricFamily:
    """One gauge family with a sample per ``values`` key (one label)."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _queue_families(depths: list[QueueDepth]) -> Iterator[GaugeMetricFamily]:
    yield _labelled(
        "helpdesk_queue_messages",
        "Messages ready to run, not yet taken by a worker (scale the queue's pool on this).",
        "queue",
        {d.queue: d.waiting for d in depths},
    )
    yield _labelled(
        "helpdesk_queue_delayed_messages",
        "Messages waiting for their time in the queue's delay queue (retries, timers).",
        "queue",
        {d.queue: d.delayed for d in depths},
    )
    yield _labelled(
        "helpdesk_queue_oldest_message_age_seconds",
        "How long the next message to run has waited (0 when the queue is empty).",
        "queue",
        {d.queue: d.oldest_age_s or 0.0 for d in depths},
    )


def _live_family(alive: dict[str, int]) -> GaugeMetricFamily:
    return _labelled(
        "helpdesk_live_processes",
        "Processes of each kind that said they were alive in the last 15 s.",
        "kind",
        {kind: alive.get(kind, 0) for kind in set(EXPECTED_KINDS) | set(alive)},
    )


def _database_families(signals: DatabaseSignals) -> Iterator[GaugeMetricFamily]:
    def gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, value=value or 0.0)

    yield gauge(
        "helpdesk_outbox_unpublished_events",
        "Events written but not yet handed to the broker (the outbox).",
        signals.unpublished_events,
    )
    yield gauge(
        "helpdesk_outbox_oldest_unpublished_age_seconds",
        "Age of the oldest event not yet handed to the broker (0 when none).",
        signals.oldest_unpublished_age_s,
    )
    yield gauge(
        "helpdesk_events_published_not_completed",
        "Events handed to the broker whose handling has not finished yet.",
        signals.published_not_completed,
    )
    yield gauge(
        "helpdesk_events_oldest_published_not_completed_age_seconds",
        "Time since the oldest unfinished event was handed to the broker (0 when none).",
        signals.oldest_published_not_completed_age_s,
    )
    yield _labelled(
        "helpdesk_deliveries_failed",
        "Ledger rows failed for good, waiting for an operator (by channel).",
        "channel",
        dict(signals.failed_deliveries),
    )
    yield _labelled(
        "helpdesk_sla_clocks_running",
        "SLA clocks counting down (not paused, not breached yet), by target.",
        "target",
        dict(signals.sla_running),
    )
    yield gauge(
        "helpdesk_sla_breached_tickets",
        "Active tickets whose first-response deadline passed unanswered (not yet closed).",
        signals.sla_breached_open,
    )


def serve(settings: Settings, *, host: str, port: int) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SignalsCollector(settings))
    start_http_server(port, addr=host, registry=registry)
    log.info("exporter.started", host=host, port=port)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    while True:
        # Redis down: reported as helpdesk_signal_source_up{source="redis"} 0.
        with contextlib.suppress(redis.RedisError):
            heartbeats.beat(client, "exporter")
        time.sleep(heartbeats.INTERVAL_S)
