"""Pipeline benchmark: from a ticket's commit to the SMTP server accepting its email
(latency at a steady rate), and the drain rate of a backlog of notifications.

    uv run python -m bench.pipeline [--rate 200] [--tickets 2000] [--backlog 5000] ...

Everything runs on 127.0.0.1, private to the run (database, redis-server, SMTP sink, the
Procfile's services). Prints a table, writes JSON to bench/results/. See bench/PIPELINE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    CREATE_PATH,
    HOST,
    POOLS,
    TICKET,
    Monitor,
    Service,
    Sink,
    Stack,
    cpu_line,
    dev_tokens,
    env_pairs,
    flush_redis,
    free_port,
    log_problems,
    mail_settings,
    prepare_database,
    query,
    redis_url_of,
    run_options,
    save_results,
    service_env,
    start_redis,
    summary_ms,
    wait_for_quiet,
)

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_pipeline"
# Tickets come from many users, as in real life: the API limits each user's requests per minute.
WARMUP_USERS, LATENCY_USERS, BACKLOG_USERS = "bench-warmup-", "bench-latency-", "bench-backlog-"
BACKLOG_CONNECTIONS = 16  # creating the drain run's backlog
P99_TARGET_MS, DRAIN_TARGET = 250.0, 1000.0  # commit -> SMTP accept at 200/s; emails per second


# -- what the database says -----------------------------------------------------------------------


def event_times(database_url: str, users: str) -> dict[str, float]:
    """event id -> created_at (epoch seconds) of the ticket.created events of these users."""
    rows = query(
        database_url,
        "SELECT e.id, extract(epoch FROM e.created_at)::float8 FROM ticket_events e"
        " JOIN tickets t ON t.id = e.ticket_id"
        " WHERE t.user_id LIKE %s AND e.type = 'ticket.created'",
        users + "%",
    )
    return {str(r[0]): float(r[1]) for r in rows}


def stages(database_url: str, users: str, arrivals: dict[str, float]) -> dict[str, Any]:
    """Where the time goes: the API's publisher marks the event published after handing it to
    Redis; the dispatcher creates the ledger rows; a delivery stamps ``sent_at`` when it starts;
    the sink stamps the end."""
    rows = query(
        database_url,
        "SELECT e.id, extract(epoch FROM e.created_at)::float8,"
        " extract(epoch FROM e.published_at)::float8,"
        " extract(epoch FROM min(d.created_at))::float8,"
        " extract(epoch FROM min(d.sent_at))::float8 FROM ticket_events e"
        " JOIN tickets t ON t.id = e.ticket_id JOIN deliveries d ON d.event_id = e.id"
        " WHERE t.user_id LIKE %s AND e.type = 'ticket.created' GROUP BY e.id",
        users + "%",
    )
    names = ["commit_to_published", "published_to_dispatch_start"]
    names += ["dispatch_start_to_delivery_start", "delivery_start_to_accepted"]
    parts: dict[str, list[float]] = {name: [] for name in names}
    for event_id, *times in rows:
        if None not in times and event_id in arrivals:
            moments = [*times, arrivals[event_id]]
            for name, start, end in zip(names, moments, moments[1:], strict=False):
                parts[name].append(end - start)
    return {name: summary_ms(values) for name, values in parts.items()}


def ledger(database_url: str) -> dict[str, Any]:
    statuses = query(database_url, "SELECT status, count(*) FROM deliveries GROUP BY status")
    (events,) = query(
        database_url,
        "SELECT count(*), count(published_at), count(completed_at), sum(publish_count)"
        " FROM ticket_events",
    )
    return {
        "deliveries": {str(k): int(v) for k, v in statuses},
        "events": int(events[0]),
        "events_published": int(events[1]),
        "events_completed": int(events[2]),
        "publish_count_total": int(events[3] or 0),
    }


# -- load generation ------------------------------------------------------------------------------


@dataclass
class Sent:
    scheduled: float  # monotonic target
    number: int = 0  # which request of the run (picks the user)
    started: float = 0.0  # wall clock when the request was handed to a connection
    lag: float = 0.0  # how late after its scheduled moment
    finished: float = 0.0
    status: int = 0
    error: str | None = None


def create_requests(port: int, tokens: list[str]) -> list[bytes]:
    body = json.dumps(TICKET).encode()
    head = f"POST {CREATE_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer %s\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return [(head % token).encode() + body for token in tokens]


async def _connection(
    port: int, requests: list[bytes], jobs: asyncio.Queue[Sent | None], reply_within_s: float
) -> None:
    """One keep-alive HTTP/1.1 connection sending a request for every job it takes. A few dozen
    lines instead of an HTTP client library: on 2 cores the load generator's CPU is taken from
    the system it measures, and this costs several times less."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while (item := await jobs.get()) is not None:
        item.started, item.lag = time.time(), time.monotonic() - item.scheduled
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
                    close |= name.lower() == "connection" and "close" in value.lower()
                await reader.readexactly(length)
            item.status = int(status_line.split()[1])
        except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError) as exc:
            item.error, close = type(exc).__name__, True
        if close and writer is not None:
            writer.close()
            reader = writer = None
        item.finished = time.time()
    if writer is not None:
        writer.close()


