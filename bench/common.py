"""What the benchmarks share: paths, ports, percentiles, machine CPU readings, child services,
the Procfile's commands, the benchmark database and the git state a result records."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PROCFILE = ROOT / "Procfile"
HOST = "127.0.0.1"
# Emptied before each run (the benchmark databases only; a name must contain "bench").
TABLES = ("deliveries", "ticket_events", "messages", "tickets", "staff")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * pct // 100) - 1))
    return sorted_values[int(rank)]


def summary_ms(values_s: Iterable[float]) -> dict[str, float]:
    ordered = sorted(v * 1000 for v in values_s)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "min_ms": round(ordered[0], 1),
        "p50_ms": round(percentile(ordered, 50), 1),
        "p90_ms": round(percentile(ordered, 90), 1),
        "p99_ms": round(percentile(ordered, 99), 1),
        "max_ms": round(ordered[-1], 1),
        "mean_ms": round(sum(ordered) / len(ordered), 1),
    }


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    total = sum(values[:8])
    return (total - values[3] - values[4]) / CLK_TCK, total / CLK_TCK


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy the machine is, in percent of one core, over ``seconds``."""
    busy0, total0 = machine_cpu()
    time.sleep(seconds)
    busy1, total1 = machine_cpu()
    cores = os.cpu_count() or 1
    return round(100 * cores * (busy1 - busy0) / (total1 - total0), 1) if total1 > total0 else 0.0


def wait_for_quiet(limit_pct: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until the machine is busy under ``limit_pct``% of one core."""
    deadline = time.monotonic() + timeout
    busy = machine_busy_pct()
    while busy > limit_pct and time.monotonic() < deadline:
        busy = machine_busy_pct()
    return busy


@dataclass
class Service:
    """A child process in its own session; stopped by its process group (its own children)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_text: str | None = None
    ready_count: int = 1
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        if self.ready_text is None:
            return
        deadline = time.monotonic() + timeout
        while self.output().count(self.ready_text) < self.ready_count:
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM to the service's own process only: it stops its children itself. (Signalling
        # the whole group makes a dramatiq worker process get two SIGTERMs, and it then hangs.)
        try:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything of its own left behind


def procfile_commands(env: dict[str, str]) -> dict[str, str]:
    """The Procfile's process types with ``${VAR:-default}`` expanded as the shell would."""

    def expand(match: re.Match[str]) -> str:
        return env.get(match.group(1)) or match.group(2)

    commands: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        commands[name.strip()] = re.sub(r"\$\{(\w+):-([^}]*)\}", expand, command.strip())
    return commands


def empty_database(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def git_state() -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
