"""Each worker pool's Prometheus metrics: Dramatiq's own middleware, plus delivery outcomes.

Dramatiq's Prometheus middleware counts messages processed, failed (``dramatiq_message_errors``),
retried and dead-lettered per actor and queue, and their processing time. It is on when the pool
is started with ``dramatiq_prom_port`` set (Dramatiq's own variable, as in the Procfile), and
serves every process of the pool on that port; ``dramatiq_prom_db`` names the directory where
the pool's processes write their samples, which must be the pool's own.

Delivery outcomes (``helpdesk_deliveries_total{channel, outcome}``) are written to the same
directory: the counter is made on first use, after the middleware has pointed prometheus-client
at it (prometheus-client picks its storage when it is first imported).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from domain.delivery import DeliveryResult, Outcome

PORT_ENV = "dramatiq_prom_port"

# Outcome → label value. A skipped row (sent already, or another worker holds it) is no outcome.
_OUTCOME_LABELS = {
    Outcome.SENT: "sent",
    Outcome.RETRY: "transient_failure",
    Outcome.FAILED: "failed",
}
_deliveries: Any = None


def pool_metrics_middleware() -> list[Middleware]:
    """Dramatiq's Prometheus middleware when this pool is to expose metrics, else nothing (a
    second pool on the same port would fail to start its exposition server)."""
    if not os.environ.get(PORT_ENV):
        return []
    from dramatiq.middleware.prometheus import Prometheus

    class PoolMetrics(Prometheus):
        def after_process_boot(self, broker: dramatiq.Broker) -> None:
            super().after_process_boot(broker)
            _forget_dead_processes(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))

    return [PoolMetrics()]


def _forget_dead_processes(directory: Path) -> None:
    """Drop the live-gauge samples of processes that are gone (killed, or an earlier run): a
    killed process never marks itself dead, and its in-progress count would stay forever.
    Counters of dead processes stay, so totals never go backwards."""
    from prometheus_client import multiprocess

    for file in directory.glob("gauge_live*_*.db"):
        pid = file.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def count_deliveries(results: Iterable[DeliveryResult]) -> None:
    """Count each attempted ledger row by channel and outcome."""
    global _deliveries
    if _deliveries is None:
        from prometheus_client import Counter

        _deliveries = Counter(
            "helpdesk_deliveries_total",
            "Notification delivery attempts by channel and outcome "
            "(sent, transient_failure: retried later, failed: given up, an operator's case).",
            ["channel", "outcome"],
        )
    for result in results:
        label = _OUTCOME_LABELS.get(result.outcome)
        if label is not None and result.channel:
            _deliveries.labels(result.channel, label).inc()
