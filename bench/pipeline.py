"""Pipeline benchmark: from a ticket's commit to the SMTP server accepting its email.

    uv run python -m bench.pipeline [--rate 200] [--tickets 2000] [--backlog 5000] ...

Everything runs on 127.0.0.1 and is private to the run: its own database (created, migrated and
emptied), its own redis-server on a free port, an SMTP sink in its own process, and the
services started from the Procfile lines exactly as ``make run`` starts them (API, the events,
notifications and maintenance worker pools with their default -p/-t, and the scheduler).

Two measurements:

* latency: tickets are created by an open-loop generator at a steady rate (one team address,
  Slack off, so one ticket = one email). Latency is the SMTP sink's accept time (when it has the
  message, before it answers 250) minus the event's ``ticket_events.created_at``; the sink reads
  the event id from the ``X-Helpdesk-Event`` header and the database is queried after the run.
* drain: with the worker pools and the scheduler stopped, the API creates a backlog of tickets
  (their events wait in Redis); then the workers start with several team addresses (several
  emails per event) and the benchmark measures notifications/s until the sink has them all.

It prints a table and writes the full results as JSON to bench/results/. See bench/PIPELINE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    CLK_TCK,
    HOST,
    RESULTS_DIR,
    ROOT,
    Service,
    empty_database,
    free_port,
    git_state,
    machine_cpu,
    procfile_commands,
    summary_ms,
    wait_for_quiet,
)

DEFAULT_DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_pipeline"
CREATE_PATH = "/v1/support/tickets"
TICKET = {
    "subject": "Payment not received",
    "body": (
        "I completed a 30-minute session yesterday but the payment has not appeared in my earnings."
    ),
    "category": "billing",
    "priority": "high",
}
# Tickets come from many users, as in real life: the API limits each user's requests per minute.
WARMUP_USERS = "bench-warmup-"
LATENCY_USERS = "bench-latency-"
BACKLOG_USERS = "bench-backlog-"
SENDER = "Support <support@helpdesk.test>"


# -- small helpers -----------------------------------------------------------------------------


# -- CPU accounting per role -------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds)."""
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
        table[int(entry.name)] = (
            int(fields[1]),
            comm,
            (int(fields[11]) + int(fields[12])) / CLK_TCK,
        )
    return table


