"""Timer benchmark: SLA lateness of many deadlines in the same minute, and auto-close at volume.

    uv run python -m bench.timers [--timers 1000] [--tickets 100000] [--only sla|close] ...

Its own database (migrated, emptied) and Redis database (flushed at the start and the end); the
worker pools and the scheduler start from the Procfile lines with their default -p/-t. Prints a
table, writes JSON to bench/results/. See bench/TIMERS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    ROOT,
    Monitor,
    Sink,
    Stack,
    connect,
    cpu_line,
    flush_redis,
    log_problems,
    mail_settings,
    prepare_database,
    procfile,
    query,
    run_options,
    save_results,
    service_env,
    summary_ms,
    wait_for_quiet,
)

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_timers"
REDIS_URL = "redis://127.0.0.1:6379/9"
SLA_POOLS = ("events", "notifications", "sla", "maintenance", "scheduler")
CLOSE_POOLS = ("events", "maintenance")
CREATORS = 4  # tickets being created at once (the SLA run)
NOT_DUE = 1000  # resolved too recently to close: must stay resolved


def one(database_url: str, sql: str) -> tuple[Any, ...]:
    return tuple(query(database_url, sql)[0])


def make_broker(redis_url: str) -> Any:
    """A broker that only enqueues (the workers run the actors), as the API's publisher does."""
    import redis
    from dramatiq.brokers.redis import RedisBroker

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    return RedisBroker(client=client, middleware=[])


def enqueue(broker: Any, queue: str, actor: str, args: tuple[Any, ...] = ()) -> None:
    from dramatiq import Message

    broker.declare_queue(queue)
    broker.enqueue(Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))


# -- SLA lateness ---------------------------------------------------------------------------------


async def create_urgent_tickets(args: argparse.Namespace, broker: Any) -> dict[str, Any]:
    """``--timers`` urgent tickets created with the ticket service evenly over
    ``--spread-seconds`` (at most CREATORS at once); each commit's events go to the workers right
    after it and are marked published, as the API's publisher does."""
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
    sessions = make_sessionmaker(engine)
    sla = timedelta(seconds=args.sla_seconds)
    service = TicketService(TimePolicy(sla_urgent=sla, auto_close_after=timedelta(days=7)))
    slots = asyncio.Semaphore(CREATORS)
    lags: list[float] = []
    durations: list[float] = []

    async def create(i: int, target: float) -> None:
        async with slots:
            started = time.monotonic()
            lags.append(started - target)
            caller = Caller(user_id=f"bench-sla-{i % 100}", email=f"user{i % 100}@bench.test")
            async with sessions() as session:
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
                enqueue(broker, EVENTS_QUEUE, DISPATCH_ACTOR, ([event_id],))
            async with sessions() as session:
                await mark_published(session, event_ids, utcnow())
                await session.commit()
            durations.append(time.monotonic() - started)

    step = args.spread_seconds / args.timers if args.timers else 0.0
    t0 = time.monotonic() + 0.05
    tasks = []
    try:
        for i in range(args.timers):  # open loop: each creation starts at its moment
            await asyncio.sleep(max(0.0, t0 + i * step - time.monotonic()))
            tasks.append(asyncio.create_task(create(i, t0 + i * step)))
        await asyncio.gather(*tasks)
    finally:
        await engine.dispose()
    return {
        "created": args.timers,
        "creation_span_s": round(time.monotonic() - t0, 2),
        "creation_start_lag": summary_ms(lags),
        "creation_duration": summary_ms(durations),
    }


