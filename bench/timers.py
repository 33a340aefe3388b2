"""Timer benchmark: SLA lateness of many deadlines in the same minute, and auto-close at volume.

    uv run python -m bench.timers [--timers 1000] [--tickets 100000] [--only sla|close] ...

Everything runs on 127.0.0.1 with state private to the run: its own database (created with
``helpdesk migrate``, then emptied) and its own Redis database number (flushed at the start and
the end). The worker pools and the scheduler are started from the Procfile lines, with their
default -p/-t, exactly as ``make run`` starts them.

Two measurements:

* SLA lateness: the events, notifications, sla and maintenance pools and the scheduler run with
  ``SLA_URGENT_SECONDS`` short (45 s); ``--timers`` urgent tickets are created with the ticket
  service, evenly over ``--spread-seconds`` (30 s), each event handed to the workers after its
  commit as the API does, so every deadline falls within one minute. Lateness of each timer is
  ``sla_breached_at - sla_due_at`` as PostgreSQL holds them. Slack is off; email is off unless
  ``--smtp-sink`` (an SMTP sink in its own process and one team address).
* auto-close: ``--tickets`` resolved tickets, resolved longer ago than ``AUTO_CLOSE_SECONDS``,
  are bulk-loaded with COPY (plus 1,000 resolved too recently, which must stay resolved); the
  events and maintenance pools start, ``close_resolved_tickets_due`` is sent once, and the
  benchmark times how long until every due ticket is closed and until every ``ticket.closed``
  event is dispatched, and samples the memory of every worker process (peak RSS = VmHWM).

It prints a table and writes the results as JSON to bench/results/. See bench/TIMERS.md.
"""

from __future__ import annotations

import argparse
import asyncio
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
from datetime import UTC, datetime, timedelta
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
    machine_cpu,
    procfile_commands,
    summary_ms,
    wait_for_quiet,
)

DEFAULT_DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_timers"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
SLA_POOLS = ("events", "notifications", "sla", "maintenance", "scheduler")
CLOSE_POOLS = ("events", "maintenance")
CREATORS = 4  # tickets being created at once (the SLA run)
NOT_DUE = 1000  # resolved too recently to close: must stay resolved
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- small helpers -----------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of one process, in kB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


# -- CPU and memory of the services ------------------------------------------------------------


