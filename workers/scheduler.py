"""The scheduler: one small process that enqueues the periodic sweeps.

APScheduler rather than periodiq: the SLA backstop must run every fraction of a second, and
periodiq schedules at cron (minute) granularity. Sweeps are safe to run from two schedulers at
once (row locks with SKIP LOCKED and conditional updates), so running two is harmless.

Run: ``python -m workers.scheduler``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

import structlog
from apscheduler.schedulers.blocking import BlockingScheduler

from domain import heartbeats
from domain.logging import configure_logging
from workers.broker import broker, settings
from workers.maintenance import close_resolved_tickets_due, publish_outbox
from workers.sla import sweep_sla_deadlines

log = structlog.get_logger("workers.scheduler")


def _enqueue(name: str, send: Callable[[], object]) -> Callable[[], None]:
    def job() -> None:
        try:
            send()
        except Exception as exc:
            # Redis down: nothing is lost (the database holds the work); try at the next tick.
            log.warning("scheduler.enqueue_failed", job=name, error=type(exc).__name__)

    return job


def build_scheduler() -> BlockingScheduler:
    scheduler = BlockingScheduler(timezone="UTC")
    jobs: list[tuple[str, Callable[[], object], float]] = [
        ("publish_outbox", publish_outbox.send, settings.outbox_sweep_interval_s),
        ("sweep_sla_deadlines", sweep_sla_deadlines.send, settings.sla_sweep_interval_s),
        (
            "close_resolved_tickets_due",
            close_resolved_tickets_due.send,
            settings.auto_close_sweep_interval_s,
        ),
    ]
    # helpdesk status and the exporter see that a scheduler runs.
    jobs.append(("heartbeat", lambda: heartbeats.beat(broker.client, "scheduler"), 5.0))
    for name, send, interval in jobs:
        scheduler.add_job(
            _enqueue(name, send),
            "interval",
            seconds=interval,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
    return scheduler


def main() -> None:
    configure_logging(settings)  # JSON lines, like every other process
    # APScheduler logs two info lines per job run, five times a second with the SLA sweep: the
    # largest part of this process's idle CPU, and noise. Its warnings (a missed run) remain.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler = build_scheduler()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("scheduler.stopping", signal=signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("scheduler.started", jobs=[job.id for job in scheduler.get_jobs()])
    scheduler.start()


if __name__ == "__main__":
    main()