def measure_sla(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    prepare_database(args.database_url)
    flush_redis(args.redis_url)
    extra: dict[str, Any] = {"SLA_URGENT_SECONDS": args.sla_seconds}
    sink = Sink.start(log_dir) if args.smtp_sink else None
    if sink:
        extra |= mail_settings(sink.port, "team@support.test")
    env = service_env(args.database_url, args.redis_url, **extra)
    # dramatiq_worker_timeout: how long an idle consumer may sleep between fetches.
    timeout = {"dramatiq_worker_timeout": str(args.sla_worker_timeout_ms)}
    stack = Stack(env, log_dir)
    broker = make_broker(args.redis_url)
    try:
        print(f"sla: starting {', '.join(SLA_POOLS)} from the Procfile")
        stack.start(*SLA_POOLS, extra_env={"sla": timeout} if args.sla_worker_timeout_ms else {})
        idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        print(f"sla: creating {args.timers} urgent tickets over {args.spread_seconds:g} s")
        created = asyncio.run(create_urgent_tickets(args, broker))
        state = "SELECT count(sla_breached_at), min(sla_due_at), max(sla_due_at) FROM tickets"
        state += " WHERE priority = 'urgent'"
        _, first_due, last_due = one(args.database_url, state)
        print(
            f"sla: created in {created['creation_span_s']} s; deadlines over "
            f"{(last_due - first_due).total_seconds():.1f} s"
        )
        # Measure from a little before the first deadline until the last timer has fired.
        time.sleep(max(0.0, (first_due - datetime.now(UTC)).total_seconds() - 2))
        monitor = Monitor(stack.pids(), args.database_url)
        monitor.start()
        deadline = last_due + timedelta(seconds=args.timeout)
        while one(args.database_url, state)[0] < args.timers and datetime.now(UTC) < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # anything firing twice would show now
        usage = monitor.finish()
        if sink:
            time.sleep(5)  # let the notifications drain, so the sink's count is complete
    finally:
        stack.stop()
        broker.close()
        if sink:
            sink.stop()
    result = sla_results(args, created, usage, idle, procfile(env))
    result["problem_log_lines"] = log_problems(log_dir)
    result["emails_accepted"] = sink.poll() if sink else None
    return result


def sla_results(
    args: argparse.Namespace,
    created: dict[str, Any],
    usage: dict[str, Any],
    idle: float,
    commands: dict[str, str],
) -> dict[str, Any]:
    with connect(args.database_url) as conn:
        # A sweep fires every due timer with one timestamp, a wake-up message its own ticket
        # alone: timers sharing their sla_breached_at were fired by a sweep.
        rows = conn.execute(
            "SELECT count(*) OVER (PARTITION BY sla_breached_at) > 1,"
            " extract(epoch FROM sla_breached_at - sla_due_at)::float8"
            " FROM tickets WHERE priority = 'urgent' AND sla_breached_at IS NOT NULL"
        ).fetchall()
        spread, not_fired, early, events, tickets = conn.execute(
            "SELECT extract(epoch FROM max(sla_due_at) - min(sla_due_at))::float8,"
            " count(*) FILTER (WHERE sla_breached_at IS NULL),"
            " count(*) FILTER (WHERE sla_breached_at < sla_due_at),"
            " (SELECT count(*) FROM ticket_events WHERE type = 'ticket.sla_breached'),"
            " (SELECT count(DISTINCT ticket_id) FROM ticket_events"
            "  WHERE type = 'ticket.sla_breached') FROM tickets WHERE priority = 'urgent'"
        ).fetchone() or (0, 0, 0, 0, 0)
    lateness = summary_ms(float(r[1]) for r in rows)
    timeout = re.search(r"dramatiq_worker_timeout=(\d+)", commands["sla"])
    return {
        "timers": args.timers,
        "sla_urgent_seconds": args.sla_seconds,
        "spread_seconds_requested": args.spread_seconds,
        "deadline_spread_s": round(float(spread or 0.0), 2),
        "creation": created,
        "fired": len(rows),
        "not_fired": int(not_fired),
        "fired_early": int(early),
        "breach_events": int(events),
        "breach_events_distinct_tickets": int(tickets),
        "lateness": lateness,
        "lateness_fired_by_a_sweep_batch": summary_ms(float(r[1]) for r in rows if r[0]),
        "lateness_fired_alone": summary_ms(float(r[1]) for r in rows if not r[0]),
        "goal_p99_ms": 1000,
        "goal_met": len(rows) == args.timers and lateness.get("p99_ms", 1e9) <= 1000,
        "machine_busy_before_pct": idle,
        "during_firing": usage,
        "pools": {n: commands[n] for n in SLA_POOLS},
        "email": "sink, one team address" if args.smtp_sink else "off",
        # The sla pool's idle-poll ceiling: the option, else the Procfile's, else dramatiq's.
        "sla_pool_worker_timeout_ms": args.sla_worker_timeout_ms
        or (int(timeout.group(1)) if timeout else 1000),
    }


# -- auto-close -----------------------------------------------------------------------------------


def load_resolved_tickets(database_url: str, count: int, auto_close_s: int) -> dict[str, Any]:
    """COPY ``count`` tickets resolved longer ago than ``auto_close_s`` (the oldest 30 days
    before the cut-off, about one a second) and NOT_DUE resolved too recently to close."""
    from ulid import ULID

    t0 = time.monotonic()
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=auto_close_s)
    oldest = cutoff - timedelta(days=30)
    step = min(1.0, (30 * 86400 - 3600) / max(count, 1))
    columns = (
        "id, user_id, requester_email, subject, status, priority, category, assignee_id,"
        " created_at, updated_at, resolved_at, first_admin_reply_at"
    )  # closed_at and the SLA clocks: NULL

    def row(i: int, resolved_at: datetime) -> tuple[Any, ...]:
        created_at, user = resolved_at - timedelta(hours=2), i % 5000
        return (
            str(ULID.from_datetime(created_at)),
            f"bench-close-{user}",
            f"user{user}@bench.test",
            f"Question #{i}",
            "resolved",
            ("low", "normal", "high")[i % 3],
            ("billing", "technical", "account", "other", None)[i % 5],
            f"agent-{i % 20}",
            created_at,
            resolved_at,
            resolved_at,
            created_at + timedelta(minutes=30),
        )

    with connect(database_url) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY tickets ({columns}) FROM STDIN") as copy:
            for i in range(count):
                copy.write_row(row(i, oldest + timedelta(seconds=i * step)))
            for j in range(NOT_DUE):
                copy.write_row(row(count + j, now - timedelta(seconds=j + 1)))
        conn.execute("VACUUM ANALYZE tickets")
        conn.execute("CHECKPOINT")
    load_s = round(time.monotonic() - t0, 2)
    return {"due": count, "not_due": NOT_DUE, "load_s": load_s, "cutoff": cutoff.isoformat()}