class CpuMonitor(threading.Thread):
    """CPU used during a measurement by each role: every started process tree by name, the
    PostgreSQL backends of the benchmark database, the rest of PostgreSQL, this process (the
    load generator) and whatever else runs on the machine."""

    def __init__(self, roots: dict[str, int], database: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.database = database
        self.interval = interval
        self._stop_event = threading.Event()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self._machine0 = (0.0, 0.0)
        self._t0 = 0.0

    def _pg_backends(self) -> set[int]:
        try:
            with psycopg.connect(
                dbname=self.database, host=HOST, user="root", autocommit=True
            ) as c:
                rows = c.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
                ).fetchall()
        except psycopg.Error:
            return set()
        return {int(r[0]) for r in rows}

    def _sample(self, first: bool) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        self._role.setdefault(os.getpid(), "loadgen")  # this process only, not its children
        for role, root in self.roots.items():
            stack = [root]
            while stack:
                pid = stack.pop()
                if pid in table and pid not in self._role:
                    self._role[pid] = role
                stack.extend(children.get(pid, []))
        for pid in self._pg_backends():
            self._role.setdefault(pid, "postgres_bench")
        for pid, (_, comm, cpu) in table.items():
            if pid not in self._role and comm.startswith("postgres"):
                self._role[pid] = "postgres_other"
            if first:
                self._first[pid] = cpu
            else:
                self._first.setdefault(pid, 0.0)
            self._last[pid] = cpu

    def start(self) -> None:
        self._machine0 = machine_cpu()
        self._t0 = time.monotonic()
        self._sample(first=True)
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample(first=False)

    def finish(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        self._sample(first=False)
        wall = time.monotonic() - self._t0
        busy0, total0 = self._machine0
        busy1, total1 = machine_cpu()
        cores = os.cpu_count() or 1
        busy = cores * (busy1 - busy0) / (total1 - total0) * wall if total1 > total0 else 0.0
        used: dict[str, float] = {}
        for pid, cpu in self._last.items():
            role = self._role.get(pid)
            if role is not None:
                used[role] = used.get(role, 0.0) + cpu - self._first.get(pid, 0.0)
        out = {f"{role}_pct": round(100 * value / wall, 1) for role, value in sorted(used.items())}
        out["other_pct"] = round(max(0.0, 100 * (busy - sum(used.values())) / wall), 1)
        out["machine_busy_pct"] = round(100 * busy / wall, 1)
        return out


# -- the database ------------------------------------------------------------------------------


def prepare_database(database_url: str, env: dict[str, str]) -> None:
    """Create and migrate the benchmark database (``helpdesk migrate``), then empty it."""
    name = str(psycopg.conninfo.conninfo_to_dict(database_url).get("dbname", ""))
    if "bench" not in name:
        raise SystemExit(f"refusing to use database {name!r}: its name must contain 'bench'")
    subprocess.run(
        ["helpdesk", "migrate"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": database_url},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    empty_database(database_url)


def event_times(database_url: str, user_prefix: str) -> dict[str, float]:
    """event id -> created_at (epoch seconds) of the ticket.created events of these users."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT e.id, extract(epoch FROM e.created_at)::float8 FROM ticket_events e"
            " JOIN tickets t ON t.id = e.ticket_id"
            " WHERE t.user_id LIKE %s AND e.type = 'ticket.created'",
            (user_prefix + "%",),
        ).fetchall()
    return {str(r[0]): float(r[1]) for r in rows}


def stages(database_url: str, user_prefix: str, arrivals: dict[str, float]) -> dict[str, Any]:
    """Where the time goes, from the timestamps the pipeline records: the API's publisher marks
    the event published after handing it to Redis; the dispatcher stamps the ledger rows when
    it starts; a delivery stamps ``sent_at`` when it starts; the sink stamps the end."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT e.id, extract(epoch FROM e.created_at)::float8,"
            " extract(epoch FROM e.published_at)::float8,"
            " extract(epoch FROM min(d.created_at))::float8,"
            " extract(epoch FROM min(d.sent_at))::float8"
            " FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id"
            " JOIN deliveries d ON d.event_id = e.id"
            " WHERE t.user_id LIKE %s AND e.type = 'ticket.created' GROUP BY e.id",
            (user_prefix + "%",),
        ).fetchall()
    parts: dict[str, list[float]] = {
        "commit_to_published": [],
        "published_to_dispatch_start": [],
        "dispatch_start_to_delivery_start": [],
        "delivery_start_to_accepted": [],
    }
    for event_id, created, published, planned, started in rows:
        if None in (created, published, planned, started) or event_id not in arrivals:
            continue
        parts["commit_to_published"].append(published - created)
        parts["published_to_dispatch_start"].append(planned - published)
        parts["dispatch_start_to_delivery_start"].append(started - planned)
        parts["delivery_start_to_accepted"].append(arrivals[event_id] - started)
    return {name: summary_ms(values) for name, values in parts.items()}


def ledger(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        statuses: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        )
        events = conn.execute(
            "SELECT count(*), count(published_at), count(completed_at), sum(publish_count)"
            " FROM ticket_events"
        ).fetchone()
    assert events is not None
    return {
        "deliveries": {str(k): int(v) for k, v in statuses.items()},
        "events": int(events[0]),
        "events_published": int(events[1]),
        "events_completed": int(events[2]),
        "publish_count_total": int(events[3] or 0),
    }


# -- processes ---------------------------------------------------------------------------------


def procfile_service(name: str, command: str, env: dict[str, str], log_dir: Path) -> Service:
    # Like honcho: each line runs through /bin/sh -c, with exec so the pid is the service's.
    # Leading NAME=value words set the command's environment (`exec NAME=value cmd` would try
    # to run "NAME=value"), so they go into the environment here.
    words = shlex.split(command)
    extra: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        extra[key] = value
    service = Service(
        name,
        ["/bin/sh", "-c", "exec " + shlex.join(words)],
        {**env, **extra},
        log_dir / f"{name}.log",
    )
    if words and words[0] == "dramatiq":
        service.ready_text = "ready for action"
        for flag in ("--processes", "-p"):
            if flag in words:
                service.ready_count = int(words[words.index(flag) + 1])
        if "--processes" not in words and "-p" not in words:
            service.ready_count = os.cpu_count() or 1  # dramatiq's default
    elif "workers.scheduler" in command:
        service.ready_text = "scheduler.started"
    return service


def start_redis(log_dir: Path) -> tuple[Service, int]:
    port = free_port()
    argv = [
        "redis-server",
        "--bind", HOST,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(log_dir),
        "--protected-mode", "yes",
    ]  # fmt: skip
    service = Service("redis", argv, dict(os.environ), log_dir / "redis.log", "Ready to accept")
    service.start().wait_ready(20)
    return service, port


def wait_http_ready(port: int, service: Service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{port}/readyz"
    while time.monotonic() < deadline:
        assert service.process is not None
        if service.process.poll() is not None:
            raise RuntimeError(f"the API exited early; see {service.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become ready; see {service.log_path}")


def mint_tokens(prefix: str, count: int, env: dict[str, str]) -> list[str]:
    """Development tokens for users ``prefix0`` .. ``prefix{count-1}``, as ``helpdesk token``
    makes them (its code, run here: one process start per token would take minutes)."""
    from api.cli import main as helpdesk

    tokens = []
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        for i in range(count):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                helpdesk(["token", "--sub", f"{prefix}{i}", "--ttl", "7200"])
            tokens.append(out.getvalue().strip())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return tokens


# -- the SMTP sink (its own process) -----------------------------------------------------------

_EVENT_HEADER = re.compile(rb"^X-Helpdesk-Event:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


def run_sink(port: int, out_path: Path) -> None:
    """An SMTP server that accepts everything and appends "time event-id recipient" lines."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    lines: list[str] = []

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            accepted_at = time.time()
            content = envelope.original_content or b""
            if isinstance(content, str):
                content = content.encode()
            head = content.split(b"\r\n\r\n", 1)[0]
            found = _EVENT_HEADER.search(head)
            event_id = found.group(1).decode() if found else "-"
            for rcpt in envelope.rcpt_tos:
                lines.append(f"{accepted_at:.6f} {event_id} {rcpt}\n")
            return "250 OK"

    async def flush_forever(out: Any) -> None:
        while True:
            await asyncio.sleep(0.05)
            if lines:
                chunk = "".join(lines)
                lines.clear()
                out.write(chunk)
                out.flush()

    async def serve(out: Any) -> None:
        handler = Handler()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.bench", ident="bench sink", decode_data=False),
            host=HOST,
            port=port,
            backlog=1024,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        flusher = asyncio.create_task(flush_forever(out))
        print("sink ready", flush=True)
        await stop.wait()
        flusher.cancel()
        out.write("".join(lines))
        server.close()

    with open(out_path, "a") as out:
        asyncio.run(serve(out))


@dataclass
class SinkReader:
    """Reads the sink's record file as it grows."""

    path: Path
    records: list[tuple[float, str, str]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""

    def poll(self) -> int:
        if self.path.exists():
            with open(self.path) as f:
                f.seek(self._offset)
                data = f.read()
                self._offset = f.tell()
            data = self._partial + data
            *complete, self._partial = data.split("\n")
            for line in complete:
                t, event_id, rcpt = line.split(" ", 2)
                self.records.append((float(t), event_id, rcpt))
        return len(self.records)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.poll() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def start_sink(log_dir: Path, tag: str) -> tuple[Service, SinkReader, int]:
    port = free_port()
    out = log_dir / f"sink-{tag}.txt"
    argv = [sys.executable, "-m", "bench.pipeline", "sink", "--port", str(port), "--out", str(out)]
    service = Service(f"sink-{tag}", argv, dict(os.environ), log_dir / f"sink-{tag}.log")
    service.ready_text = "sink ready"
    service.start().wait_ready(30)
    return service, SinkReader(out), port


# -- load generation ---------------------------------------------------------------------------


@dataclass
class Sent:
    scheduled: float  # monotonic target
    number: int = 0  # which request of the run (picks the user)
    started: float = 0.0  # wall clock when the request was handed to the client
    lag: float = 0.0  # how late after its scheduled moment it was handed over
    finished: float = 0.0  # wall clock when the response arrived
    status: int = 0
    error: str | None = None


def create_requests(port: int, tokens: list[str]) -> list[bytes]:
    return [_create_request(port, token) for token in tokens]


def _create_request(port: int, token: str) -> bytes:
    body = json.dumps(TICKET).encode()
    head = (
        f"POST {CREATE_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    port: int, requests: list[bytes], jobs: asyncio.Queue[Sent | None], reply_within_s: float
) -> None:
    """One keep-alive HTTP/1.1 connection sending the same request for every job it takes.

    A few dozen lines instead of an HTTP client library: on a 2-core machine the load
    generator's CPU is taken from the system it measures, and this costs several times less.
    """
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while (item := await jobs.get()) is not None:
        item.started = time.time()
        item.lag = time.monotonic() - item.scheduled
        try:
            async with asyncio.timeout(reply_within_s):
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(requests[item.number % len(requests)])
                status_line = await reader.readline()
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and "close" in value.lower():
                        close = True
                await reader.readexactly(length)
            item.status = int(status_line.split()[1])
            if close:
                writer.close()
                reader = writer = None
        except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError) as exc:
            item.error = type(exc).__name__
            if writer is not None:
                writer.close()
            reader = writer = None
        item.finished = time.time()
    if writer is not None:
        writer.close()


async def open_loop(
    port: int, tokens: list[str], *, rate: float, count: int, max_seconds: float, connections: int
) -> tuple[list[Sent], float]:
    """Send ``count`` POSTs at ``rate``/s on a fixed schedule, whatever the responses do.

    Each request is due at its moment; a free connection takes it then (if every connection is
    busy it waits, and ``Sent.lag`` says how long).
    """
    requests = create_requests(port, tokens)
    jobs: asyncio.Queue[Sent | None] = asyncio.Queue()
    workers = [
        asyncio.create_task(_connection(port, requests, jobs, 10.0)) for _ in range(connections)
    ]
    results: list[Sent] = []
    t0 = time.monotonic() + 0.05
    for i in range(count):
        target = t0 + i / rate
        if target - t0 > max_seconds:
            break
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        item = Sent(scheduled=target, number=i)
        results.append(item)
        jobs.put_nowait(item)
    sending_s = time.monotonic() - t0
    for _ in workers:
        jobs.put_nowait(None)
    _, late = await asyncio.wait(workers, timeout=30)
    for task in late:
        task.cancel()
    return results, sending_s


async def closed_loop(port: int, tokens: list[str], *, count: int, concurrency: int) -> int:
    """Create ``count`` tickets as fast as ``concurrency`` connections allow; returns failures."""
    requests = create_requests(port, tokens)
    jobs: asyncio.Queue[Sent | None] = asyncio.Queue()
    items = [Sent(scheduled=time.monotonic(), number=i) for i in range(count)]
    for item in items:
        jobs.put_nowait(item)
    for _ in range(concurrency):
        jobs.put_nowait(None)
    await asyncio.gather(*(_connection(port, requests, jobs, 60.0) for _ in range(concurrency)))
    return sum(1 for item in items if item.status != 201)


def create_backlog(port: int, tokens: list[str], count: int, concurrency: int) -> int:
    """Create ``count`` tickets, retrying the requests an overloaded API refused; returns how
    many were created."""
    created, left = 0, count
    for _ in range(5):
        failed = asyncio.run(closed_loop(port, tokens, count=left, concurrency=concurrency))
        created += left - failed
        left = failed
        if not left:
            break
        time.sleep(2)
    return created


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """The services of one measurement: sink, API, worker pools, scheduler."""

    args: argparse.Namespace
    log_dir: Path
    redis: Service
    redis_port: int
    base_env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)
    sink: Service | None = None
    reader: SinkReader | None = None
    api_port: int = 0
    commands: dict[str, str] = field(default_factory=dict)

    def env(self, team: list[str], sink_port: int) -> dict[str, str]:
        return {
            **self.base_env,
            "REDIS_URL": f"redis://{HOST}:{self.redis_port}/0",
            "PORT": str(self.api_port),
            "SMTP_HOST": HOST,
            "SMTP_PORT": str(sink_port),
            "SMTP_FROM": SENDER,
            "ADMIN_EMAILS": ",".join(team),
        }

    def start(self, tag: str, team: list[str], *, workers: bool) -> dict[str, str]:
        self.sink, self.reader, sink_port = start_sink(self.log_dir, tag)
        self.api_port = free_port()
        env = self.env(team, sink_port)
        self.commands = procfile_commands(env)
        if "web" in self.commands:
            web = procfile_service("web", self.commands["web"], env, self.log_dir)
            self.services["web"] = web.start()
            wait_http_ready(self.api_port, web)
        if workers:
            self.start_workers(env)
        return env

    def start_workers(self, env: dict[str, str]) -> None:
        started = [
            procfile_service(name, command, env, self.log_dir).start()
            for name, command in self.commands.items()
            if name != "web"
        ]
        for service in started:
            service.wait_ready()
            self.services[service.name] = service

    def roots(self) -> dict[str, int]:
        roots = {name: s.pid for name, s in self.services.items()}
        if self.sink is not None:
            roots["sink"] = self.sink.pid
        roots["redis"] = self.redis.pid
        return roots

    def stop(self) -> None:
        for name in [n for n in self.services if n != "web"] + ["web"]:
            if name in self.services:
                self.services[name].stop()
        self.services.clear()
        if self.sink is not None:
            self.sink.stop()


def problem_lines(log_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in log_dir.glob("*.log"):
        n = sum(
            1
            for line in path.read_text(errors="replace").splitlines()
            if re.search(r'"level": ?"(warning|error|critical)"|Traceback', line)
        )
        if n:
            counts[path.stem] = n
    return counts


def measure_latency(args: argparse.Namespace, stack: Stack, database: str) -> dict[str, Any]:
    team = ["team@support.test"]
    env = stack.start("latency", team, workers=True)
    reader = stack.reader
    assert reader is not None
    warm_tokens = mint_tokens(WARMUP_USERS, args.users, env)
    tokens = mint_tokens(LATENCY_USERS, args.users, env)
    if args.warmup > 0:
        print(f"latency: warm-up, {args.warmup} tickets at {args.rate:g}/s")
        asyncio.run(
            open_loop(
                stack.api_port, warm_tokens, rate=args.rate, count=args.warmup,
                max_seconds=args.max_seconds, connections=args.connections,
            )
        )  # fmt: skip
        if not reader.wait_for(args.warmup, min(args.drain_timeout, 60)):
            print(f"latency: warm-up: {reader.poll()} of {args.warmup} emails so far; going on")
    time.sleep(1.0)
    idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
    before = reader.poll()
    print(f"latency: {args.tickets} tickets at {args.rate:g}/s (machine busy before: {idle}%)")
    monitor = CpuMonitor(stack.roots(), database)
    monitor.start()
    sent, sending_s = asyncio.run(
        open_loop(
            stack.api_port, tokens, rate=args.rate, count=args.tickets,
            max_seconds=args.max_seconds, connections=args.connections,
        )
    )  # fmt: skip
    created = sum(1 for s in sent if s.status == 201)
    # Every committed ticket must reach the sink, including those whose response was lost:
    # wait until the API has finished what it was still working on.
    committed = -1
    while committed != (now := len(event_times(args.database_url, LATENCY_USERS))):
        committed = now
        time.sleep(2.0)
    complete = reader.wait_for(before + committed, args.drain_timeout)
    cpu = monitor.finish()
    stack.stop()

    created_at = event_times(args.database_url, LATENCY_USERS)
    arrivals: dict[str, float] = {}
    duplicates = 0
    for t, event_id, _ in reader.records[before:]:
        if event_id in arrivals:
            duplicates += 1
            arrivals[event_id] = min(arrivals[event_id], t)
        else:
            arrivals[event_id] = t
    latencies = [arrivals[e] - c for e, c in created_at.items() if e in arrivals]
    started = [s.started for s in sent if s.started]
    accept_times = sorted(arrivals[e] for e in created_at if e in arrivals)
    http = summary_ms(s.finished - s.started for s in sent if s.status == 201)
    send_window = (max(started) - min(started)) if len(started) > 1 else 0.0
    mail_window = (accept_times[-1] - accept_times[0]) if len(accept_times) > 1 else 0.0
    return {
        "rate_target": args.rate,
        "tickets_sent": len(sent),
        "tickets_created": created,
        "http_errors": {
            str(k): v
            for k, v in _count(
                s.error or (str(s.status) if s.status else "not sent in time")
                for s in sent
                if s.status != 201
            ).items()
        },
        "achieved_rate": round((len(started) - 1) / send_window, 1) if send_window else 0.0,
        "sending_s": round(sending_s, 2),
        "emails_expected": len(created_at),
        "emails_received": len(arrivals),
        "emails_duplicated": duplicates,
        "missing": len(created_at) - len(arrivals),
        "all_arrived": complete,
        "email_rate": round((len(accept_times) - 1) / mail_window, 1) if mail_window else 0.0,
        "latency": summary_ms(latencies),
        "stages": stages(args.database_url, LATENCY_USERS, arrivals),
        "http_response": http,
        "send_lag": summary_ms(s.lag for s in sent),
        "cpu": cpu,
        "machine_busy_pct_before": idle,
        "ledger": ledger(args.database_url),
        "problems_logged": problem_lines(stack.log_dir),
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def measure_drain(args: argparse.Namespace, stack: Stack, database: str) -> dict[str, Any]:
    team = [f"team{i}@support.test" for i in range(1, args.team_size + 1)]
    env = stack.start("drain", team, workers=False)
    reader = stack.reader
    assert reader is not None
    tokens = mint_tokens(BACKLOG_USERS, args.users, env)
    print(f"drain: creating a backlog of {args.backlog} tickets with the workers stopped")
    backlog = create_backlog(stack.api_port, tokens, args.backlog, args.backlog_connections)
    if backlog < args.backlog:
        raise RuntimeError(f"drain: only {backlog} of {args.backlog} tickets were created")
    # Let the API's publisher hand every event to Redis, so the sweep has nothing to add.
    deadline = time.monotonic() + 60
    while ledger(args.database_url)["events_published"] < args.backlog:
        if time.monotonic() > deadline:
            raise RuntimeError("drain: the API did not publish its events within 60 s")
        time.sleep(0.2)
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    expected = args.backlog * len(team)
    idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
    print(
        f"drain: starting the workers for {args.backlog} events -> {expected} notifications"
        f" (machine busy before: {idle}%)"
    )
    monitor = CpuMonitor(stack.roots(), database)
    monitor.start()
    launched = time.time()
    stack.start_workers(env)
    ready = time.time()
    for name in stack.services:
        if name != "web":
            monitor.roots[name] = stack.services[name].pid
    complete = reader.wait_for(expected, args.drain_timeout)
    cpu = monitor.finish()
    stack.stop()
    times = sorted(t for t, _, _ in reader.records)
    unique = {(e, r) for _, e, r in reader.records}
    first, last = (times[0], times[-1]) if times else (ready, ready)
    window = last - first
    return {
        "backlog_events": args.backlog,
        "team_size": len(team),
        "notifications_expected": expected,
        "notifications_received": len(unique),
        "duplicates": len(reader.records) - len(unique),
        "all_arrived": complete,
        "workers_boot_s": round(ready - launched, 2),
        "first_email_after_launch_s": round(first - launched, 2),
        "drain_s": round(window, 2),
        "notifications_per_s": round((len(times) - 1) / window, 1) if window else 0.0,
        "notifications_per_s_from_launch": round(len(times) / (last - launched), 1)
        if last > launched
        else 0.0,
        "cpu": cpu,
        "machine_busy_pct_before": idle,
        "ledger": ledger(args.database_url),
        "problems_logged": problem_lines(stack.log_dir),
    }


def print_report(document: dict[str, Any]) -> None:
    results = document["results"]
    print()
    print("Procfile (as run):")
    for name, command in document["config"]["procfile"].items():
        print(f"  {name}: {command}")
    for phase, result in results.items():
        if "error" in result:
            print(f"\n{phase}: {result['error']}")
    lat = results.get("latency")
    if lat and "error" not in lat:
        latency = lat["latency"]
        print()
        head = (
            f"{'target/s':>8} {'sent/s':>7} {'mails':>6} {'miss':>4} {'dup':>4}"
            f" {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'http p99':>8}"
        )
        print("commit -> SMTP accept, one email per ticket")
        print(head)
        print("-" * len(head))
        print(
            f"{lat['rate_target']:>8g} {lat['achieved_rate']:>7.1f} {lat['emails_received']:>6}"
            f" {lat['missing']:>4} {lat['emails_duplicated']:>4}"
            f" {latency.get('p50_ms', 0):>7.1f} {latency.get('p90_ms', 0):>7.1f}"
            f" {latency.get('p99_ms', 0):>7.1f} {latency.get('max_ms', 0):>7.1f}"
            f" {lat['http_response'].get('p99_ms', 0):>8.1f}"
        )
        verdict = (
            "meets"
            if latency.get("p99_ms", 1e9) <= document["config"]["p99_target_ms"]
            else "misses"
        )
        print(f"p99 {verdict} the {document['config']['p99_target_ms']} ms target")
        print("where the time goes (p50 / p99 ms):")
        for name, part in lat["stages"].items():
            if part.get("count"):
                print(f"  {name:<34} {part['p50_ms']:>8.1f} / {part['p99_ms']:>8.1f}")
        print("CPU % of one core: " + _cpu_line(lat["cpu"]))
    drain = results.get("drain")
    if drain and "error" not in drain:
        print()
        print(
            f"drain: {drain['notifications_received']}/{drain['notifications_expected']}"
            f" notifications ({drain['backlog_events']} events x {drain['team_size']}) in"
            f" {drain['drain_s']} s = {drain['notifications_per_s']} notifications/s"
            f" ({drain['notifications_per_s_from_launch']}/s counting the workers' boot),"
            f" duplicates {drain['duplicates']}"
        )
        target = document["config"]["drain_target_per_s"]
        verdict = "meets" if drain["notifications_per_s"] >= target else "misses"
        print(f"drain {verdict} the {target}/s target")
        print("CPU % of one core: " + _cpu_line(drain["cpu"]))


def _cpu_line(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_pct')} {v:.0f}" for k, v in cpu.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rate", type=float, default=200.0, help="tickets per second")
    parser.add_argument("--tickets", type=int, default=2000, help="tickets in the latency run")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up tickets (not counted)")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop sending after this long"
    )
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections at most")
    parser.add_argument(
        "--users", type=int, default=40, help="users creating tickets (each has a rate limit)"
    )
    parser.add_argument("--backlog", type=int, default=5000, help="events in the drain run")
    parser.add_argument(
        "--backlog-connections", type=int, default=16, help="HTTP connections creating it"
    )
    parser.add_argument("--team-size", type=int, default=4, help="ADMIN_EMAILS in the drain run")
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="longest wait for the emails, seconds"
    )
    parser.add_argument(
        "--phase", choices=["latency", "drain", "both"], default="both", help="what to measure"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every service, e.g. NOTIFICATION_PROCESSES=1",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_PIPELINE_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="benchmark database (its name must contain 'bench'; it is emptied)",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        help="before measuring, wait until the machine is busy under this %% of one core",
    )
    parser.add_argument("--quiet-timeout", type=float, default=60.0, help="longest wait, seconds")
    parser.add_argument("--p99-target-ms", type=float, default=250.0)
    parser.add_argument("--drain-target", type=float, default=1000.0)
    parser.add_argument("--label", default="", help="added to the results file name")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    args = parser.parse_args(argv)
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env wants NAME=VALUE, got {item!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sink"]:
        sink = argparse.ArgumentParser(prog="python -m bench.pipeline sink")
        sink.add_argument("--port", type=int, required=True)
        sink.add_argument("--out", type=Path, required=True)
        sink_args = sink.parse_args(argv[1:])
        run_sink(sink_args.port, sink_args.out)
        return 0
    args = parse_args(argv)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"pipeline-{stamp}" + (f"-{args.label}" if args.label else "")
    bin_dir = str(Path(sys.executable).parent)  # helpdesk, dramatiq, granian, python
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMTP_", "SLACK_", "JWT_", "ADMIN_", "REDIS_", "DATABASE_"))
    }
    base_env.update(
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
        APP_ENV="development",
        LOG_FORMAT="json",
        RATE_LIMIT_PER_MINUTE="0",  # one user drives the whole load: no per-user cap
        DATABASE_URL=args.database_url,
        HOST=HOST,
    )
    base_env.update(dict(item.split("=", 1) for item in args.env))
    database = str(psycopg.conninfo.conninfo_to_dict(args.database_url)["dbname"])
    prepare_database(args.database_url, base_env)

    results: dict[str, Any] = {}
    log_root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    redis_service, redis_port = start_redis(log_root)
    procfile: dict[str, str] = {}
    try:
        for phase in ("latency", "drain"):
            if args.phase not in (phase, "both"):
                continue
            empty_database(args.database_url)
            subprocess.run(
                ["redis-cli", "-h", HOST, "-p", str(redis_port), "flushall"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            log_dir = log_root / phase
            log_dir.mkdir()
            stack = Stack(args, log_dir, redis_service, redis_port, base_env)
            try:
                if phase == "latency":
                    results[phase] = measure_latency(args, stack, database)
                else:
                    results[phase] = measure_drain(args, stack, database)
            except (RuntimeError, OSError, psycopg.Error, subprocess.SubprocessError) as exc:
                results[phase] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{phase}: failed: {exc}", file=sys.stderr)
            finally:
                procfile = stack.commands or procfile
                stack.stop()
    finally:
        redis_service.stop()

    document = {
        "name": name,
        "started_at": stamp,
        "git": git_state(),
        "machine": {"cpus": os.cpu_count()},
        "config": {
            "rate": args.rate,
            "tickets": args.tickets,
            "warmup": args.warmup,
            "connections": args.connections,
            "users": args.users,
            "backlog": args.backlog,
            "team_size": args.team_size,
            "env": dict(item.split("=", 1) for item in args.env),
            "procfile": {k: re.sub(r"--port \d+", "--port $PORT", v) for k, v in procfile.items()},
            "p99_target_ms": args.p99_target_ms,
            "drain_target_per_s": args.drain_target,
        },
        "results": results,
    }
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_report(document)
    if args.keep_logs:
        print(f"logs: {log_root}")
    else:
        subprocess.run(["rm", "-rf", str(log_root)], check=False)
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