async def open_loop(
    port: int, tokens: list[str], args: argparse.Namespace, count: int
) -> list[Sent]:
    """``count`` POSTs at ``--rate``/s on a fixed schedule, whatever the responses do: each is due
    at its moment and a free connection takes it then (``Sent.lag``: how long it waited)."""
    requests = create_requests(port, tokens)
    jobs: asyncio.Queue[Sent | None] = asyncio.Queue()
    workers = [
        asyncio.create_task(_connection(port, requests, jobs, 10.0))
        for _ in range(args.connections)
    ]
    sent: list[Sent] = []
    t0 = time.monotonic() + 0.05
    for i in range(count):
        if i / args.rate > args.max_seconds:
            break
        await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
        sent.append(Sent(scheduled=t0 + i / args.rate, number=i))
        jobs.put_nowait(sent[-1])
    for _ in workers:
        jobs.put_nowait(None)
    _, late = await asyncio.wait(workers, timeout=30)
    for task in late:
        task.cancel()
    return sent


def create_backlog(port: int, tokens: list[str], count: int, concurrency: int) -> int:
    """Create ``count`` tickets as fast as ``concurrency`` connections allow, retrying what an
    overloaded API refused; returns how many were created."""

    async def closed_loop(n: int) -> int:
        jobs: asyncio.Queue[Sent | None] = asyncio.Queue()
        items = [Sent(scheduled=time.monotonic(), number=i) for i in range(n)]
        for item in [*items, *[None] * concurrency]:
            jobs.put_nowait(item)
        requests = create_requests(port, tokens)
        await asyncio.gather(*(_connection(port, requests, jobs, 60.0) for _ in range(concurrency)))
        return sum(1 for item in items if item.status != 201)

    left = count
    for _ in range(5):
        if left:
            left = asyncio.run(closed_loop(left))
            time.sleep(2 if left else 0)
    return count - left


# -- the two measurements -------------------------------------------------------------------------


def start(
    args: argparse.Namespace, log_dir: Path, redis: Service, team: list[str], workers: bool
) -> tuple[Stack, Sink, Monitor]:
    """The sink, the API (and the worker pools and scheduler) and a monitor of them all."""
    sink = Sink.start(log_dir)
    mail = mail_settings(sink.port, *team)
    env = service_env(args.database_url, redis_url_of(redis), PORT=free_port(), **mail, **args.env)
    stack = Stack(env, log_dir).start("web", *(POOLS if workers else ()))
    roots = {**stack.pids(), "sink": sink.service.pid, "redis": redis.pid}
    return stack, sink, Monitor(roots, args.database_url, loadgen_self=True)


