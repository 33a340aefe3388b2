"""Fault suite: break things under a steady write load and count, Jepsen style, what was sent,
received, lost and duplicated. Writes docs/reliability.md and bench/results/faults.json, then
runs the abuse suite (bench/abuse.py), which writes the page's Abuse section.

    uv run python -m bench.faults                      # every scenario, then the abuse suite
                                                       # (about 6 + 5 minutes)
    uv run python -m bench.faults --scenario redis     # one of: redis, worker, postgres, smtp,
                                                       # abuse (repeatable)

Each scenario runs the real processes (API server, worker pools, scheduler) against a real SMTP
server that records every email. A ticket's email carries the ticket id, so the count is exact:
lost = tickets answered 201 whose email never arrived; duplicated = emails beyond one per ticket.
Destructive scenarios use a private redis-server / PostgreSQL cluster on random ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import jwt
import psycopg

from api.cli import ensure_database, migrate
from domain.devkey import ensure_dev_keypair
from domain.outbox import ALL_QUEUES, NOTIFICATIONS_QUEUE
from tests.processes import (
    ROOT,
    ApiServer,
    PrivatePostgres,
    PrivateRedis,
    ServiceProcess,
    dramatiq_workers,
)
from tests.processes import scheduler as scheduler_process
from tests.sinks import SmtpSink, free_port

TEAM_ADDRESS = "team@faults.test"
SHARED_DB = "postgresql://root@127.0.0.1:5432/helpdesk_faults"
SHARED_REDIS = "redis://127.0.0.1:6379/12"
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "reliability.md"
REPUBLISH_AFTER_S = 15


@dataclass
class Outcome:
    scenario: str
    fault: str
    writes_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    max_write_latency_s: float = 0.0
    tickets_created: int = 0
    emails_received: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Stack:
    """API server, worker pools and scheduler pointed at one database, one Redis, one SMTP sink."""

    def __init__(self, database_url: str, redis_url: str, sink: SmtpSink) -> None:
        self.port = free_port()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SLACK_", "JWT_"))
        }
        self.env.update(
            PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            APP_ENV="development",
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            PORT=str(self.port),
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(sink.port),
            ADMIN_EMAILS=TEAM_ADDRESS,
            LOG_FORMAT="json",
            RATE_LIMIT_PER_MINUTE="0",
            OUTBOX_SWEEP_INTERVAL_SECONDS="1",
            OUTBOX_REPUBLISH_AFTER_SECONDS=str(REPUBLISH_AFTER_S),
        )
        self.api: ServiceProcess | None = None
        self.notifications: ServiceProcess | None = None
        self.others: list[ServiceProcess] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        self.api = ApiServer(self.env, workers=1).start()
        self.notifications = self.start_notifications()
        self.others = [
            # Every queue but notifications (its pool is the one the worker scenario kills).
            dramatiq_workers(
                self.env, [q for q in ALL_QUEUES if q != NOTIFICATIONS_QUEUE], threads=8
            ).start(),
            scheduler_process(self.env).start(),
        ]
        return self

    def start_notifications(self) -> ServiceProcess:
        return dramatiq_workers(self.env, [NOTIFICATIONS_QUEUE], threads=16).start()

    def token(self) -> str:
        """A development token for the load user (the API runs with APP_ENV=development)."""
        private_pem, _ = ensure_dev_keypair(ROOT / ".devkeys")
        now = int(time.time())
        return jwt.encode(
            {"sub": "load-user", "iat": now, "exp": now + 3600}, private_pem, algorithm="RS256"
        )

    def stop(self) -> None:
        for process in [self.api, self.notifications, *self.others]:
            if process is not None:
                process.stop()


async def steady_writes(
    base_url: str,
    token: str,
    *,
    rate: float,
    duration_s: float,
    at: dict[float, Callable[[], None]],
) -> tuple[list[tuple[int, str | None, float]], dict[str, float]]:
    """POST tickets at ``rate`` per second for ``duration_s``; at second t run ``at[t]`` in a
    thread (stopping a server blocks, and must not stall the load). Returns (status, ticket id,
    latency) per request and, per action, the moment it finished."""
    results: list[tuple[int, str | None, float]] = []
    finished: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {token}"}
    pending = dict(sorted(at.items()))

    async def act(action: Callable[[], None]) -> None:
        await asyncio.to_thread(action)
        finished[action.__name__] = time.monotonic()

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def one(n: int) -> None:
            started = time.monotonic()
            try:
                response = await client.post(
                    "/v1/support/tickets",
                    headers=headers,
                    json={"subject": f"fault run {n}", "body": "steady load"},
                )
                ticket = response.json().get("id") if response.status_code == 201 else None
                results.append((response.status_code, ticket, time.monotonic() - started))
            except httpx.HTTPError:
                results.append((0, None, time.monotonic() - started))

        start = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        n = 0
        while time.monotonic() - start < duration_s:
            elapsed = time.monotonic() - start
            for moment in [m for m in pending if m <= elapsed]:
                tasks.append(asyncio.create_task(act(pending.pop(moment))))
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return results, finished


def count(
    outcome: Outcome,
    results: list[tuple[int, str | None, float]],
    sink: SmtpSink,
    *,
    fault_over_at: float,
    drain_timeout_s: float,
) -> Outcome:
    created = {ticket for status, ticket, _ in results if ticket}
    outcome.writes_sent = len(results)
    outcome.statuses = dict(Counter(str(status) for status, _, _ in results))
    outcome.max_write_latency_s = round(max((lat for *_, lat in results), default=0.0), 3)
    outcome.tickets_created = len(created)

    def received() -> Counter[str]:
        return Counter(str(m.message["X-Helpdesk-Ticket"]) for m in list(sink.received))

    deadline = time.monotonic() + drain_timeout_s
    while not created <= set(received()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if created <= set(received()):
        outcome.recovery_s = round(time.monotonic() - fault_over_at, 1)
    time.sleep(3)  # let late duplicates show up before counting
    got = received()
    outcome.emails_received = sum(got.values())
    outcome.lost = len(created - set(got))
    outcome.duplicated = sum(n - 1 for n in got.values() if n > 1)
    return outcome


def ledger_note(url: str) -> str:
    with psycopg.connect(url) as conn:
        rows: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        )
    return f"delivery ledger at the end of the run: {rows}"


def fresh_database(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = str(info["dbname"])
    info["dbname"] = "postgres"
    with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ensure_database(url)
    migrate(url)
    return url


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


# -- scenarios --------------------------------------------------------------------------------


async def redis_killed_and_restarted_empty(rate: float) -> Outcome:
    outcome = Outcome("redis", "Redis killed at 10 s under load, restarted empty at 25 s")
    sink = SmtpSink().start()
    redis_server = PrivateRedis().start()
    stack = Stack(fresh_database(SHARED_DB), redis_server.url, sink).start()
    try:

        def kill_redis() -> None:
            redis_server.stop()

        def restart_redis() -> None:
            redis_server.start()

        results, moments = await steady_writes(
            stack.base_url,
            stack.token(),
            rate=rate,
            duration_s=40,
            at={10: kill_redis, 25: restart_redis},
        )
        outcome.notes.append(
            f"events published before the kill and not yet handled come back through the "
            f"re-publish of unhandled events (after {REPUBLISH_AFTER_S} s in this run; "
            "OUTBOX_REPUBLISH_AFTER_SECONDS, default 120 s)"
        )
        return count(
            outcome, results, sink, fault_over_at=moments["restart_redis"], drain_timeout_s=180
        )
    finally:
        stack.stop()
        redis_server.stop()
        sink.stop()


async def worker_killed_three_times(rate: float) -> Outcome:
    outcome = Outcome("worker", "notifications pool SIGKILLed at 8, 18 and 28 s, restarted at once")
    sink = SmtpSink()
    sink.delay_s = 0.02  # a mail server that takes a moment, so kills land mid-batch
    sink.start()
    flush_redis(SHARED_REDIS)
    stack = Stack(fresh_database(SHARED_DB), SHARED_REDIS, sink).start()
    try:
        kills: list[float] = []

        def make_kill(label: str) -> Callable[[], None]:
            def kill() -> None:
                assert stack.notifications is not None
                stack.notifications.kill()
                kills.append(time.monotonic())
                stack.notifications = stack.start_notifications()

            kill.__name__ = label
            return kill

        results, moments = await steady_writes(
            stack.base_url,
            stack.token(),
            rate=rate,
            duration_s=35,
            at={8: make_kill("kill_1"), 18: make_kill("kill_2"), 28: make_kill("kill_3")},
        )
        outcome.notes.append(
            "a message a killed worker held returns through the re-publish of unhandled events "
            f"({REPUBLISH_AFTER_S} s here) or Dramatiq's own requeue after its 60 s heartbeat"
        )
        return count(outcome, results, sink, fault_over_at=moments["kill_3"], drain_timeout_s=180)
    finally:
        stack.stop()
        sink.stop()


async def postgres_stopped_and_started(rate: float) -> Outcome:
    outcome = Outcome("postgres", "PostgreSQL stopped at 10 s under load, started at 20 s")
    sink = SmtpSink().start()
    cluster = PrivatePostgres().init().start()
    ensure_database(cluster.url)
    migrate(cluster.url)
    flush_redis(SHARED_REDIS)
    stack = Stack(cluster.url, SHARED_REDIS, sink).start()
    try:

        def stop_postgres() -> None:
            cluster.stop()

        def start_postgres() -> None:
            cluster.start()

        results, moments = await steady_writes(
            stack.base_url,
            stack.token(),
            rate=rate,
            duration_s=35,
            at={10: stop_postgres, 20: start_postgres},
        )
        outcome = count(
            outcome, results, sink, fault_over_at=moments["start_postgres"], drain_timeout_s=180
        )
        after = [s for s, _, _ in results if s != 201]
        outcome.notes.append(
            f"{len(after)} writes refused while the database was down, all 503 with Retry-After"
            if set(after) <= {503}
            else f"unexpected statuses while down: {Counter(after)}"
        )
        return outcome
    finally:
        stack.stop()
        cluster.destroy()
        sink.stop()


async def smtp_refusing_for_a_minute(rate: float) -> Outcome:
    outcome = Outcome("smtp", "SMTP answers 451 for 60 s, then accepts")
    sink = SmtpSink().start()
    sink.refuse_until_cleared("451 4.3.0 try again later")
    flush_redis(SHARED_REDIS)
    stack = Stack(fresh_database(SHARED_DB), SHARED_REDIS, sink).start()
    try:
        refusing_since = time.monotonic()

        def accept_again() -> None:
            sink.clear_refusals()

        results, _ = await steady_writes(
            stack.base_url, stack.token(), rate=rate, duration_s=30, at={}
        )
        await asyncio.sleep(max(0.0, refusing_since + 60 - time.monotonic()))
        accept_again()
        outcome.notes.append(
            "deliveries retry with exponential backoff capped at 60 s, so the last refused "
            "emails arrive up to a minute after the server accepts again"
        )
        outcome = count(outcome, results, sink, fault_over_at=time.monotonic(), drain_timeout_s=240)
        outcome.notes.append(ledger_note(SHARED_DB))
        return outcome
    finally:
        stack.stop()
        sink.stop()


SCENARIOS: dict[str, Callable[[float], Awaitable[Outcome]]] = {
    "redis": redis_killed_and_restarted_empty,
    "worker": worker_killed_three_times,
    "postgres": postgres_stopped_and_started,
    "smtp": smtp_refusing_for_a_minute,
}


def write_report(outcomes: list[Outcome], rate: float) -> None:
    lines = [
        "# Reliability: faults under load",
        "",
        "Produced by `make faults` (`uv run python -m bench.faults`). Each scenario runs the real",
        "API server, the worker pools (events/sla/maintenance and notifications) and the",
        f"scheduler, sends new tickets at a steady {rate:g} per second, breaks one thing, and then",
        "counts every email the SMTP server accepted (one per ticket, to the team address).",
        "",
        "- **lost**: tickets answered `201` whose email had not arrived when the run gave up",
        "  waiting (goal 0); the notes say whether the ledger still holds them as pending, i.e.",
        "  delayed past the run's patience rather than gone;",
        "- **duplicated**: emails beyond one per ticket (goal 0; delivery is at least once,",
        "  so a send in flight when a worker dies can repeat);",
        "- **recovery**: from the end of the fault until the last missing email arrived.",
        "",
        "| scenario | fault | writes | statuses | max write latency | tickets | emails | lost | "
        "duplicated | recovery |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(o.statuses.items()))
        recovery = f"{o.recovery_s} s" if o.recovery_s is not None else "not recovered"
        lines.append(
            f"| {o.scenario} | {o.fault} | {o.writes_sent} | {statuses} | "
            f"{o.max_write_latency_s} s | {o.tickets_created} | {o.emails_received} | {o.lost} | "
            f"{o.duplicated} | {recovery} |"
        )
    lines += ["", "## Notes", ""]
    for o in outcomes:
        for note in o.notes:
            lines.append(f"- **{o.scenario}**: {note}.")
    lines += [
        "",
        "The same faults are also exercised, smaller and with assertions, by the test suite",
        "(`tests/test_pipeline_faults.py`, `tests/test_database_outage.py`,",
        "`tests/test_timers_e2e.py`).",
        "",
    ]
    # The abuse suite's section (bench/abuse.py writes it) stays as it was.
    from bench.abuse import abuse_section

    kept = abuse_section(REPORT.read_text()) if REPORT.exists() else ""
    if kept:
        lines += [kept, ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines))


async def main_async(names: list[str], rate: float) -> list[Outcome]:
    outcomes = []
    for name in names:
        print(f"-- scenario {name}", flush=True)
        outcome = await SCENARIOS[name](rate)
        print(json.dumps(asdict(outcome)), flush=True)
        outcomes.append(outcome)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*sorted(SCENARIOS), "abuse"],
        help="repeatable; 'abuse' is the abuse suite (python -m bench.abuse, full counts)",
    )
    parser.add_argument("--rate", type=float, default=30.0, help="new tickets per second")
    args = parser.parse_args()
    names = args.scenario or [*SCENARIOS, "abuse"]
    scenarios = [name for name in names if name != "abuse"]
    ok = True
    if scenarios:
        outcomes = asyncio.run(main_async(scenarios, args.rate))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "faults.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
        write_report(outcomes, args.rate)
        print(f"wrote {REPORT.relative_to(ROOT)}")
        ok = all(o.lost == 0 for o in outcomes)
    if "abuse" in names:
        from bench import abuse  # imports this module: imported here, not at the top

        print("-- abuse suite", flush=True)
        ok = abuse.main([]) == 0 and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