class Monitor(threading.Thread):
    """Samples, while a measurement runs, the CPU used by each service tree, by the PostgreSQL
    backends of the benchmark database and by the machine, and the resident memory of every
    process of every service (the peak is also kept by the kernel as VmHWM)."""

    def __init__(self, services: dict[str, Service], dbname: str, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.services = services
        self.dbname = dbname
        self.interval = interval
        self._stop_event = threading.Event()
        self.role: dict[int, str] = {}
        self.kind: dict[int, str] = {}
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.rss_peak_kb: dict[int, int] = {}
        self.hwm_kb: dict[int, int] = {}
        self.hwm_start_kb: dict[int, int] = {}
        self._machine0 = (0.0, 0.0)
        self._t0 = 0.0
        self._conn: psycopg.Connection[Any] | None = None

    def _pg_backends(self) -> set[int]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    dbname=self.dbname, host=HOST, user="root", autocommit=True
                )
            rows = self._conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.dbname,),
            ).fetchall()
        except psycopg.Error:
            return set()
        return {int(r[0]) for r in rows}

    def _sample(self, first: bool, with_pg: bool) -> None:
        table = _proc_table()
        for name, service in self.services.items():
            if service.process is None:
                continue
            for pid in descendants(service.pid, table):
                if pid not in self.role:
                    self.role[pid] = name
                    self.kind[pid] = "main" if pid == service.pid else "worker"
        if with_pg:
            for pid in self._pg_backends():
                self.role.setdefault(pid, "postgres_backends")
        for pid, role in self.role.items():
            if pid not in table:
                continue
            cpu = table[pid][1]
            if first:
                self.cpu_first[pid] = cpu
            else:
                self.cpu_first.setdefault(pid, 0.0)
            self.cpu_last[pid] = cpu
            if role == "postgres_backends":
                continue
            mem = memory_kb(pid)
            if "VmRSS" in mem:
                self.rss_peak_kb[pid] = max(self.rss_peak_kb.get(pid, 0), mem["VmRSS"])
            if "VmHWM" in mem:
                self.hwm_kb[pid] = mem["VmHWM"]
                if first:
                    self.hwm_start_kb[pid] = mem["VmHWM"]

    def start(self) -> None:
        self._machine0 = machine_cpu()
        self._t0 = time.monotonic()
        self._sample(first=True, with_pg=True)
        super().start()

    def run(self) -> None:
        ticks = 0
        while not self._stop_event.wait(self.interval):
            ticks += 1
            self._sample(first=False, with_pg=ticks % 5 == 0)

    def cpu_so_far(self) -> dict[str, float]:
        """CPU used by each role since the start, in percent of one core (keeps sampling)."""
        return self._report()["cpu_pct_of_one_core"]

    def finish(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join()
        self._sample(first=False, with_pg=True)
        if self._conn is not None:
            self._conn.close()
        return self._report()

    def _report(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        busy0, total0 = self._machine0
        busy1, total1 = machine_cpu()
        cores = os.cpu_count() or 1
        busy = cores * (busy1 - busy0) / (total1 - total0) * wall if total1 > total0 else 0.0
        used: dict[str, float] = {}
        for pid, cpu in self.cpu_last.items():
            role = self.role[pid]
            used[role] = used.get(role, 0.0) + cpu - self.cpu_first.get(pid, 0.0)
        cpu_pct = {role: round(100 * value / wall, 1) for role, value in sorted(used.items())}
        cpu_pct["other"] = round(max(0.0, 100 * (busy - sum(used.values())) / wall), 1)
        cpu_pct["machine_busy"] = round(100 * busy / wall, 1)
        memory = [
            {
                "service": self.role[pid],
                "process": self.kind[pid],
                "pid": pid,
                "peak_rss_mb": round(self.hwm_kb.get(pid, 0) / 1024, 1),
                "peak_rss_at_start_mb": round(self.hwm_start_kb.get(pid, 0) / 1024, 1),
                "sampled_max_rss_mb": round(self.rss_peak_kb.get(pid, 0) / 1024, 1),
            }
            for pid in sorted(self.hwm_kb, key=lambda p: (self.role[p], self.kind[p], p))
        ]
        return {"wall_s": round(wall, 2), "cpu_pct_of_one_core": cpu_pct, "memory": memory}


# -- the database ------------------------------------------------------------------------------


def connect(database_url: str, attempts: int = 60) -> psycopg.Connection[Any]:
    """An autocommit connection; retried for a while when the server has no slot free (the
    PostgreSQL is shared with other benchmarks)."""
    for attempt in range(attempts):
        try:
            return psycopg.connect(database_url, autocommit=True)
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def dbname_of(database_url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(database_url).get("dbname", ""))


def prepare_database(database_url: str) -> None:
    """Create and migrate the benchmark database (``helpdesk migrate``), then empty it."""
    if "bench" not in dbname_of(database_url):
        raise SystemExit(f"refusing database {dbname_of(database_url)!r}: name must have 'bench'")
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run(
        ["helpdesk", "migrate"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )
    empty_database(database_url)


def prepare_redis(redis_url: str) -> None:
    import redis

    db = int(redis_url.rsplit("/", 1)[-1] or 0) if re.search(r"/\d+$", redis_url) else 0
    if db in (0, 15):
        raise SystemExit("refusing Redis database 0 or 15 (the service's and the tests')")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


# -- processes ---------------------------------------------------------------------------------


def split_assignments(command: str) -> tuple[dict[str, str], list[str]]:
    """``A=1 B=2 prog args`` -> ({A: 1, B: 2}, [prog, args]): a Procfile line may set variables
    for its own process the way a shell does."""
    argv = shlex.split(command)
    assignments: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        assignments[key] = value
    return assignments, argv


def procfile_service(
    name: str, command: str, env: dict[str, str], log_path: Path, extra: dict[str, str]
) -> Service:
    """A Procfile line as honcho runs it (through /bin/sh -c; here with exec, so the pid is the
    service's). Its own ``VAR=value`` prefix goes into its environment, then ``extra``."""
    assignments, argv = split_assignments(command)
    service = Service(
        name,
        ["/bin/sh", "-c", f"exec {shlex.join(argv)}"],
        {**env, **assignments, **extra},
        log_path,
    )
    if argv and argv[0] == "dramatiq":
        service.ready_text = "ready for action"
        for flag in ("--processes", "-p"):
            if flag in argv:
                service.ready_count = int(argv[argv.index(flag) + 1])
        if "--processes" not in argv and "-p" not in argv:
            service.ready_count = os.cpu_count() or 1  # dramatiq's default
    elif "workers.scheduler" in command:
        service.ready_text = "scheduler.started"
    return service


def start_services(
    names: tuple[str, ...],
    env: dict[str, str],
    log_dir: Path,
    phase: str,
    extra_env: dict[str, dict[str, str]] | None = None,
) -> dict[str, Service]:
    """Start the Procfile lines ``names``; each logs to ``<phase>-<name>.log`` in ``log_dir``.
    ``extra_env`` adds variables to some of them only (by name)."""
    extra_env = extra_env or {}
    commands = procfile_commands(env)
    missing = [n for n in names if n not in commands]
    if missing:
        raise SystemExit(f"the Procfile has no {', '.join(missing)} line")
    started = {
        n: procfile_service(
            n, commands[n], env, log_dir / f"{phase}-{n}.log", extra_env.get(n, {})
        ).start()
        for n in names
    }
    try:
        for service in started.values():
            service.wait_ready(90)
        time.sleep(0.5)
        for service in started.values():
            assert service.process is not None
            if service.process.poll() is not None:
                raise SystemExit(f"{service.name} exited at start:\n{service.output()[-2000:]}")
    except BaseException:
        stop_services(started)
        raise
    return started


def stop_services(services: dict[str, Service]) -> None:
    for service in services.values():
        service.stop()


def service_env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    """The environment of the services: this one, minus anything that would reach the outside
    world or another database, plus the benchmark's own settings."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("SMTP_", "SLACK_", "JWT_", "ADMIN_", "REDIS_", "DATABASE_", "SLA_", "AUTO_CLOSE_")
        )
        and not k.startswith("OUTBOX_")
    }
    return {
        **base,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "ADMIN_EMAILS": "",
        **extra,
    }


def problem_lines(log_dir: Path, phase: str, names: tuple[str, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        path = log_dir / f"{phase}-{name}.log"
        if not path.exists():
            continue
        n = sum(
            1
            for line in path.read_text(errors="replace").splitlines()
            if re.search(r'"level": ?"(warning|error|critical)"|Traceback', line)
        )
        if n:
            counts[name] = n
    return counts


# -- the SMTP sink (its own process) -----------------------------------------------------------


def run_sink(port: int) -> None:
    """An SMTP server that accepts everything (and keeps nothing) until SIGTERM."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Handler:
        accepted = 0

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            self.accepted += 1
            return "250 OK"

    async def serve() -> None:
        handler = Handler()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.bench", ident="bench sink"),
            host=HOST,
            port=port,
            backlog=1024,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("sink ready", flush=True)
        await stop.wait()
        print(f"sink accepted {handler.accepted}", flush=True)
        server.close()

    asyncio.run(serve())


def start_sink(log_dir: Path) -> tuple[Service, int]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.timers", "sink", "--port", str(port)]
    service = Service("sink", argv, dict(os.environ), log_dir / "sink.log", "sink ready")
    service.start().wait_ready(30)
    return service, port


# -- enqueueing as the API does ----------------------------------------------------------------


def make_broker(redis_url: str) -> Any:
    import redis
    from dramatiq.brokers.redis import RedisBroker

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    broker = RedisBroker(client=client, middleware=[])  # only enqueues; the workers run actors
    return broker


def enqueue(broker: Any, queue: str, actor: str, args: tuple[Any, ...] = ()) -> None:
    from dramatiq import Message

    broker.declare_queue(queue)
    broker.enqueue(Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))


# -- SLA lateness ------------------------------------------------------------------------------


async def create_urgent_tickets(
    args: argparse.Namespace, broker: Any, sla_seconds: int
) -> dict[str, Any]:
    """Create ``args.timers`` urgent tickets with the ticket service, evenly over
    ``args.spread_seconds``; each commit's events go to the workers right after it, as the
    API's publisher sends them (and marks them published)."""
    from domain.db import make_engine, make_sessionmaker
    from domain.events import take_pending_event_ids
    from domain.ids import utcnow
    from domain.lifecycle import Priority
    from domain.outbox import DISPATCH_ACTOR, EVENTS_QUEUE, mark_published
    from domain.policies import TimePolicy
    from domain.settings import load_settings
    from domain.tickets import Caller, TicketService

    settings = load_settings({"DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url})
    engine = make_engine(settings, pool_size=CREATORS)
    sessionmaker = make_sessionmaker(engine)
    service = TicketService(
        TimePolicy(sla_urgent=timedelta(seconds=sla_seconds), auto_close_after=timedelta(days=7))
    )
    slots = asyncio.Semaphore(CREATORS)
    lags: list[float] = []
    durations: list[float] = []

    async def create(i: int, target: float) -> None:
        async with slots:
            started = time.monotonic()
            lags.append(started - target)
            caller = Caller(user_id=f"bench-sla-{i % 100}", email=f"user{i % 100}@bench.test")
            async with sessionmaker() as session:
                await service.create(
                    session,
                    caller,
                    subject=f"Urgent #{i}",
                    body="Our production checkout is down.",
                    category="technical",
                    priority=Priority.URGENT,
                )
                await session.commit()
                event_ids = take_pending_event_ids(session)
            for event_id in event_ids:
                enqueue(broker, EVENTS_QUEUE, DISPATCH_ACTOR, (event_id,))
            async with sessionmaker() as session:
                await mark_published(session, event_ids, utcnow())
                await session.commit()
            durations.append(time.monotonic() - started)

    n = args.timers
    step = args.spread_seconds / n if n else 0.0
    t0 = time.monotonic() + 0.05
    tasks: list[asyncio.Task[None]] = []
    try:
        # Open loop: each creation starts at its moment (at most CREATORS at once).
        for i in range(n):
            target = t0 + i * step
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(create(i, target)))
        await asyncio.gather(*tasks)
        span = time.monotonic() - t0
    finally:
        await engine.dispose()
    return {
        "created": n,
        "creation_span_s": round(span, 2),
        "creation_start_lag": summary_ms(lags),
        "creation_duration": summary_ms(durations),
    }


def sla_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        "SELECT count(*), count(sla_breached_at), min(sla_due_at), max(sla_due_at)"
        " FROM tickets WHERE priority = 'urgent'"
    ).fetchone()
    assert row is not None
    return {"tickets": row[0], "breached": row[1], "first_due": row[2], "last_due": row[3]}


def measure_sla(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    empty_database(args.database_url)
    prepare_redis(args.redis_url)
    extra: dict[str, str] = {"SLA_URGENT_SECONDS": str(args.sla_seconds)}
    sink: Service | None = None
    if args.smtp_sink:
        sink, sink_port = start_sink(log_dir)
        extra |= {
            "SMTP_HOST": HOST,
            "SMTP_PORT": str(sink_port),
            "SMTP_FROM": "Support <support@helpdesk.test>",
            "ADMIN_EMAILS": "team@support.test",
        }
    env = service_env(args, **extra)
    services: dict[str, Service] = {}
    broker = make_broker(args.redis_url)
    try:
        print(f"sla: starting {', '.join(SLA_POOLS)} from the Procfile")
        sla_env = {}
        if args.sla_worker_timeout_ms is not None:
            # Dramatiq's idle-poll ceiling: how long an idle consumer may sleep between fetches.
            sla_env = {"dramatiq_worker_timeout": str(args.sla_worker_timeout_ms)}
        services = start_services(SLA_POOLS, env, log_dir, "sla", {"sla": sla_env})
        commands = procfile_commands(env)
        idle_pct = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        print(
            f"sla: creating {args.timers} urgent tickets over {args.spread_seconds:g} s "
            f"(deadline {args.sla_seconds} s after creation; machine busy {idle_pct}% of a core)"
        )
        created = asyncio.run(create_urgent_tickets(args, broker, args.sla_seconds))
        poll = connect(args.database_url)
        state = sla_state(poll)
        first_due, last_due = state["first_due"], state["last_due"]
        print(
            f"sla: created in {created['creation_span_s']} s; deadlines from "
            f"{first_due:%H:%M:%S.%f} to {last_due:%H:%M:%S.%f} UTC "
            f"({(last_due - first_due).total_seconds():.1f} s)"
        )
        # Measure from a little before the first deadline until the last timer has fired.
        wait_s = (first_due - datetime.now(UTC)).total_seconds() - 2
        if wait_s > 0:
            time.sleep(wait_s)
        monitor = Monitor(services, dbname_of(args.database_url))
        monitor.start()
        deadline = last_due + timedelta(seconds=args.timeout)
        while True:
            state = sla_state(poll)
            if state["breached"] >= args.timers or datetime.now(UTC) > deadline:
                break
            time.sleep(0.5)
        time.sleep(2.0)  # anything firing twice would show now
        usage = monitor.finish()
        poll.close()
        result = sla_results(args, created, usage, idle_pct, commands)
        if sink is not None:
            # Let the notifications drain so the sink's count is complete.
            time.sleep(5)
    finally:
        stop_services(services)
        if sink is not None:
            sink.stop()
        broker.close()
    result["problem_log_lines"] = problem_lines(log_dir, "sla", SLA_POOLS)
    if sink is not None:
        found = re.search(r"sink accepted (\d+)", sink.output())
        result["emails_accepted"] = int(found.group(1)) if found else None
    return result


def sla_results(
    args: argparse.Namespace,
    created: dict[str, Any],
    usage: dict[str, Any],
    idle_pct: float,
    commands: dict[str, str],
) -> dict[str, Any]:
    with connect(args.database_url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM sla_breached_at - sla_due_at)::float8"
            " FROM tickets WHERE priority = 'urgent' AND sla_breached_at IS NOT NULL"
        ).fetchall()
        spread = conn.execute(
            "SELECT extract(epoch FROM max(sla_due_at) - min(sla_due_at))::float8,"
            " count(*) FILTER (WHERE sla_breached_at IS NULL) FROM tickets"
            " WHERE priority = 'urgent'"
        ).fetchone()
        events = conn.execute(
            "SELECT count(*), count(DISTINCT ticket_id) FROM ticket_events"
            " WHERE type = 'ticket.sla_breached'"
        ).fetchone()
        early = conn.execute(
            "SELECT count(*) FROM tickets WHERE sla_breached_at < sla_due_at"
        ).fetchone()
        # A sweep fires every due timer with one timestamp; a wake-up message fires its own
        # ticket alone. Timers sharing their sla_breached_at were fired by a sweep; the others
        # by a wake-up (or by a sweep that found only that one).
        by_path = conn.execute(
            "SELECT count(*) OVER (PARTITION BY sla_breached_at) > 1,"
            " extract(epoch FROM sla_breached_at - sla_due_at)::float8"
            " FROM tickets WHERE priority = 'urgent' AND sla_breached_at IS NOT NULL"
        ).fetchall()
    assert spread is not None and events is not None and early is not None
    lateness = summary_ms([float(r[0]) for r in rows])
    return {
        "timers": args.timers,
        "sla_urgent_seconds": args.sla_seconds,
        "spread_seconds_requested": args.spread_seconds,
        "deadline_spread_s": round(float(spread[0] or 0.0), 2),
        "creation": created,
        "fired": len(rows),
        "not_fired": int(spread[1]),
        "fired_early": int(early[0]),
        "breach_events": int(events[0]),
        "breach_events_distinct_tickets": int(events[1]),
        "lateness": lateness,
        "lateness_fired_by_a_sweep_batch": summary_ms([float(r[1]) for r in by_path if r[0]]),
        "lateness_fired_alone": summary_ms([float(r[1]) for r in by_path if not r[0]]),
        "goal_p99_ms": 1000,
        "goal_met": len(rows) == args.timers and lateness.get("p99_ms", 1e9) <= 1000,
        "machine_busy_before_pct": idle_pct,
        "during_firing": usage,
        "pools": {n: commands[n] for n in SLA_POOLS},
        "email": "sink, one team address" if args.smtp_sink else "off",
        # The sla pool's idle-poll ceiling: --sla-worker-timeout-ms, else the Procfile's, else
        # dramatiq's default (1000 ms).
        "sla_pool_worker_timeout_ms": int(
            args.sla_worker_timeout_ms
            or split_assignments(commands["sla"])[0].get("dramatiq_worker_timeout", 1000)
        ),
    }


# -- auto-close --------------------------------------------------------------------------------


def load_resolved_tickets(database_url: str, count: int, auto_close_s: int) -> dict[str, Any]:
    """COPY ``count`` tickets resolved longer ago than ``auto_close_s`` (one a second, the
    oldest 30 days before the cut-off) and NOT_DUE tickets resolved too recently to close."""
    from ulid import ULID

    t0 = time.monotonic()
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=auto_close_s)
    columns = (
        "id, user_id, requester_email, subject, status, priority, category, assignee_id,"
        " created_at, updated_at, resolved_at, closed_at, first_admin_reply_at, sla_due_at,"
        " sla_breached_at"
    )
    oldest = cutoff - timedelta(days=30)
    step = min(1.0, (30 * 86400 - 3600) / max(count, 1))

    def row(i: int, resolved_at: datetime) -> tuple[Any, ...]:
        created_at = resolved_at - timedelta(hours=2)
        return (
            str(ULID.from_datetime(created_at)),
            f"bench-close-{i % 5000}",
            f"user{i % 5000}@bench.test",
            f"Question #{i}",
            "resolved",
            ("low", "normal", "high")[i % 3],
            ("billing", "technical", "account", "other", None)[i % 5],
            f"agent-{i % 20}",
            created_at,
            resolved_at,
            resolved_at,
            None,
            created_at + timedelta(minutes=30),
            None,
            None,
        )

    with connect(database_url) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY tickets ({columns}) FROM STDIN") as copy:
            for i in range(count):
                copy.write_row(row(i, oldest + timedelta(seconds=i * step)))
            for j in range(NOT_DUE):
                copy.write_row(row(count + j, now - timedelta(seconds=j + 1)))
        conn.execute("VACUUM ANALYZE tickets")
        conn.execute("CHECKPOINT")
    return {
        "due": count,
        "not_due": NOT_DUE,
        "load_s": round(time.monotonic() - t0, 2),
        "cutoff": cutoff.isoformat(),
    }


def close_state(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """(still resolved, ticket.closed events, of those completed)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM tickets WHERE status = 'resolved'),"
        " count(*), count(completed_at) FROM ticket_events WHERE type = 'ticket.closed'"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def measure_close(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from domain.outbox import MAINTENANCE_QUEUE

    empty_database(args.database_url)
    prepare_redis(args.redis_url)
    auto_close_s = 7 * 86400
    print(f"close: loading {args.tickets} due resolved tickets (+{NOT_DUE} not yet due)")
    loaded = load_resolved_tickets(args.database_url, args.tickets, auto_close_s)
    print(f"close: loaded in {loaded['load_s']} s")
    env = service_env(args, AUTO_CLOSE_SECONDS=str(auto_close_s))
    services: dict[str, Service] = {}
    broker = make_broker(args.redis_url)
    # The events pool dispatches the ticket.closed events while the closing goes on; leaving
    # it out (--close-pools maintenance) shows what that competition costs.
    pools = tuple(p for p in CLOSE_POOLS if p in args.close_pools.split(","))
    if "maintenance" not in pools:
        raise SystemExit("--close-pools must include maintenance")
    timeline: list[tuple[float, int, int, int]] = []
    closed_s = dispatched_s = None
    cpu_closing: dict[str, float] = {}
    try:
        print(f"close: starting {', '.join(pools)} from the Procfile")
        services = start_services(pools, env, log_dir, "close")
        commands = procfile_commands(env)
        time.sleep(1.0)  # let the pools settle after boot
        idle_pct = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        monitor = Monitor(services, dbname_of(args.database_url))
        monitor.start()
        with connect(args.database_url) as conn:
            t0 = time.monotonic()
            enqueue(broker, MAINTENANCE_QUEUE, "close_resolved_tickets_due")
            print(f"close: close_resolved_tickets_due sent (machine busy {idle_pct}% of a core)")
            limit = t0 + args.timeout + 600  # closing gives up here
            completed = 0
            while time.monotonic() < limit:
                resolved, events, completed = close_state(conn)
                elapsed = time.monotonic() - t0
                timeline.append((round(elapsed, 2), args.tickets + NOT_DUE - resolved, events,
                                 completed))  # fmt: skip
                if closed_s is None and resolved <= NOT_DUE:
                    closed_s = elapsed
                    cpu_closing = monitor.cpu_so_far()
                    print(
                        f"close: all {args.tickets} closed after {elapsed:.1f} s; waiting up to "
                        f"{args.timeout:g} s for their events to be dispatched"
                    )
                    # The dispatching of the events (the events pool) gets --timeout more.
                    limit = time.monotonic() + args.timeout
                if closed_s is not None and (completed >= args.tickets or "events" not in pools):
                    dispatched_s = elapsed
                    break
                time.sleep(0.25)
            waited_s = time.monotonic() - t0
        time.sleep(1.0)
        usage = monitor.finish()
    finally:
        stop_services(services)
        broker.close()
    with connect(args.database_url) as conn:
        check = conn.execute(
            "SELECT count(*), count(DISTINCT ticket_id),"
            " count(*) FILTER (WHERE payload->>'reason' = 'auto')"
            " FROM ticket_events WHERE type = 'ticket.closed'"
        ).fetchone()
        statuses: dict[Any, Any] = dict(
            conn.execute("SELECT status, count(*) FROM tickets GROUP BY 1").fetchall()
        )
    assert check is not None
    runs = [
        int(found.group(1))
        for line in (log_dir / "close-maintenance.log").read_text(errors="replace").splitlines()
        if "auto_close.closed" in line and (found := re.search(r'"count": ?(\d+)', line))
    ]
    return {
        "tickets": args.tickets,
        "loaded": loaded,
        "closed_s": round(closed_s, 2) if closed_s is not None else None,
        "closes_per_s": round(args.tickets / closed_s, 1) if closed_s else None,
        "all_events_dispatched_s": round(dispatched_s, 2) if dispatched_s is not None else None,
        "events_dispatched": completed,
        "events_dispatched_per_s": round(completed / waited_s, 1) if waited_s else None,
        "waited_s": round(waited_s, 2),
        "cpu_pct_while_closing": cpu_closing,
        "closed_events": int(check[0]),
        "closed_events_distinct_tickets": int(check[1]),
        "closed_events_reason_auto": int(check[2]),
        "statuses_after": {str(k): int(v) for k, v in statuses.items()},
        "actor_runs_logged": runs,
        "goal_s": 60,
        "goal_met": closed_s is not None and closed_s <= 60,
        "machine_busy_before_pct": idle_pct,
        "during": usage,
        "timeline": timeline[:: max(1, len(timeline) // 200)],
        "pools": {n: commands[n] for n in pools},
        "problem_log_lines": problem_lines(log_dir, "close", pools),
    }


# -- the report --------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    sla = results.get("sla")
    if sla:
        lat = sla["lateness"]
        print()
        print(
            f"SLA lateness: {sla['timers']} urgent timers, deadlines spread over "
            f"{sla['deadline_spread_s']} s (SLA_URGENT_SECONDS={sla['sla_urgent_seconds']}, "
            f"email {sla['email']})"
        )
        print(f"  {'sla pool worker timeout':<28}{sla['sla_pool_worker_timeout_ms']} ms")
        print(f"  {'fired':<28}{sla['fired']}/{sla['timers']}  (early: {sla['fired_early']})")
        print(
            f"  {'ticket.sla_breached events':<28}{sla['breach_events']} "
            f"({sla['breach_events_distinct_tickets']} tickets)"
        )
        print(f"  {'lateness ms':<28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'mean':>8}")
        print(
            f"  {'':<28}{lat.get('p50_ms', '-'):>8}{lat.get('p90_ms', '-'):>8}"
            f"{lat.get('p99_ms', '-'):>8}{lat.get('max_ms', '-'):>8}{lat.get('mean_ms', '-'):>8}"
        )
        for key, label in (
            ("lateness_fired_by_a_sweep_batch", "  by a sweep (shared time)"),
            ("lateness_fired_alone", "  alone (wake-up)"),
        ):
            part = sla[key]
            if part.get("count"):
                print(
                    f"  {label + ' ' + str(part['count']):<28}{part['p50_ms']:>8}"
                    f"{part['p90_ms']:>8}{part['p99_ms']:>8}{part['max_ms']:>8}{part['mean_ms']:>8}"
                )
        print(f"  {'goal p99 <= 1000 ms':<28}{'met' if sla['goal_met'] else 'MISSED'}")
        cpu = sla["during_firing"]["cpu_pct_of_one_core"]
        print(f"  {'CPU % of a core (firing)':<28}{_cpu_line(cpu)}")
    close = results.get("close")
    if close:
        print()
        print(
            f"Auto-close: {close['tickets']} due resolved tickets (+{NOT_DUE} not due), "
            f"pools: {', '.join(close['pools'])}"
        )
        print(
            f"  {'all closed after':<28}{close['closed_s']} s  ({close['closes_per_s']} closes/s)"
        )
        print(
            f"  {'events dispatched':<28}{close['events_dispatched']} after "
            f"{close['waited_s']} s ({close['events_dispatched_per_s']}/s)"
        )
        print(
            f"  {'ticket.closed events':<28}{close['closed_events']} "
            f"({close['closed_events_distinct_tickets']} tickets, "
            f"{close['closed_events_reason_auto']} reason=auto)"
        )
        print(f"  {'statuses after':<28}{close['statuses_after']}")
        print(f"  {'goal <= 60 s':<28}{'met' if close['goal_met'] else 'MISSED'}")
        print(f"  {'CPU % of a core (closing)':<28}{_cpu_line(close['cpu_pct_while_closing'])}")
        print(f"  {'peak RSS (VmHWM) MB':<28}{'at start':>10}{'peak':>10}")
        for m in close["during"]["memory"]:
            label = f"{m['service']} {m['process']} {m['pid']}"
            print(f"    {label:<26}{m['peak_rss_at_start_mb']:>10}{m['peak_rss_mb']:>10}")


def _cpu_line(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v}" for k, v in cpu.items())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timers", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command")
    sink = sub.add_parser("sink", help="internal: run the SMTP sink")
    sink.add_argument("--port", type=int, required=True)
    parser.add_argument("--timers", type=int, default=1000, help="urgent tickets (SLA timers)")
    parser.add_argument("--sla-seconds", type=int, default=45, help="SLA_URGENT_SECONDS")
    parser.add_argument(
        "--spread-seconds", type=float, default=30.0, help="create the tickets over this long"
    )
    parser.add_argument("--tickets", type=int, default=100_000, help="due resolved tickets")
    parser.add_argument("--only", choices=("sla", "close"), help="run one measurement only")
    parser.add_argument(
        "--smtp-sink", action="store_true", help="SLA run: email to a sink instead of off"
    )
    parser.add_argument(
        "--close-pools",
        default=",".join(CLOSE_POOLS),
        help="auto-close run: pools to start (default events,maintenance)",
    )
    parser.add_argument(
        "--sla-worker-timeout-ms",
        type=int,
        help="SLA run: dramatiq_worker_timeout of the sla pool only (overrides the Procfile's)",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=50.0,
        help="before each measurement, wait until the machine is busy under this %% of a core",
    )
    parser.add_argument("--quiet-timeout", type=float, default=30.0, help="longest such wait, s")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds past the goal")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_TIMERS_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_TIMERS_REDIS_URL", DEFAULT_REDIS_URL)
    )
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)
    if args.command == "sink":
        run_sink(args.port)
        return 0
    if args.sla_seconds < args.spread_seconds + 5:
        parser.error("--sla-seconds must exceed --spread-seconds by 5 s or more")

    prepare_redis(args.redis_url)
    prepare_database(args.database_url)
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": started.isoformat(),
        "cores": os.cpu_count(),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-timers-") as tmp:
        log_dir = Path(tmp)
        try:
            if args.only in (None, "sla"):
                results["sla"] = measure_sla(args, log_dir)
            if args.only in (None, "close"):
                results["close"] = measure_close(args, log_dir)
        finally:
            prepare_redis(args.redis_url)
        if any(r.get("problem_log_lines") for r in (results.get("sla"), results.get("close"))
               if r):  # fmt: skip
            keep = RESULTS_DIR / f"timers-logs-{started:%Y%m%dT%H%M%SZ}"
            keep.mkdir(parents=True, exist_ok=True)
            for path in log_dir.glob("*.log"):
                (keep / path.name).write_bytes(path.read_bytes())
            results["logs_kept_in"] = str(keep.relative_to(ROOT))
    print_report(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    out = RESULTS_DIR / f"timers-{started:%Y%m%dT%H%M%SZ}{suffix}.json"
    out.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
