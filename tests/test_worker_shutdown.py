"""Stopping a worker pool: one SIGTERM to its process group (what honcho under ``make run``,
and these tests, send) stops every worker process gracefully, threads and all, instead of
hanging until a SIGKILL."""

from __future__ import annotations

import os
import signal
import time

import pytest

from domain.outbox import EVENTS_QUEUE, NOTIFICATIONS_QUEUE
from tests.processes import ServiceProcess, dramatiq_workers

pytestmark = pytest.mark.slow


def test_a_pool_signalled_as_a_process_group_stops_gracefully(
    service_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    pool = dramatiq_workers(
        service_env, [EVENTS_QUEUE, NOTIFICATIONS_QUEUE], processes=2, threads=2
    )
    processes.append(pool.start())
    assert pool.proc is not None
    # A signal to the group reaches each worker process directly and, a moment later when the
    # machine is busy, again from Dramatiq's main process, which forwards it.
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    os.kill(pool.proc.pid, signal.SIGTERM)
    assert pool.proc.wait(timeout=15) == 0, pool.output()[-3000:]
    output = pool.output()
    assert "Killing worker process" not in output
    assert output.count("Worker has been shut down.") == 2
