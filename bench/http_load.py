"""HTTP load benchmark for creating and listing tickets, next to the same SQL run by pgbench.

    uv run python -m bench.http_load [--connections 32] [--duration 10] [--workers N] ...

It prepares a dedicated database (created, migrated and emptied), starts ``helpdesk serve`` on
127.0.0.1, seeds a user with tickets, drives POST and GET /v1/support/tickets with wrk at a
fixed number of connections, stops the server, then runs the same transactions with pgbench at
the same concurrency. It prints a table (req/s, p50, p99; pgbench tps; ratio) and writes the
full results as JSON to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.common import (
    BENCH_DIR,
    CLK_TCK,
    HOST,
    RESULTS_DIR,
    ROOT,
    Service,
    git_state,
    machine_cpu,
    wait_for_quiet,
)

WRK_SCRIPT = BENCH_DIR / "wrk_request.lua"
PGBENCH_SCRIPTS = {
    "create": BENCH_DIR / "pgbench_create.sql",
    "list": BENCH_DIR / "pgbench_list.sql",
}

DEFAULT_DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench"
# The server hands every new ticket's event to the broker. No workers run during the benchmark,
# so those messages pile up: they go to a Redis database of their own, emptied before and after.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
BROKER_KEYS = "dramatiq:*"
TABLES = ("deliveries", "ticket_events", "messages", "tickets")
CREATE_USER = "bench-create"
LIST_USER = "bench-list"
LIST_PATH = "/v1/support/tickets?page=1&per_page=20"
CREATE_PATH = "/v1/support/tickets"
# The example request of the API contract.
TICKET = {
    "subject": "Payment not received",
    "body": (
        "I completed a 30-minute session yesterday but the payment has not appeared in my earnings."
    ),
    "category": "billing",
    "priority": "high",
}


# -- processes and CPU accounting --------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds) for every process we can read."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is the state; utime and stime are fields 14 and 15 of the whole line.
        table[int(entry.name)] = (
            int(fields[1]),
            comm,
            (int(fields[11]) + int(fields[12])) / CLK_TCK,
        )
    return table


def _descendants(table: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    found = {root} if root in table else set()
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


class CpuMonitor(threading.Thread):
    """Samples every process while a measurement runs and splits the CPU it used into the app
    server (the server's process tree), PostgreSQL, the load generator and everything else.

    PostgreSQL counts the background processes of the benchmark's server (children of
    ``postmaster``) and its connections to ``database``; connections to other databases and
    other PostgreSQL servers (other programs on the machine) count as other load.
    Sampling while it runs (not only before and after) also counts processes that come and go
    within the run, such as pgbench's connections.
    """

    def __init__(
        self, server_pid: int | None, postmaster: int, database: str, interval: float = 0.25
    ) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.postmaster = postmaster
        self.database = database
        self._parents: dict[int, int] = {}
        self._ours: dict[int, bool] = {}  # PostgreSQL process -> serves the benchmark
        self.interval = interval
        self._stop_event = threading.Event()
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._server: set[int] = set()
        self._start_at = 0.0
        self._end_at = 0.0
        self._machine0 = (0.0, 0.0)
        self._machine1 = (0.0, 0.0)
        self.other_processes: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _sample(self, first: bool) -> None:
        table = _processes()
        if self.server_pid is not None:
            self._server |= _descendants(table, self.server_pid)
        for pid, (ppid, comm, cpu) in table.items():
            self._parents[pid] = ppid
            if first:
                self._first[pid] = cpu
            else:
                self._first.setdefault(pid, 0.0)  # started during the run: all of it counts
            self._last[pid] = (comm, cpu)

    def _serves_benchmark(self, pid: int) -> bool:
        """A background process, or a connection to the benchmark's database. A connection's
        process title names the database and the client: ``postgres: root helpdesk_bench
        127.0.0.1(5432) idle``."""
        if pid not in self._ours:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                title = ""
            words = title.split()
            client = any(word.startswith(("127.", "[", "[local]")) or "(" in word for word in words)
            self._ours[pid] = self.database in words or not client
        return self._ours[pid]

    def start(self) -> None:
        self._machine0 = machine_cpu()
        self._start_at = time.monotonic()
        self._sample(first=True)
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample(first=False)

    def finish(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        self._sample(first=False)
        self._machine1 = machine_cpu()
        self._end_at = time.monotonic()
        wall = self._end_at - self._start_at
        used = {"server": 0.0, "postgres": 0.0, "loadgen": 0.0}
        others: dict[str, float] = {}
        for pid, (comm, cpu) in self._last.items():
            delta = cpu - self._first.get(pid, 0.0)
            if pid in self._server:
                used["server"] += delta
            elif self._parents.get(pid) == self.postmaster and self._serves_benchmark(pid):
                used["postgres"] += delta
            elif comm in ("wrk", "pgbench"):
                used["loadgen"] += delta
            elif delta > 0:
                others[comm] = others.get(comm, 0.0) + delta
        busy0, total0 = self._machine0
        busy1, total1 = self._machine1
        cores = os.cpu_count() or 1
        busy = cores * (busy1 - busy0) / (total1 - total0) * wall if total1 > total0 else 0.0
        pct = {f"{name}_pct": round(100 * value / wall, 1) for name, value in used.items()}
        pct["machine_busy_pct"] = round(100 * busy / wall, 1)
        pct["other_pct"] = round(max(0.0, 100 * (busy - sum(used.values())) / wall), 1)
        top = sorted(others.items(), key=lambda item: item[1], reverse=True)[:5]
        self.other_processes = {comm: round(100 * cpu / wall, 1) for comm, cpu in top}
        self.seconds = dict(used)
        return pct


def cpu_cost(seconds: dict[str, float], count: int) -> dict[str, float]:
    """CPU milliseconds per request (or transaction) by part, and what the machine could do if
    it ran nothing else and the work were CPU-bound: cores / (CPU time per request).

    Other load on the machine lowers the measured rate but changes the CPU time per request
    much less, so the estimate is the steadier figure for comparing settings on a busy machine.
    """
    if not count:
        return {}
    cost = {f"{name}_ms": round(1000 * value / count, 3) for name, value in seconds.items()}
    total = sum(seconds.values()) / count
    cost["total_ms"] = round(1000 * total, 3)
    cost["cpu_bound_rate"] = round((os.cpu_count() or 1) / total, 1) if total else 0.0
    return cost


# -- the database ------------------------------------------------------------------------------


def conninfo(database_url: str) -> dict[str, Any]:
    return psycopg.conninfo.conninfo_to_dict(database_url)


def prepare_database(database_url: str) -> None:
    """Create and migrate the benchmark database, then empty it so every run starts the same."""
    name = str(conninfo(database_url).get("dbname", ""))
    if "bench" not in name:
        raise SystemExit(
            f"refusing to use database {name!r}: the benchmark empties its tables, so its name "
            "must contain 'bench' (e.g. helpdesk_bench)"
        )
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run(
        [sys.executable, "-m", "api.cli", "migrate"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        conn.execute("CHECKPOINT")


def analyze(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {', '.join(TABLES)}")


def postmaster_pid(database_url: str) -> int:
    """The PostgreSQL server's main process (the parent of our connection's process)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    backend = int(row[0]) if row else 0
    try:
        stat = Path(f"/proc/{backend}/stat").read_text()
    except OSError:
        return 0  # not on this machine (or not visible): PostgreSQL's CPU is not counted
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def sessions_opened(database_url: str) -> int:
    """How many connections were ever opened to the benchmark database (server statistics)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def count_tickets(database_url: str, user_id: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tickets WHERE user_id = %s", (user_id,)).fetchone()
    return int(row[0]) if row else 0


def clear_broker(redis_url: str) -> int:
    """Delete the broker's keys (queued messages) from the benchmark's Redis database."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=BROKER_KEYS, count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# -- the server --------------------------------------------------------------------------------


