"""Resident memory of the API's and the workers' processes after a create load.

uv run python -m bench.memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt

from api.cli import ensure_database, migrate
from domain.devkey import ensure_dev_keypair
from domain.outbox import EVENTS_QUEUE, NOTIFICATIONS_QUEUE
from tests.processes import ROOT, ApiServer, dramatiq_workers
from tests.sinks import SmtpSink, free_port

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_memory"
REDIS_URL = "redis://127.0.0.1:6379/11"
LUA = """
wrk.method = "POST"
wrk.body = '{"subject": "Payment not received", "body": "The payout is missing."}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def measure_memory_after_load(seconds: int = 15, connections: int = 32) -> dict[str, float]:
    ensure_database(DATABASE_URL)
    migrate(DATABASE_URL)
    sink = SmtpSink().start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SLACK_", "JWT_"))}
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        APP_ENV="development",
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        PORT=str(port),
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(sink.port),
        ADMIN_EMAILS="team@bench.test",
        RATE_LIMIT_PER_MINUTE="0",
        LOG_FORMAT="json",
    )
    api = ApiServer(env).start()
    workers = [
        dramatiq_workers(env, [EVENTS_QUEUE], threads=8).start(),
        dramatiq_workers(env, [NOTIFICATIONS_QUEUE], threads=16).start(),
    ]
    try:
        base = api.base_url
        private_pem, _ = ensure_dev_keypair(ROOT / ".devkeys")
        now = int(time.time())
        token = jwt.encode(
            {"sub": "memory", "iat": now, "exp": now + 3600}, private_pem, algorithm="RS256"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(LUA % token)
        subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{seconds}s",
                "-s",
                script.name,
                f"{base}/v1/support/tickets",
            ],
            check=False,
            capture_output=True,
        )
        os.unlink(script.name)
        time.sleep(10)  # let the workers drain what the load queued
        assert api.proc is not None
        result: dict[str, float] = {}
        server_pids = [p for child in children(api.proc.pid) for p in [child, *children(child)]]
        api_workers = [p for p in server_pids if not children(p)] or server_pids
        result["API server process (largest granian worker)"] = max(rss_mb(p) for p in api_workers)
        for name, process in (("events worker", workers[0]), ("notifications worker", workers[1])):
            pids = process.worker_pids()
            if pids:
                result[f"{name} process (dramatiq)"] = max(rss_mb(p) for p in pids)
        return result
    finally:
        for process in [api, *workers]:
            process.stop()
        sink.stop()


if __name__ == "__main__":
    print(json.dumps(measure_memory_after_load(), indent=2))