def measure_latency(args: argparse.Namespace, log_dir: Path, redis: Service) -> dict[str, Any]:
    stack, sink, monitor = start(args, log_dir, redis, ["team@support.test"], workers=True)
    try:
        port = stack["web"].port
        if args.warmup > 0:
            print(f"latency: warm-up, {args.warmup} tickets at {args.rate:g}/s")
            warm = dev_tokens(f"{WARMUP_USERS}{i}" for i in range(args.users))
            asyncio.run(open_loop(port, warm, args, args.warmup))
            if not sink.wait_for(args.warmup, min(args.drain_timeout, 60)):
                print(f"latency: warm-up: {sink.poll()} of {args.warmup} emails so far; going on")
        time.sleep(1.0)
        idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        before = sink.poll()
        print(f"latency: {args.tickets} tickets at {args.rate:g}/s (machine busy before: {idle}%)")
        tokens = dev_tokens(f"{LATENCY_USERS}{i}" for i in range(args.users))
        monitor.start()
        sent = asyncio.run(open_loop(port, tokens, args, args.tickets))
        # Every committed ticket must reach the sink, those whose answer was lost too: wait
        # until the API has finished what it was still doing.
        committed = -1
        while committed != (now := len(event_times(args.database_url, LATENCY_USERS))):
            committed = now
            time.sleep(2.0)
        complete = sink.wait_for(before + committed, args.drain_timeout)
        cpu = monitor.finish()
    finally:
        stack.stop()
        sink.stop()
    created_at = event_times(args.database_url, LATENCY_USERS)
    arrivals: dict[str, float] = {}
    for t, event_id, _ in sink.records[before:]:
        arrivals[event_id] = min(t, arrivals.get(event_id, t))
    accepted = sorted(arrivals[e] for e in created_at if e in arrivals)
    started = sorted(s.started for s in sent if s.started)
    failed = Counter(
        s.error or str(s.status or "not sent in time") for s in sent if s.status != 201
    )
    return {
        "rate_target": args.rate,
        "tickets_sent": len(sent),
        "tickets_created": sum(1 for s in sent if s.status == 201),
        "http_errors": dict(failed),
        "achieved_rate": rate_of(started),
        "emails_expected": len(created_at),
        "emails_received": len(arrivals),
        "emails_duplicated": len(sink.records) - before - len(arrivals),
        "missing": len(created_at) - len(arrivals),
        "all_arrived": complete,
        "email_rate": rate_of(accepted),
        "latency": summary_ms(arrivals[e] - c for e, c in created_at.items() if e in arrivals),
        "stages": stages(args.database_url, LATENCY_USERS, arrivals),
        "http_response": summary_ms(s.finished - s.started for s in sent if s.status == 201),
        "send_lag": summary_ms(s.lag for s in sent),
        "cpu": cpu["cpu_pct"],
        "machine_busy_pct_before": idle,
        "ledger": ledger(args.database_url),
        "problems_logged": log_problems(log_dir),
    }


def rate_of(moments: list[float]) -> float:
    """Events per second from the first to the last of sorted ``moments``."""
    span = moments[-1] - moments[0] if len(moments) > 1 else 0.0
    return round((len(moments) - 1) / span, 1) if span else 0.0


def measure_drain(args: argparse.Namespace, log_dir: Path, redis: Service) -> dict[str, Any]:
    team = [f"team{i}@support.test" for i in range(1, args.team_size + 1)]
    stack, sink, monitor = start(args, log_dir, redis, team, workers=False)
    try:
        print(f"drain: creating a backlog of {args.backlog} tickets with the workers stopped")
        tokens = dev_tokens(f"{BACKLOG_USERS}{i}" for i in range(args.users))
        created = create_backlog(stack["web"].port, tokens, args.backlog, BACKLOG_CONNECTIONS)
        if created < args.backlog:
            raise RuntimeError(f"drain: only {created} of {args.backlog} tickets were created")
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
        print(f"drain: starting the workers: {args.backlog} events, {expected} notifications")
        monitor.start()
        launched = time.time()
        stack.start(*POOLS)
        ready = time.time()
        for name, pid in stack.pids().items():
            monitor.add_root(name, pid)
        complete = sink.wait_for(expected, args.drain_timeout)
        cpu = monitor.finish()
    finally:
        stack.stop()
        sink.stop()
    times = sorted(t for t, _, _ in sink.records)
    unique = {(e, r) for _, e, r in sink.records}
    first, last = (times[0], times[-1]) if times else (ready, ready)
    return {
        "backlog_events": args.backlog,
        "team_size": len(team),
        "notifications_expected": expected,
        "notifications_received": len(unique),
        "duplicates": len(sink.records) - len(unique),
        "all_arrived": complete,
        "workers_boot_s": round(ready - launched, 2),
        "first_email_after_launch_s": round(first - launched, 2),
        "drain_s": round(last - first, 2),
        "notifications_per_s": rate_of(times),
        "notifications_per_s_from_launch": round(len(times) / (last - launched), 1)
        if last > launched
        else 0.0,
        "cpu": cpu["cpu_pct"],
        "machine_busy_pct_before": idle,
        "ledger": ledger(args.database_url),
        "problems_logged": log_problems(log_dir),
    }