def mint_token(sub: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "token", "--sub", sub, "--ttl", "7200"],
        cwd=ROOT,
        env={**os.environ, "APP_ENV": "development"},
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def port_is_free(port: int) -> bool:
    """Nothing listens on the port. (A bind test: Granian listens with SO_REUSEPORT, so a second
    server could start on the same port and share the load.)"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass
class Server:
    """``helpdesk serve`` as a child service, ready once it answers /readyz."""

    port: int
    database_url: str
    redis_url: str
    workers: int | None
    extra_env: dict[str, str]
    log_path: Path
    service: Service | None = None

    def start(self) -> None:
        if not port_is_free(self.port):
            raise SystemExit(f"port {self.port} on {HOST} is in use; pick another with --port")
        bin_dir = str(Path(sys.executable).parent)  # so `granian` is found on PATH
        env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "APP_ENV": "development",
            "LOG_FORMAT": "json",
            "RATE_LIMIT_PER_MINUTE": "0",  # one user drives the whole load: no per-user cap
            "PORT": str(self.port),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            **self.extra_env,
        }
        argv = [sys.executable, "-m", "api.cli", "serve", "--host", HOST]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        self.service = Service("api", argv, env, self.log_path).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}/readyz"
        while time.monotonic() < deadline:
            assert self.service is not None and self.service.process is not None
            if self.service.process.poll() is not None:
                raise SystemExit(f"the server exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not become ready in {timeout:.0f} s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        return self.service.pid if self.service else None

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


@contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def post_ticket(port: int, token: str) -> None:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{CREATE_PATH}",
        data=json.dumps(TICKET).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 201:
            raise SystemExit(f"seeding failed: POST returned {response.status}")


# -- load generators ---------------------------------------------------------------------------


def run_wrk(
    *,
    port: int,
    path: str,
    method: str,
    token: str,
    body: str,
    connections: int,
    threads: int,
    duration: float,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        env = {
            **os.environ,
            "BENCH_METHOD": method,
            "BENCH_TOKEN": token,
            "BENCH_BODY": body,
            "BENCH_REPORT": str(report),
        }
        argv = [
            "wrk",
            f"--threads={min(threads, connections)}",
            f"--connections={connections}",
            f"--duration={max(1, round(duration))}s",
            "--timeout=10s",
            f"--script={WRK_SCRIPT}",
            f"http://{HOST}:{port}{path}",
        ]
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        raw = json.loads(report.read_text())
    seconds = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p999"] / 1000,
        "max_ms": latency["max"] / 1000,
        "mean_ms": round(latency["mean"] / 1000, 3),
        "errors": errors,
        "error_kinds": raw["errors"],
        # Little's law: requests in flight on average. Well below the connection count means
        # some connections were not being served (e.g. the server held them unaccepted).
        "busy_connections": round(raw["requests"] / seconds * latency["mean"] / 1e6, 1),
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


class PgbenchFailed(Exception):
    """pgbench exited with an error (e.g. more clients than the server accepts)."""


def run_pgbench(
    *,
    database_url: str,
    script: Path,
    defines: dict[str, str],
    clients: int,
    jobs: int,
    duration: float,
    log: bool,
) -> dict[str, Any]:
    info = conninfo(database_url)
    env = {**os.environ}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        if info.get(key):
            env[var] = str(info[key])
    if info.get("password"):
        env["PGPASSWORD"] = str(info["password"])
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "pgbench",
            "--no-vacuum",
            f"--client={clients}",
            f"--jobs={min(jobs, clients)}",
            f"--time={max(1, round(duration))}",
            "--protocol=prepared",
            f"--file={script}",
        ]
        for name, value in defines.items():
            argv.append(f"--define={name}={value}")
        if log:
            argv += ["--log", f"--log-prefix={Path(tmp, 'txn')}"]
        argv.append(str(info["dbname"]))
        done_run = subprocess.run(argv, env=env, check=False, capture_output=True, text=True)
        if done_run.returncode != 0:
            raise PgbenchFailed((done_run.stderr or done_run.stdout).strip()[-500:])
        out = done_run.stdout
        latencies = sorted(
            int(line.split()[2]) / 1000
            for path in Path(tmp).iterdir()
            for line in path.read_text().splitlines()
            if line.strip()
        )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if tps is None or done is None:
        raise SystemExit(f"could not read the pgbench output:\n{out}")
    return {
        "transactions": int(done.group(1)),
        "failed": int(failed.group(1)) if failed else 0,
        "tps": round(float(tps.group(1)), 1),
        "p50_ms": round(_percentile(latencies, 50), 3),
        "p99_ms": round(_percentile(latencies, 99), 3),
        "mean_ms": round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
    }


# -- the run -----------------------------------------------------------------------------------


def least_disturbed(args: argparse.Namespace, run_once: Any) -> dict[str, Any]:
    """Run one measurement; if other processes on the machine took more than ``--max-other``
    percent of a core meanwhile, run it again (up to ``--attempts`` times) and keep the least
    disturbed result. Results still above the limit are marked ``disturbed``."""
    best: dict[str, Any] | None = None
    attempts = 0
    while attempts < args.attempts:
        attempts += 1
        idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        result: dict[str, Any] = run_once()
        result["machine_busy_pct_before"] = idle
        result["attempt"] = attempts
        if best is None or result["cpu"]["other_pct"] < best["cpu"]["other_pct"]:
            best = result
        if result["cpu"]["other_pct"] <= args.max_other:
            break
        if attempts < args.attempts:
            print(f"  other processes used {result['cpu']['other_pct']:.0f}% of a core; again")
    assert best is not None
    best["attempts"] = attempts
    best["disturbed"] = best["cpu"]["other_pct"] > args.max_other
    return best


def measure_http(
    args: argparse.Namespace, server: Server, scenario: str, token: str
) -> dict[str, Any]:
    if scenario == "create":
        request = {"path": CREATE_PATH, "method": "POST", "body": json.dumps(TICKET)}
    else:
        request = {"path": LIST_PATH, "method": "GET", "body": ""}
    common = {
        "port": server.port,
        "token": token,
        "connections": args.connections,
        "threads": args.threads,
        **request,
    }

    def run_once() -> dict[str, Any]:
        analyze(args.database_url)
        if args.warmup > 0:
            run_wrk(duration=args.warmup, **common)
        before = count_tickets(args.database_url, CREATE_USER) if scenario == "create" else 0
        sessions = sessions_opened(args.database_url)
        monitor = CpuMonitor(server.pid, args.postmaster, args.database_name)
        monitor.start()
        result = run_wrk(duration=args.duration, **common)
        result["cpu"] = monitor.finish()
        result["cpu_other_processes"] = monitor.other_processes
        result["cpu_per_request"] = cpu_cost(monitor.seconds, result["requests"])
        # New database connections during the run (each one is a new PostgreSQL process, and
        # one of ours to measure it): a pool that keeps its connections opens only that one.
        result["db_connections_opened"] = sessions_opened(args.database_url) - sessions
        if scenario == "create":
            result["rows_created"] = count_tickets(args.database_url, CREATE_USER) - before
        if result["busy_connections"] < 0.8 * args.connections:
            print(
                f"  only {result['busy_connections']:.0f} of {args.connections} connections"
                " were busy on average: the server left some waiting"
            )
        return result

    return least_disturbed(args, run_once)


def pgbench_clients(database_url: str, wanted: int) -> int:
    """As many pgbench clients as asked, or as many as PostgreSQL still accepts if fewer.

    Each pgbench client is a server connection, while the API serves any number of HTTP
    connections from its small pool; at 128 connections a default server (max_connections 100)
    would refuse pgbench outright, so it runs with the connections left (the report says so).
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    free = int(row[0]) if row else wanted
    return max(1, min(wanted, free - 2))  # two spare for the benchmark's own connections