def measure_close(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from domain.outbox import MAINTENANCE_QUEUE

    prepare_database(args.database_url)
    flush_redis(args.redis_url)
    auto_close_s = 7 * 86400
    print(f"close: loading {args.tickets} due resolved tickets (+{NOT_DUE} not yet due)")
    loaded = load_resolved_tickets(args.database_url, args.tickets, auto_close_s)
    env = service_env(args.database_url, args.redis_url, AUTO_CLOSE_SECONDS=auto_close_s)
    # The events pool dispatches the ticket.closed events while the closing goes on; leaving
    # it out (--close-pools maintenance) shows what that competition costs.
    pools = tuple(p for p in CLOSE_POOLS if p in args.close_pools.split(","))
    if "maintenance" not in pools:
        raise SystemExit("--close-pools must include maintenance")
    stack = Stack(env, log_dir)
    broker = make_broker(args.redis_url)
    timeline: list[tuple[float, int, int, int]] = []
    closed_s = dispatched_s = None
    cpu_closing: dict[str, float] = {}
    state = (
        "SELECT (SELECT count(*) FROM tickets WHERE status = 'resolved'), count(*),"
        " count(completed_at) FROM ticket_events WHERE type = 'ticket.closed'"
    )
    try:
        print(f"close: loaded in {loaded['load_s']} s; starting {', '.join(pools)}")
        stack.start(*pools)
        time.sleep(1.0)  # let the pools settle after boot
        idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        monitor = Monitor(stack.pids(), args.database_url)
        monitor.start()
        with connect(args.database_url) as conn:
            t0 = time.monotonic()
            enqueue(broker, MAINTENANCE_QUEUE, "close_resolved_tickets_due")
            limit = t0 + args.timeout + 600  # closing gives up here
            completed = 0
            while time.monotonic() < limit:
                resolved, events, completed = conn.execute(state).fetchone() or (0, 0, 0)
                elapsed = time.monotonic() - t0
                closed = args.tickets + NOT_DUE - resolved
                timeline.append((round(elapsed, 2), closed, events, completed))
                if closed_s is None and resolved <= NOT_DUE:
                    closed_s, cpu_closing = elapsed, monitor.report()["cpu_pct"]
                    print(f"close: all closed after {elapsed:.1f} s; waiting for the events")
                    limit = time.monotonic() + args.timeout  # the dispatching gets --timeout
                if closed_s is not None and (completed >= args.tickets or "events" not in pools):
                    dispatched_s = elapsed
                    break
                time.sleep(0.25)
            waited_s = time.monotonic() - t0
        time.sleep(1.0)
        usage = monitor.finish()
    finally:
        stack.stop()
        broker.close()
    closed_events, distinct, auto = one(
        args.database_url,
        "SELECT count(*), count(DISTINCT ticket_id), count(*) FILTER"
        " (WHERE payload->>'reason' = 'auto') FROM ticket_events WHERE type = 'ticket.closed'",
    )
    with connect(args.database_url) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM tickets GROUP BY 1").fetchall()
    runs = re.findall(
        r'auto_close\.closed.*?"count": ?(\d+)', (log_dir / "maintenance.log").read_text()
    )
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
        "closed_events": int(closed_events),
        "closed_events_distinct_tickets": int(distinct),
        "closed_events_reason_auto": int(auto),
        "statuses_after": {str(k): int(v) for k, v in statuses},
        "actor_runs_logged": [int(n) for n in runs],
        "goal_s": 60,
        "goal_met": closed_s is not None and closed_s <= 60,
        "machine_busy_before_pct": idle,
        "during": usage,
        "timeline": timeline[:: max(1, len(timeline) // 200)],
        "pools": {n: procfile(env)[n] for n in pools},
        "problem_log_lines": log_problems(log_dir),
    }


# -- the report -----------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    if sla := results.get("sla"):
        print(
            f"\nSLA lateness: {sla['timers']} urgent timers, deadlines spread over "
            f"{sla['deadline_spread_s']} s (SLA_URGENT_SECONDS={sla['sla_urgent_seconds']}, "
            f"email {sla['email']}, sla pool worker timeout {sla['sla_pool_worker_timeout_ms']} ms)"
        )
        print(
            f"  fired {sla['fired']}/{sla['timers']} (early: {sla['fired_early']}); "
            f"ticket.sla_breached events {sla['breach_events']} "
            f"({sla['breach_events_distinct_tickets']} tickets)"
        )
        columns = ("p50", "p90", "p99", "max", "mean")
        print(f"  {'lateness ms':<28}" + "".join(f"{c:>8}" for c in columns))
        for key, label in (
            ("lateness", "all"),
            ("lateness_fired_by_a_sweep_batch", "by a sweep (shared time)"),
            ("lateness_fired_alone", "alone (wake-up)"),
        ):
            if (part := sla[key]).get("count"):
                cells = "".join(f"{part[f'{c}_ms']:>8}" for c in columns)
                print(f"  {label + ' ' + str(part['count']):<28}{cells}")
        print(f"  goal p99 <= 1000 ms: {'met' if sla['goal_met'] else 'MISSED'}")
        print(f"  CPU % of a core while firing: {cpu_line(sla['during_firing']['cpu_pct'])}")
    if close := results.get("close"):
        print(
            f"\nAuto-close: {close['tickets']} due resolved tickets (+{NOT_DUE} not due), pools "
            f"{', '.join(close['pools'])}: all closed after {close['closed_s']} s "
            f"({close['closes_per_s']} closes/s); {close['events_dispatched']} events dispatched"
            f" after {close['waited_s']} s ({close['events_dispatched_per_s']}/s)"
        )
        print(
            f"  ticket.closed events {close['closed_events']} "
            f"({close['closed_events_distinct_tickets']} tickets, "
            f"{close['closed_events_reason_auto']} reason=auto); statuses after "
            f"{close['statuses_after']}"
        )
        print(f"  goal <= 60 s: {'met' if close['goal_met'] else 'MISSED'}")
        print(f"  CPU % of a core while closing: {cpu_line(close['cpu_pct_while_closing'])}")
        print(f"  {'peak RSS (VmHWM) MB':<28}{'at start':>10}{'peak':>10}")
        for m in close["during"]["memory"]:
            label = f"{m['service']} {m['pid']}"
            print(f"    {label:<26}{m['peak_rss_at_start_mb']:>10}{m['peak_rss_mb']:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timers", description=__doc__)
    run_options(parser, DATABASE_URL, quiet_below=50.0, quiet_timeout=30.0, label="--tag")
    add = parser.add_argument
    add("--only", choices=("sla", "close"), help="run one measurement only")
    add("--timers", type=int, default=1000, help="urgent tickets (SLA timers)")
    add("--sla-seconds", type=int, default=45, help="SLA_URGENT_SECONDS")
    add("--spread-seconds", type=float, default=30.0, help="create the tickets over this long")
    add("--smtp-sink", action="store_true", help="SLA run: email to a sink instead of off")
    add("--sla-worker-timeout-ms", type=int, help="SLA run: the sla pool's dramatiq_worker_timeout")
    add("--tickets", type=int, default=100_000, help="due resolved tickets")
    add("--close-pools", default=",".join(CLOSE_POOLS), help="auto-close run: pools to start")
    add("--timeout", type=float, default=120.0, help="seconds past the goal")
    add("--redis-url", default=REDIS_URL, help="flushed")
    args = parser.parse_args(argv)
    if args.sla_seconds < args.spread_seconds + 5:
        parser.error("--sla-seconds must exceed --spread-seconds by 5 s or more")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-timers-") as tmp:
        try:
            for name, measure in (("sla", measure_sla), ("close", measure_close)):
                if args.only in (None, name):
                    (Path(tmp) / name).mkdir()
                    results[name] = measure(args, Path(tmp) / name)
        finally:
            flush_redis(args.redis_url)
        if any(r.get("problem_log_lines") for r in results.values()):
            keep = RESULTS_DIR / f"timers-logs-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
            shutil.copytree(tmp, keep, ignore=shutil.ignore_patterns("*.txt"))
            results["logs_kept_in"] = str(keep.relative_to(ROOT))
    print_report(results)
    save_results("timers", results, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