def print_report(results: dict[str, Any]) -> None:
    for phase, result in results.items():
        if "error" in result:
            print(f"\n{phase}: {result['error']}")
    lat = results.get("latency", {})
    if "latency" in lat:
        ms = lat["latency"]
        print(
            f"\ncommit -> SMTP accept, one email per ticket: {lat['rate_target']:g}/s offered, "
            f"{lat['achieved_rate']}/s sent, {lat['emails_received']} emails, {lat['missing']} "
            f"missing, {lat['emails_duplicated']} duplicated\n"
            + "  ".join(f"{k} {ms.get(k, '-')}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
            + f"  http p99_ms {lat['http_response'].get('p99_ms', '-')}"
        )
        met = ms.get("p99_ms", 1e9) <= P99_TARGET_MS
        print(f"p99 {'meets' if met else 'misses'} the {P99_TARGET_MS:g} ms target")
        print("where the time goes (p50 / p99 ms):")
        for name, part in lat["stages"].items():
            if part.get("count"):
                print(f"  {name:<34} {part['p50_ms']:>8.1f} / {part['p99_ms']:>8.1f}")
        print("CPU % of one core: " + cpu_line(lat["cpu"]))
    drain = results.get("drain", {})
    if "notifications_per_s" in drain:
        print(
            f"\ndrain: {drain['notifications_received']}/{drain['notifications_expected']}"
            f" notifications ({drain['backlog_events']} events x {drain['team_size']}) in"
            f" {drain['drain_s']} s = {drain['notifications_per_s']}/s"
            f" ({drain['notifications_per_s_from_launch']}/s counting the workers' boot),"
            f" duplicates {drain['duplicates']}"
        )
        met = drain["notifications_per_s"] >= DRAIN_TARGET
        print(f"drain {'meets' if met else 'misses'} the {DRAIN_TARGET:g}/s target")
        print("CPU % of one core: " + cpu_line(drain["cpu"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    run_options(parser, DATABASE_URL, quiet_below=30.0, quiet_timeout=60.0)
    add = parser.add_argument
    add("--phase", choices=["latency", "drain", "both"], default="both")
    add("--rate", type=float, default=200.0, help="tickets per second")
    add("--tickets", type=int, default=2000, help="tickets in the latency run")
    add("--warmup", type=int, default=200, help="warm-up tickets (not counted)")
    add("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    add("--connections", type=int, default=64, help="HTTP connections at most")
    add("--users", type=int, default=40, help="users creating tickets (each has a rate limit)")
    add("--backlog", type=int, default=5000, help="events in the drain run")
    add("--team-size", type=int, default=4, help="ADMIN_EMAILS in the drain run")
    add("--drain-timeout", type=float, default=300.0, help="longest wait for the emails, s")
    add("--env", action="append", default=[], help="NAME=VALUE for every service")
    args = parser.parse_args(argv)
    args.env = env_pairs(parser, args.env)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        redis = start_redis(Path(tmp))
        try:
            for phase, measure in (("latency", measure_latency), ("drain", measure_drain)):
                if args.phase in (phase, "both"):
                    prepare_database(args.database_url)
                    flush_redis(redis_url_of(redis))
                    log_dir = Path(tmp, phase)
                    log_dir.mkdir()
                    try:
                        results[phase] = measure(args, log_dir, redis)
                    except (RuntimeError, OSError, psycopg.Error) as exc:
                        results[phase] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            redis.stop()
    save_results("pipeline", {"config": vars(args), "results": results}, args.label)
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