def measure_pgbench(args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    if scenario == "create":
        defines = {
            "user": CREATE_USER,
            "subject": TICKET["subject"],
            "body": TICKET["body"],
            "priority": TICKET["priority"],
            "category": TICKET["category"],
        }
    else:
        defines = {"user": LIST_USER}
    common = {
        "database_url": args.database_url,
        "script": PGBENCH_SCRIPTS[scenario],
        "defines": defines,
        "clients": pgbench_clients(args.database_url, args.connections),
        "jobs": args.threads,
    }
    if common["clients"] < args.connections:
        print(f"  PostgreSQL accepts {common['clients']} more connections: pgbench runs that many")

    def run_once() -> dict[str, Any]:
        analyze(args.database_url)
        if args.warmup > 0:
            run_pgbench(duration=args.warmup, log=False, **common)
        monitor = CpuMonitor(None, args.postmaster, args.database_name)
        monitor.start()
        result = run_pgbench(duration=args.duration, log=True, **common)
        result["cpu"] = monitor.finish()
        result["cpu_other_processes"] = monitor.other_processes
        result["cpu_per_transaction"] = cpu_cost(monitor.seconds, result["transactions"])
        result["clients"] = common["clients"]
        return result

    return least_disturbed(args, run_once)


def log_problems(path: Path) -> dict[str, int]:
    """Count the server's warning and error lines (its access log lines are level info)."""
    counts = {"warning": 0, "error": 0, "other": 0}
    for line in path.read_text(errors="replace").splitlines():
        try:
            level = json.loads(line).get("level", "")
        except (ValueError, AttributeError):
            counts["other"] += 1
            continue
        if level in ("warning", "error", "critical", "exception"):
            counts["warning" if level == "warning" else "error"] += 1
    return counts


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    header = (
        f"{'scenario':<8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f" | {'pgbench tps':>11} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>5}"
    )
    print(header)
    print("-" * len(header))
    for scenario, row in results.items():
        http, pgb = row.get("http"), row.get("pgbench")
        cells = [f"{scenario:<8} {args.connections:>5}"]
        if http:
            mark = "*" if http["disturbed"] else " "
            cells.append(
                f"{http['rps']:>8.1f}{mark} {http['p50_ms']:>8.2f} {http['p99_ms']:>8.2f}"
                f" {http['errors']:>6}"
            )
        else:
            cells.append(f"{'-':>9} {'-':>8} {'-':>8} {'-':>6}")
        if pgb and "error" in pgb:
            cells.append(f"| {'failed':>11} {'-':>8} {'-':>8}")
        elif pgb:
            mark = "*" if pgb["disturbed"] else " "
            cells.append(f"| {pgb['tps']:>10.1f}{mark} {pgb['p50_ms']:>8.2f} {pgb['p99_ms']:>8.2f}")
        else:
            cells.append(f"| {'-':>11} {'-':>8} {'-':>8}")
        ratio = row.get("ratio")
        cells.append(f"| {ratio:>5.2f}" if ratio is not None else f"| {'-':>5}")
        print(" ".join(cells))
    print("ratio = HTTP req/s / pgbench tps at the same concurrency")
    print(f"* other processes used more than {args.max_other:.0f}% of a core during the run")
    print()
    print("CPU during each run: percent of one core (machine total 100 x cores), and CPU time")
    print("per request or transaction (ms); 'cpu-bound' = cores / total ms, the rate if nothing")
    print("else ran on the machine and the work were CPU-bound:")
    print(
        f"{'run':<16} {'app':>5} {'pg':>5} {'load':>5} {'other':>5} |"
        f" {'app ms':>7} {'pg ms':>6} {'load ms':>7} | {'cpu-bound':>9}"
    )
    for scenario, row in results.items():
        for kind in ("http", "pgbench"):
            if kind not in row or "cpu" not in row[kind]:
                continue
            cpu = row[kind]["cpu"]
            cost = row[kind].get("cpu_per_request") or row[kind].get("cpu_per_transaction") or {}
            print(
                f"{kind + ' ' + scenario:<16} {cpu['server_pct']:>5.0f}"
                f" {cpu['postgres_pct']:>5.0f} {cpu['loadgen_pct']:>5.0f}"
                f" {cpu['other_pct']:>5.0f} |"
                f" {cost.get('server_ms', 0):>7.2f} {cost.get('postgres_ms', 0):>6.2f}"
                f" {cost.get('loadgen_ms', 0):>7.2f} | {cost.get('cpu_bound_rate', 0):>9.0f}"
            )
        if "ratio_cpu_bound" in row:
            print(f"{'':<16} cpu-bound ratio {scenario}: {row['ratio_cpu_bound']:.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--connections", "-c", type=int, default=32, help="concurrent connections")
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per run")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="wrk/pgbench threads"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="server processes (default: serve's)"
    )
    parser.add_argument("--port", type=int, default=18089, help="server port on 127.0.0.1")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="benchmark database (its name must contain 'bench'; it is emptied)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis database for the server's broker (its queued messages are deleted)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["create", "list"],
        help="run only this scenario (repeatable; default: both)",
    )
    parser.add_argument("--seed-tickets", type=int, default=50, help="tickets of the list user")
    parser.add_argument("--skip-http", action="store_true", help="only run pgbench")
    parser.add_argument("--skip-pgbench", action="store_true", help="only run the HTTP load")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server, e.g. DB_POOL_SIZE=8 or GRANIAN_BACKPRESSURE=16",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=25.0,
        help="before each run, wait until the machine is busy under this %% of one core",
    )
    parser.add_argument(
        "--quiet-timeout", type=float, default=120.0, help="longest wait for quiet, seconds"
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=30.0,
        help="re-run a measurement if other processes used more than this %% of one core",
    )
    parser.add_argument("--attempts", type=int, default=3, help="most runs per measurement")
    parser.add_argument("--label", default="", help="added to the results file name")
    parser.add_argument("--keep-server-log", action="store_true", help="keep the server's log")
    args = parser.parse_args(argv)
    args.scenario = args.scenario or ["create", "list"]
    for item in args.server_env:
        if "=" not in item:
            parser.error(f"--server-env wants NAME=VALUE, got {item!r}")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stop the server on SIGTERM, and on SIGINT even when started with it ignored (background).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if args.skip_http and "wrk" in missing:
        missing.remove("wrk")
    if args.skip_pgbench and "pgbench" in missing:
        missing.remove("pgbench")
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (see bench/README.md)")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    # One run at a time: runs share the database, the Redis database and the port.
    lock = open(RESULTS_DIR / ".http_load.lock", "w")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another http_load run is in progress; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"http_load-{stamp}" + (f"-{args.label}" if args.label else "")
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    results: dict[str, dict[str, Any]] = {scenario: {} for scenario in args.scenario}
    log_path = RESULTS_DIR / f"{name}-server.log"
    server_log: dict[str, int] = {}

    prepare_database(args.database_url)
    args.postmaster = postmaster_pid(args.database_url)
    args.database_name = str(conninfo(args.database_url)["dbname"])
    if not args.skip_http:
        create_token, list_token = mint_token(CREATE_USER), mint_token(LIST_USER)
        server = Server(
            args.port, args.database_url, args.redis_url, args.workers or None, extra_env, log_path
        )
        clear_broker(args.redis_url)
        try:
            with running(server):
                for _ in range(args.seed_tickets):
                    post_ticket(server.port, list_token)
                for scenario in args.scenario:
                    token = create_token if scenario == "create" else list_token
                    print(f"HTTP {scenario}: {args.duration:.0f} s, {args.connections} connections")
                    results[scenario]["http"] = measure_http(args, server, scenario, token)
        finally:
            clear_broker(args.redis_url)
        server_log = log_problems(log_path)
        if not args.keep_server_log:
            log_path.unlink()
    else:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            for _ in range(args.seed_tickets):
                conn.execute(  # enough of a ticket for the list query
                    "INSERT INTO tickets (id, user_id, subject, status, priority, created_at,"
                    " updated_at) VALUES (substr(md5(random()::text), 1, 26), %s, 's', 'open',"
                    " 'normal', clock_timestamp(), clock_timestamp())",
                    (LIST_USER,),
                )
        analyze(args.database_url)

    if not args.skip_pgbench:
        for scenario in args.scenario:
            print(f"pgbench {scenario}: {args.duration:.0f} s at {args.connections} clients")
            try:
                results[scenario]["pgbench"] = measure_pgbench(args, scenario)
            except PgbenchFailed as exc:
                print(f"  pgbench failed: {exc}")
                results[scenario]["pgbench"] = {"error": str(exc)}

    for row in results.values():
        if row.get("http") and row.get("pgbench", {}).get("tps"):
            row["ratio"] = round(row["http"]["rps"] / row["pgbench"]["tps"], 3)
            http_rate = row["http"]["cpu_per_request"].get("cpu_bound_rate")
            pgbench_rate = row["pgbench"]["cpu_per_transaction"].get("cpu_bound_rate")
            if http_rate and pgbench_rate:
                row["ratio_cpu_bound"] = round(http_rate / pgbench_rate, 3)

    document = {
        "name": name,
        "started_at": stamp,
        "git": git_state(),
        "machine": {"cpus": os.cpu_count()},
        "config": {
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "threads": args.threads,
            "workers": args.workers or "default",
            "server_env": extra_env,
            "seed_tickets": args.seed_tickets,
            "list_path": LIST_PATH,
        },
        "server_log": server_log,
        "results": results,
    }
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print_table(results, args)
    if server_log.get("error"):
        print(f"server logged {server_log['error']} error line(s)")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
