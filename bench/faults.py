"""Fault suite: break things under a steady write load and count, Jepsen style, what was sent,
received, lost and duplicated. Writes docs/reliability.md and bench/results/faults.json, then
runs the abuse suite (bench/abuse.py), which writes the page's Abuse section.

    uv run python -m bench.faults                      # every scenario, then the abuse suite
    uv run python -m bench.faults --scenario redis     # or worker, postgres, smtp, webhook, abuse

Each scenario runs the real processes (the API, the Procfile's worker pools and scheduler)
against an SMTP server that records every email. A ticket's email carries the ticket id, so the
count is exact: lost = tickets answered 201 whose email never arrived; duplicated = emails
beyond one per ticket. Destructive scenarios use a private redis-server / PostgreSQL cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import (
    POOLS,
    RESULTS_DIR,
    ROOT,
    Stack,
    dev_tokens,
    flush_redis,
    free_port,
    mail_settings,
    md_table,
    percentile,
    prepare_database,
    query,
    redis_url_of,
    service_env,
    start_redis,
)
from domain.webhooks import new_secret
from tests.processes import PrivatePostgres
from tests.sinks import SmtpSink, wait_for
from tests.webhook_sink import Answer, WebhookSink

TEAM_ADDRESS = "team@faults.test"
SHARED_DB = "postgresql://root@127.0.0.1:5432/helpdesk_bench_faults"
SHARED_REDIS = "redis://127.0.0.1:6379/12"
REPORT = ROOT / "docs" / "reliability.md"
REPUBLISH_AFTER_S = 15
Writes = list[tuple[int, str | None, float]]  # (status, ticket id, latency) per request


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


@contextlib.contextmanager
def running(
    sink: SmtpSink,
    log_dir: Path,
    database_url: str = SHARED_DB,
    redis_url: str = SHARED_REDIS,
    webhook_url: str | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """On a fresh database (and the shared Redis database flushed; a webhook endpoint for
    ``webhook_url``): one API process, the worker pools (the notifications pool one process, the
    one the worker scenario kills) and the scheduler, quick outbox sweeps and re-publishing,
    ``settings`` added. The services, then ``sink``, are stopped afterwards."""
    try:
        if redis_url == SHARED_REDIS:
            flush_redis(redis_url)
        prepare_database(database_url, fresh=True)
        if webhook_url:
            register_endpoint(database_url, webhook_url)
        env = service_env(
            database_url,
            redis_url,
            PORT=free_port(),
            NOTIFICATION_PROCESSES=1,
            OUTBOX_SWEEP_INTERVAL_SECONDS=1,
            OUTBOX_REPUBLISH_AFTER_SECONDS=REPUBLISH_AFTER_S,
            **mail_settings(sink.port, TEAM_ADDRESS) | settings,
        )
        stack = Stack(env, log_dir).start("web", *POOLS, web_args=["--workers", "1"])
        try:
            yield stack
        finally:
            stack.stop()
    finally:
        sink.stop()


async def steady_writes(
    stack: Stack, rate: float, duration_s: float, at: Mapping[int, Callable[[], object]]
) -> tuple[Writes, dict[int, float]]:
    """POST tickets at ``rate`` per second for ``duration_s``; at second t run ``at[t]`` in a
    thread (stopping a server blocks, and must not stall the load). Returns the writes and, per
    second of ``at``, the moment its action finished."""
    results: Writes = []
    finished: dict[int, float] = {}
    headers = {"Authorization": f"Bearer {dev_tokens(['load-user'])[0]}"}
    pending = dict(sorted(at.items()))

    async def act(second: int, action: Callable[[], object]) -> None:
        await asyncio.to_thread(action)
        finished[second] = time.monotonic()

    base_url = f"http://127.0.0.1:{stack['web'].port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def one(n: int) -> None:
            started = time.monotonic()
            try:
                body = {"subject": f"fault run {n}", "body": "steady load"}
                response = await client.post("/v1/support/tickets", headers=headers, json=body)
                ticket = response.json().get("id") if response.status_code == 201 else None
                results.append((response.status_code, ticket, time.monotonic() - started))
            except httpx.HTTPError:
                results.append((0, None, time.monotonic() - started))

        start, tasks, n = time.monotonic(), [], 0
        while time.monotonic() - start < duration_s:
            for second in [t for t in pending if t <= time.monotonic() - start]:
                tasks.append(asyncio.create_task(act(second, pending.pop(second))))
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return results, finished


def count(
    outcome: Outcome, results: Writes, sink: SmtpSink, fault_over_at: float, drain_s: float
) -> Outcome:
    created = {ticket for _, ticket, _ in results if ticket}
    outcome.writes_sent = len(results)
    outcome.statuses = dict(Counter(str(status) for status, _, _ in results))
    outcome.max_write_latency_s = round(max((lat for *_, lat in results), default=0.0), 3)
    outcome.tickets_created = len(created)

    def received() -> Counter[str]:
        return Counter(str(m.message["X-Helpdesk-Ticket"]) for m in list(sink.received))

    deadline = time.monotonic() + drain_s
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


# -- scenarios ------------------------------------------------------------------------------------


async def redis_killed_and_restarted_empty(rate: float, log_dir: Path) -> Outcome:
    outcome = Outcome("redis", "Redis killed at 10 s under load, restarted empty at 25 s")
    redis = start_redis(log_dir)
    sink = SmtpSink().start()
    try:
        with running(sink, log_dir, redis_url=redis_url_of(redis)) as stack:
            # Started again on its port, without persistence: empty.
            at = {10: redis.kill, 25: lambda: redis.start().wait_ready(20)}
            results, moments = await steady_writes(stack, rate, 40, at)
            outcome.notes.append(
                "events published before the kill and not yet handled come back through the "
                f"re-publish of unhandled events (after {REPUBLISH_AFTER_S} s in this run; "
                "OUTBOX_REPUBLISH_AFTER_SECONDS, default 120 s)"
            )
            return count(outcome, results, sink, moments[25], 180)
    finally:
        redis.stop()


async def worker_killed_three_times(rate: float, log_dir: Path) -> Outcome:
    outcome = Outcome("worker", "notifications pool SIGKILLed at 8, 18 and 28 s, restarted at once")
    sink = SmtpSink()
    sink.delay_s = 0.02  # a mail server that takes a moment, so kills land mid-batch
    with running(sink.start(), log_dir) as stack:
        at = dict.fromkeys((8, 18, 28), lambda: stack.restart("notifications"))
        results, moments = await steady_writes(stack, rate, 35, at)
        outcome.notes.append(
            "a message a killed worker held returns through the re-publish of unhandled events "
            f"({REPUBLISH_AFTER_S} s here) or Dramatiq's own requeue after its 60 s heartbeat"
        )
        return count(outcome, results, sink, moments[28], 180)


async def postgres_stopped_and_started(rate: float, log_dir: Path) -> Outcome:
    outcome = Outcome("postgres", "PostgreSQL stopped at 10 s under load, started at 20 s")
    cluster = PrivatePostgres().init().start()
    database_url = f"postgresql://postgres@127.0.0.1:{cluster.port}/helpdesk_bench"
    sink = SmtpSink().start()
    try:
        with running(sink, log_dir, database_url) as stack:
            at = {10: cluster.stop, 20: cluster.start}
            results, moments = await steady_writes(stack, rate, 35, at)
            outcome = count(outcome, results, sink, moments[20], 180)
        refused = [s for s, _, _ in results if s != 201]
        outcome.notes.append(
            f"{len(refused)} writes refused while the database was down, all 503 with Retry-After"
            if set(refused) <= {503}
            else f"unexpected statuses while down: {Counter(refused)}"
        )
        return outcome
    finally:
        cluster.destroy()


async def smtp_refusing_for_a_minute(rate: float, log_dir: Path) -> Outcome:
    outcome = Outcome("smtp", "SMTP answers 451 for 60 s, then accepts")
    sink = SmtpSink().start()
    sink.refuse_until_cleared("451 4.3.0 try again later")
    with running(sink, log_dir) as stack:
        refusing_since = time.monotonic()
        results, _ = await steady_writes(stack, rate, 30, {})
        await asyncio.sleep(max(0.0, refusing_since + 60 - time.monotonic()))
        sink.clear_refusals()
        outcome.notes.append(
            "deliveries retry with exponential backoff capped at 60 s, so the last refused "
            "emails arrive up to a minute after the server accepts again"
        )
        outcome = count(outcome, results, sink, time.monotonic(), 240)
        rows = query(SHARED_DB, "SELECT status, count(*) FROM deliveries GROUP BY status")
        outcome.notes.append(f"delivery ledger at the end of the run: {dict(rows)}")
        return outcome


WEBHOOK_TIMEOUT_S = 2


def register_endpoint(database_url: str, url: str) -> None:
    """A webhook endpoint for every new ticket (written directly: the API's registration and its
    checks are the tests' business, not this run's)."""
    now = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO webhook_endpoints (id, url, event_types, enabled, secret, created_at,"
            " updated_at) VALUES (%s, %s, %s, true, %s, %s, %s)",
            ("01JN2XG6H7J8K9M0N1P2Q3R4S5", url, ["ticket.created"], new_secret(), now, now),
        )


def email_delays(database_url: str, sink: SmtpSink) -> list[tuple[float, float]]:
    """(commit time, seconds from the commit to the email's arrival) of each ticket's email."""
    created: dict[str, datetime] = dict(query(database_url, "SELECT id, created_at FROM tickets"))
    return [
        (created[ticket].timestamp(), m.received_at - created[ticket].timestamp())
        for m in list(sink.received)
        if (ticket := str(m.message["X-Helpdesk-Ticket"])) in created
    ]


def delay_summary(delays: list[float]) -> str:
    ordered = sorted(delays) or [0.0]
    return (
        f"p50 {percentile(ordered, 50):.2f} s, p99 {percentile(ordered, 99):.2f} s, "
        f"max {ordered[-1]:.2f} s"
    )


# The receiver's phases: what it does from second ``start`` of the run until the next.
WEBHOOK_PHASES = [
    ("503", 0, Answer(503)),
    ("hanging", 10, Answer(delay_s=WEBHOOK_TIMEOUT_S * 4)),
    ("slow", 20, Answer(delay_s=0.8)),
    ("prompt", 30, Answer()),
]


async def hostile_webhook_receiver(rate: float, log_dir: Path) -> Outcome:
    outcome = Outcome(
        "webhook",
        "a webhook receiver answers 503 for 10 s, hangs past the timeout for 10 s, answers "
        "slowly (0.8 s) for 10 s, then promptly",
    )
    receiver = WebhookSink(WEBHOOK_PHASES[0][2]).start()
    sink = SmtpSink().start()
    settings: dict[str, Any] = {"WEBHOOK_ALLOW_PRIVATE": "true"}
    settings["WEBHOOK_TIMEOUT_SECONDS"] = WEBHOOK_TIMEOUT_S
    try:
        with running(sink, log_dir, webhook_url=receiver.url(), **settings) as stack:
            at = {
                second: partial(receiver.respond_always, answer)
                for _, second, answer in WEBHOOK_PHASES[1:]
            }
            load_started = time.time()
            results, moments = await steady_writes(stack, rate, 35, at)
            outcome = count(outcome, results, sink, moments[30], 240)
            created = {ticket for _, ticket, _ in results if ticket}

            def arrived() -> Counter[str]:
                return Counter(
                    json.loads(r.body)["data"]["ticket"]["id"] for r in receiver.delivered()
                )

            await asyncio.to_thread(wait_for, lambda: created <= set(arrived()), timeout=240)
            await asyncio.sleep(3)  # late duplicates
        got = arrived()
        sql = "SELECT status, count(*) FROM deliveries WHERE channel = 'webhook' GROUP BY status"
        rows = query(SHARED_DB, sql)
        delays = email_delays(SHARED_DB, sink)
        # By the second of the run the ticket was written in.
        ends = [second for _, second, _ in WEBHOOK_PHASES[1:]] + [99]
        by_phase = [
            f"{name}: " + delay_summary([d for at, d in delays if start <= at - load_started < end])
            for (name, start, _), end in zip(WEBHOOK_PHASES, ends, strict=True)
        ]
        outcome.notes += [
            f"webhooks: {len(created & set(got))} of {len(created)} tickets' events arrived, "
            f"{len(created - set(got))} missing, {sum(n - 1 for n in got.values() if n > 1)} "
            f"duplicated, after {len(receiver.attempts())} requests to the receiver; ledger rows "
            f"(channel webhook) by status: {dict(rows)}",
            "emails alongside (the same ledger, their own pool), commit -> SMTP: "
            + delay_summary([d for _, d in delays])
            + f"; by the receiver's phase: {'; '.join(by_phase)}",
        ]
        return outcome
    finally:
        receiver.stop()


SCENARIOS: dict[str, Callable[[float, Path], Awaitable[Outcome]]] = {
    "redis": redis_killed_and_restarted_empty,
    "worker": worker_killed_three_times,
    "postgres": postgres_stopped_and_started,
    "smtp": smtp_refusing_for_a_minute,
    "webhook": hostile_webhook_receiver,
}


def write_report(outcomes: list[Outcome], rate: float) -> None:
    lines = [
        "# Reliability: faults under load",
        "",
        "Produced by `make faults` (`uv run python -m bench.faults`). Each scenario runs the real",
        "API server, the worker pools and the scheduler (the `Procfile`'s, the notifications",
        f"pool as one process), sends new tickets at a steady {rate:g} per second, breaks one",
        "thing, and then counts every email the SMTP server accepted (one per ticket, to the",
        "team address).",
        "",
        "- **lost**: tickets answered `201` whose email had not arrived when the run gave up",
        "  waiting (goal 0); the notes say whether the ledger still holds them as pending, i.e.",
        "  delayed past the run's patience rather than gone;",
        "- **duplicated**: emails beyond one per ticket (goal 0; delivery is at least once,",
        "  so a send in flight when a worker dies can repeat);",
        "- **recovery**: from the end of the fault until the last missing email arrived.",
        "",
    ]
    header = ["scenario", "fault", "writes", "statuses", "max write latency", "tickets"]
    header += ["emails", "lost", "duplicated", "recovery"]
    lines += md_table(
        header,
        [
            [
                o.scenario,
                o.fault,
                o.writes_sent,
                ", ".join(f"{k}: {v}" for k, v in sorted(o.statuses.items())),
                f"{o.max_write_latency_s} s",
                o.tickets_created,
                o.emails_received,
                o.lost,
                o.duplicated,
                f"{o.recovery_s} s" if o.recovery_s is not None else "not recovered",
            ]
            for o in outcomes
        ],
    )
    lines += ["", "## Notes", ""]
    lines += [f"- **{o.scenario}**: {note}." for o in outcomes for note in o.notes]
    lines += [
        "",
        "The same faults are also exercised, smaller and with assertions, by the test suite",
        "(`tests/test_pipeline_faults.py`, `tests/test_database_outage.py`,",
        "`tests/test_timers_e2e.py`).",
        "",
    ]
    from bench.abuse import SECTION_START

    text, old = "\n".join(lines), REPORT.read_text() if REPORT.exists() else ""
    if SECTION_START in old:  # the abuse suite's section, and the notes after it, stay
        text += "\n" + old[old.index(SECTION_START) :]
    REPORT.write_text(text)


async def run_scenarios(names: list[str], rate: float) -> list[Outcome]:
    outcomes = []
    for name in names:
        print(f"-- scenario {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-faults-{name}-") as log_dir:
            outcomes.append(await SCENARIOS[name](rate, Path(log_dir)))
        print(json.dumps(asdict(outcomes[-1])), flush=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "abuse"])
    parser.add_argument("--rate", type=float, default=30.0, help="new tickets per second")
    args = parser.parse_args()
    names = args.scenario or [*SCENARIOS, "abuse"]
    ok = True
    if scenarios := [name for name in names if name != "abuse"]:
        outcomes = asyncio.run(run_scenarios(scenarios, args.rate))
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "faults.json").write_text(
            json.dumps([asdict(o) for o in outcomes], indent=2)
        )
        write_report(outcomes, args.rate)
        print(f"wrote {REPORT.relative_to(ROOT)}")
        ok = all(o.lost == 0 for o in outcomes)
    if "abuse" in names:
        from bench import abuse  # it imports this module's neighbours: imported here

        print("-- abuse suite", flush=True)
        ok = abuse.main([]) == 0 and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
