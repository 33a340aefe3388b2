"""What the benchmarks share: the service's processes (the API, the Procfile's worker pools and the
scheduler, with one environment), databases, tokens, /proc readings, the SMTP sink, log scans,
results and tables. ``python -m bench.common sink --port P --out FILE`` runs the sink."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from tests.sinks import free_port

__all__ = ["free_port"]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CREATE_PATH = "/v1/support/tickets"
TICKET = {  # the API contract's example request
    "subject": "Payment not received",
    "body": "I completed a 30-minute session yesterday but the payment has not appeared in my "
    "earnings.",
    "category": "billing",
    "priority": "high",
}
# The developer's settings that must not reach the services: they would send mail, call Slack,
# check tokens with another key or use other data.
_FOREIGN = re.compile(r"(SMTP|SLACK|JWT|ADMIN|REDIS|DATABASE|SLA|AUTO_CLOSE|OUTBOX|HELPDESK)_")


# -- statistics, results, tables ------------------------------------------------------------------


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of a sorted sequence."""
    if not ordered:
        return float("nan")
    return ordered[int(max(0, min(len(ordered) - 1, -(-len(ordered) * pct // 100) - 1)))]


def summary_ms(values_s: Iterable[float]) -> dict[str, float]:
    ordered = sorted(v * 1000 for v in values_s)
    if not ordered:
        return {"count": 0}
    cuts = {"min_ms": ordered[0]} | {f"p{p}_ms": percentile(ordered, p) for p in (50, 90, 99)}
    cuts |= {"max_ms": ordered[-1], "mean_ms": sum(ordered) / len(ordered)}
    return {"count": len(ordered)} | {key: round(ms, 1) for key, ms in cuts.items()}


def git_state(root: Path = ROOT) -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=root, capture_output=True, text=True
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def save_results(prefix: str, document: dict[str, Any], label: str = "") -> Path:
    """``document`` with the git state and the cores, as bench/results/PREFIX-TIME[-LABEL].json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / (f"{prefix}-{stamp}" + (f"-{label}" if label else "") + ".json")
    document = {"git": git_state(), "cpus": os.cpu_count(), **document}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"results: {path.relative_to(ROOT)}")
    return path


def newest_result(prefix: str, label: str) -> dict[str, Any] | None:
    files = sorted(RESULTS_DIR.glob(f"{prefix}-*-{label}.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else None


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def run_options(
    parser: argparse.ArgumentParser,
    database_url: str,
    quiet_below: float,
    quiet_timeout: float,
    label: str = "--label",
) -> None:
    """The options every measuring benchmark has: its database, how quiet the machine must be
    before a measurement, and the results file's suffix."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--database-url", default=database_url, help="emptied; its name must contain 'bench'")
    add(
        "--quiet-below", type=float, default=quiet_below, help="quiet: busy under this %% of a core"
    )
    add("--quiet-timeout", type=float, default=quiet_timeout, help="longest wait for quiet, s")
    add(label, default="", help="added to the results file name")


def env_pairs(parser: argparse.ArgumentParser, items: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict."""
    if any("=" not in item for item in items):
        parser.error("settings are NAME=VALUE")
    return dict(item.split("=", 1) for item in items)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]


# -- /proc ----------------------------------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds) of every process we can read."""
    table = {}
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            raw = Path(entry.path, "stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
            table[int(entry.name)] = (
                int(fields[1]),
                raw[raw.index("(") + 1 : raw.rindex(")")],
                cpu,
            )
    return table


def descendants(root: int, table: dict[int, tuple[int, str, float]] | None = None) -> list[int]:
    """``root`` and every process below it."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _, _) in table.items():
        children[ppid].append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found += [pid] if pid in table else []
        todo += children[pid]
    return found


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in kB."""
    with contextlib.suppress(OSError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {
            line[:5]: int(line.split()[1]) for line in lines if line.startswith(("VmRSS", "VmHWM"))
        }
    return {}


def cpu_s(pid: int, tree: bool = False) -> float:
    """CPU seconds of a process (``tree``: with every process below it)."""
    table = proc_table()
    return sum(table[p][2] for p in (descendants(pid, table) if tree else [pid]))


def rss_mb(pids: Iterable[int]) -> float:
    return round(sum(memory_kb(pid).get("VmRSS", 0) for pid in pids) / 1024, 1)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK, sum(values[:8]) / CLK_TCK


def busy_pct(since: tuple[float, float]) -> float:
    """Percent of one core the machine was busy since ``since`` (a machine_cpu() reading)."""
    (busy0, total0), (busy1, total1) = since, machine_cpu()
    return (
        100 * (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)
        if total1 > total0
        else 0.0
    )


def wait_for_quiet(limit_pct: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until the machine is busy under ``limit_pct``% of one core."""
    deadline = time.monotonic() + timeout
    while True:
        before = machine_cpu()
        time.sleep(1.0)
        if (busy := round(busy_pct(before), 1)) <= limit_pct or time.monotonic() > deadline:
            return busy


class Monitor(threading.Thread):
    """While a measurement runs, samples every process and splits the CPU used into roles: each
    root's process tree by name; ``postgres`` (the server's background processes and its
    connections to the benchmark database; connections to other databases are other load);
    ``loadgen`` (wrk, pgbench, and this process when ``loadgen_self``); ``other`` (the rest of
    the machine). Sampling during the run also counts processes that come and go within it. It
    keeps the peak RSS (VmHWM) of every process of the roots."""

    def __init__(
        self, roots: dict[str, int], database_url: str, *, loadgen_self: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.roots, self.loadgen_self = dict(roots), loadgen_self
        self.database = dbname(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:  # its parent is the server
            backend = (conn.execute("SELECT pg_backend_pid()").fetchone() or (0,))[0]
            self.postmaster = proc_table().get(backend, (0, "", 0.0))[0]  # 0: not on this host
        self._stop_event = threading.Event()
        self.role: dict[int, str] = {}
        self.comm: dict[int, str] = {}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.memory: dict[int, dict[str, int]] = {}
        self.memory_at_start: dict[int, int] = {}

    def _postgres_role(self, pid: int) -> str:
        """A connection's title names its database and client (``postgres: root helpdesk_bench
        127.0.0.1(5432) idle``); a background process names neither."""
        with contextlib.suppress(OSError):
            words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
            client = any(w.startswith(("127.", "[")) or "(" in w for w in words)
            return "postgres" if self.database in words or not client else "other"
        return "other"

    def _sample(self, first: bool) -> None:
        table = proc_table()
        for name, root in list(self.roots.items()):  # add_root() may run meanwhile
            for pid in descendants(root, table):
                self.role.setdefault(pid, name)
        for pid, (ppid, comm, cpu) in table.items():
            if pid not in self.role and self.postmaster and ppid == self.postmaster:
                self.role[pid] = self._postgres_role(pid)
            elif pid not in self.role and (
                comm in ("wrk", "pgbench") or (self.loadgen_self and pid == os.getpid())
            ):
                self.role[pid] = "loadgen"
            self.comm[pid], self.last[pid] = comm, cpu
            self.first.setdefault(pid, cpu if first else 0.0)  # new during the run: all of it
            if self.role.get(pid) in self.roots:
                self.memory[pid] = memory_kb(pid)
                self.memory_at_start.setdefault(
                    pid, self.memory[pid].get("VmHWM", 0) if first else 0
                )

    def start(self) -> None:
        self._machine0, self._t0 = machine_cpu(), time.monotonic()
        self._sample(first=True)
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(0.25):
            self._sample(first=False)

    def add_root(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def report(self) -> dict[str, Any]:
        """CPU in percent of one core by role (and seconds), the busiest other processes, the
        memory of the roots' processes. May be called while sampling goes on."""
        wall = time.monotonic() - self._t0
        busy = busy_pct(self._machine0) * wall / 100
        used: dict[str, float] = defaultdict(float)
        others: dict[str, float] = defaultdict(float)
        for pid, cpu in self.last.items():
            if (role := self.role.get(pid, "other")) == "other":
                others[self.comm[pid]] += cpu - self.first.get(pid, 0.0)
            else:
                used[role] += cpu - self.first.get(pid, 0.0)
        pct = {role: round(100 * s / wall, 1) for role, s in sorted(used.items())}
        pct["other"] = round(max(0.0, 100 * (busy - sum(used.values())) / wall), 1)
        pct["machine_busy"] = round(100 * busy / wall, 1)
        top = sorted(others.items(), key=lambda kv: -kv[1])[:5]
        memory = [
            {
                "service": self.role[pid],
                "pid": pid,
                "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1),
                "peak_rss_at_start_mb": round(self.memory_at_start.get(pid, 0) / 1024, 1),
            }
            for pid, mem in sorted(self.memory.items(), key=lambda kv: (self.role[kv[0]], kv[0]))
        ]
        return {
            "wall_s": round(wall, 2),
            "cpu_pct": pct,
            "cpu_s": {role: round(s, 3) for role, s in used.items()},
            "other_processes": {comm: round(100 * s / wall, 1) for comm, s in top},
            "memory": memory,
        }

    def finish(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join()
        self._sample(first=False)
        return self.report()


def cpu_line(cpu_pct: dict[str, float]) -> str:
    return ", ".join(f"{role} {value:.0f}" for role, value in cpu_pct.items())


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Service:
    """A child process in its own session, logging to a file; ready when what it logged since
    it started shows ``ready_text`` ``ready_count`` times, or when ``ready_url`` answers 200."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = ROOT
    ready_text: str | None = None
    ready_count: int = 1
    ready_url: str | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _log_offset: int = 0

    def start(self) -> Service:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120.0) -> Service:
        deadline = time.monotonic() + timeout
        while not self._ready():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        if self.ready_url:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.ready_url, timeout=2) as answer,
            ):
                return bool(answer.status == 200)
            return False
        text = self.output()[self._log_offset :]  # a restart appends to the same log
        return self.ready_text is None or text.count(self.ready_text) >= self.ready_count

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM to the process only: it stops its children itself (signalling the group gives
        a dramatiq worker process two SIGTERMs, and it then hangs). What is left is killed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group: no chance to ack, nack or clean up."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def bin_dir(root: Path = ROOT) -> Path:
    """The virtualenv of a checkout (this one's: the running interpreter's)."""
    return Path(sys.executable).parent if root == ROOT else root / ".venv" / "bin"


def service_env(
    database_url: str, redis_url: str, *, root: Path = ROOT, **settings: Any
) -> dict[str, str]:
    """The one environment of every service of a run: this process's, minus settings that reach
    the outside world or other data, plus the benchmark's (development tokens signed with the
    checkout's dev key, JSON logs, no rate limit, email off); ``settings`` override."""
    env = {k: v for k, v in os.environ.items() if not _FOREIGN.match(k)}
    env |= {"PATH": f"{bin_dir(root)}{os.pathsep}{os.environ.get('PATH', '')}", "HOST": HOST}
    env |= {"APP_ENV": "development", "HELPDESK_DEV_KEY_DIR": str(root / ".devkeys")}
    env |= {
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_PER_MINUTE": "0",
        "ADMIN_EMAILS": "",
    }
    env |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    return env | {key: str(value) for key, value in settings.items()}


def mail_settings(sink_port: int, *team: str) -> dict[str, Any]:
    """Email on, to the SMTP sink on ``sink_port``, the team being ``team`` (ADMIN_EMAILS)."""
    return {
        "SMTP_HOST": HOST,
        "SMTP_PORT": sink_port,
        "SMTP_FROM": "Support <support@helpdesk.test>",
        "ADMIN_EMAILS": ",".join(team),
    }


def procfile(env: dict[str, str], root: Path = ROOT) -> dict[str, str]:
    """The Procfile's process types with ``${VAR:-default}`` expanded as the shell would."""
    lines = [
        line.split(":", 1) for line in (root / "Procfile").read_text().splitlines() if ":" in line
    ]
    expand = re.compile(r"\$\{(\w+):-([^}]*)\}")
    return {
        name.strip(): expand.sub(lambda m: env.get(m.group(1)) or m.group(2), command.strip())
        for name, command in lines
        if not name.lstrip().startswith("#")
    }


# The Procfile's worker pools and the scheduler: every process type but the API and the exporter.
POOLS = tuple(name for name in procfile({}) if name not in ("web", "exporter"))


def procfile_service(
    name: str,
    env: dict[str, str],
    log_dir: Path,
    *,
    root: Path = ROOT,
    args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> Service:
    """One Procfile line as honcho runs it (``/bin/sh -c``; with exec, so the pid is the
    service's), ``args`` appended. Its leading ``VAR=value`` words go into its environment,
    then ``extra_env``. The API (``web``) is ready when /readyz answers on ``env['PORT']``."""
    words = shlex.split(procfile(env, root)[name]) + list(args)
    own = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, _, own[key] = words.pop(0).partition("=")
    argv = ["/bin/sh", "-c", "exec " + shlex.join(words)]
    service = Service(name, argv, env | own | (extra_env or {}), log_dir / f"{name}.log", root)
    if name == "web":
        service.port = int(env["PORT"])
        service.ready_url = f"http://{HOST}:{service.port}/readyz"
    elif words[0] == "dramatiq":
        flags = [i for i, w in enumerate(words) if w in ("--processes", "-p")]
        service.ready_text = "ready for action"
        service.ready_count = int(words[flags[0] + 1]) if flags else os.cpu_count() or 1
    elif "workers.scheduler" in words:
        service.ready_text = "scheduler.started"
    return service


@dataclass
class Stack:
    """Services of one run started from the Procfile with one environment, stopped together."""

    env: dict[str, str]
    log_dir: Path
    root: Path = ROOT
    services: dict[str, Service] = field(default_factory=dict)

    def start(
        self,
        *names: str,
        web_args: Sequence[str] = (),
        extra_env: dict[str, dict[str, str]] | None = None,
    ) -> Stack:
        """Start ``names`` and wait until each is ready (``web_args``: the API's own arguments,
        ``extra_env``: settings of some of them by name)."""
        extra = extra_env or {}
        for name in names:
            args = web_args if name == "web" else ()
            service = procfile_service(
                name, self.env, self.log_dir, root=self.root, args=args, extra_env=extra.get(name)
            )
            self.services[name] = service.start()
        try:
            for name in names:
                self.services[name].wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def restart(self, name: str) -> Service:
        """SIGKILL a service's process group and start it again."""
        self.services.pop(name).kill()
        return self.start(name)[name]

    def pids(self) -> dict[str, int]:
        return {name: service.pid for name, service in self.services.items()}

    def stop(self) -> None:
        for name in sorted(self.services, key=lambda n: n == "web"):  # the API last
            self.services.pop(name).stop()


def start_redis(log_dir: Path) -> Service:
    """A redis-server of the run's own, without persistence (``.port``); started again after a
    kill, it is empty, like a Redis restarted without a disk."""
    port = free_port()
    argv = ["redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(log_dir)]
    redis = Service("redis", argv, dict(os.environ), log_dir / "redis.log", port=port)
    redis.ready_text = "Ready to accept"
    return redis.start().wait_ready(20)


def redis_url_of(service: Service) -> str:
    return f"redis://{HOST}:{service.port}/0"


# -- data -----------------------------------------------------------------------------------------


def dbname(database_url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(database_url).get("dbname", ""))


def prepare_database(database_url: str, *, root: Path = ROOT, fresh: bool = False) -> None:
    """Create and migrate a benchmark database with the checkout's ``helpdesk migrate``, then
    empty it (or drop it first: ``fresh``). Its name must contain 'bench'."""
    name = dbname(database_url)
    if "bench" not in name:
        raise SystemExit(
            f"refusing database {name!r}: a benchmark's database name contains 'bench'"
        )
    if fresh:
        info = psycopg.conninfo.conninfo_to_dict(database_url) | {"dbname": "postgres"}
        with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    env = service_env(database_url, "redis://127.0.0.1:6379/13", root=root)
    subprocess.run(
        [bin_dir(root) / "helpdesk", "migrate"],
        cwd=root,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if not fresh:
        with psycopg.connect(database_url, autocommit=True) as conn:
            # Every table the migrations made (new ones included), never alembic_version.
            tables = conn.execute(
                "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            ).fetchone()
            if tables and tables[0]:
                conn.execute(f"TRUNCATE {tables[0]} CASCADE")
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")


def flush_redis(redis_url: str) -> None:
    """Empty a Redis database of the benchmarks (never 0, the service's, or 15, the tests')."""
    import redis

    parts = urlsplit(redis_url)
    if parts.port in (None, 6379) and parts.path.strip("/") in ("", "0", "15"):
        raise SystemExit(f"refusing to flush {redis_url}")
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    client.flushdb()
    client.close()


def dev_tokens(
    subs: Iterable[str], root: Path = ROOT, ttl: int = 7200, *, admin: bool = False
) -> list[str]:
    """Tokens as ``helpdesk token [--admin]`` makes them, signed with the checkout's development
    key (created on first use), which its services accept under APP_ENV=development."""
    import jwt

    from domain.devkey import ensure_dev_keypair

    key, now = ensure_dev_keypair(root / ".devkeys")[0], int(time.time())
    role = {"role": "admin"} if admin else {}
    claims = [{"sub": s, "iat": now, "exp": now + ttl, **role} for s in subs]
    return [jwt.encode(c, key, algorithm="RS256") for c in claims]


def connect(database_url: str, attempts: int = 60) -> psycopg.Connection[Any]:
    """An autocommit connection, retried while the (shared) server has no slot free."""
    for _ in range(attempts - 1):
        try:
            return psycopg.connect(database_url, autocommit=True)
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc):
                raise
            time.sleep(0.5)
    return psycopg.connect(database_url, autocommit=True)


def query(database_url: str, sql: str, *params: Any) -> list[Any]:
    """Every row of one statement, on a connection of its own."""
    with connect(database_url) as conn:
        return conn.execute(sql, params or None).fetchall()


# -- logs -----------------------------------------------------------------------------------------


@dataclass
class LogScan:
    lines: int = 0
    error_lines: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)


def scan_log(text: str) -> LogScan:
    """Error-level lines and tracebacks in a service's output (JSON lines from our processes,
    plain lines from Granian's and Dramatiq's), and warning lines counted by event and status."""
    scan, warnings = LogScan(), Counter[str]()
    for line in filter(str.strip, text.splitlines()):
        scan.lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if "Traceback" in line or re.search(r"\b(ERROR|CRITICAL|panicked)\b", line):
                scan.error_lines.append(line[:500])
        elif (
            str(record.get("level", "")).lower() in ("error", "critical", "exception", "fatal")
            or "Traceback" in line
        ):
            scan.error_lines.append(line[:500])
        elif record.get("level") == "warning":
            warnings[" ".join(str(record[k]) for k in ("event", "status") if k in record)] += 1
    scan.warnings = dict(warnings)
    return scan


def log_problems(log_dir: Path) -> dict[str, dict[str, Any]]:
    """Error and warning lines of each service log in ``log_dir``, with the first error line."""
    found = {}
    for path in sorted(log_dir.glob("*.log")):
        scan = scan_log(path.read_text(errors="replace"))
        if scan.error_lines or scan.warnings:
            first = next(iter(scan.error_lines), None)
            found[path.stem] = {
                "errors": len(scan.error_lines),
                "warnings": scan.warnings,
                "first_error": first,
            }
    return found


# -- the SMTP sink (its own process) --------------------------------------------------------------

_EVENT_HEADER = re.compile(rb"^X-Helpdesk-Event:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


def run_sink(port: int, out_path: Path) -> None:
    """An SMTP server that accepts everything and appends ``time event-id recipient`` lines; the
    time is when it has the whole message, before it answers 250."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    lines: list[str] = []

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            accepted_at = time.time()
            content = envelope.original_content or b""
            content = content.encode() if isinstance(content, str) else content
            found = _EVENT_HEADER.search(content.split(b"\r\n\r\n", 1)[0])
            event_id = found.group(1).decode() if found else "-"
            lines.extend(f"{accepted_at:.6f} {event_id} {rcpt}\n" for rcpt in envelope.rcpt_tos)
            return "250 OK"

    async def serve(out: Any) -> None:
        loop = asyncio.get_running_loop()

        def smtp() -> SMTP:
            return SMTP(Handler(), hostname="sink.bench", ident="bench sink", decode_data=False)

        server = await loop.create_server(smtp, host=HOST, port=port, backlog=1024)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("sink ready", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
            out.write("".join(lines))
            out.flush()
            lines.clear()
        server.close()

    with open(out_path, "a") as out:
        asyncio.run(serve(out))


@dataclass
class Sink:
    """The SMTP sink in its own process (not sharing a GIL with a load generator) and what it
    recorded so far: ``records`` of (accept time, event id, recipient)."""

    service: Service
    path: Path
    records: list[tuple[float, str, str]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""

    @classmethod
    def start(cls, log_dir: Path) -> Sink:
        port, out = free_port(), log_dir / "sink.txt"
        argv = [sys.executable, "-m", "bench.common", "sink", "--port", str(port)]
        argv += ["--out", str(out)]
        service = Service("sink", argv, dict(os.environ), log_dir / "sink.log", port=port)
        service.ready_text = "sink ready"
        return cls(service.start().wait_ready(30), out)

    @property
    def port(self) -> int:
        return self.service.port

    def poll(self) -> int:
        if self.path.exists():
            with open(self.path) as f:
                f.seek(self._offset)
                data, self._offset = self._partial + f.read(), f.tell()
            *complete, self._partial = data.split("\n")
            for t, event_id, rcpt in (line.split(" ", 2) for line in complete):
                self.records.append((float(t), event_id, rcpt))
        return len(self.records)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.poll() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self.service.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    parser.add_argument("command", choices=["sink"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    run_sink(options.port, options.out)
