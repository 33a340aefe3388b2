"""Ceilings: what this machine does for each part of the notification pipeline on its own.

    uv run python -m bench.floor [--emails 5000] [--messages 3000] [--transactions 2000]

The pipeline benchmark measures the whole path; this one measures its parts with nothing else
running, so a missed target can be told apart from a part that cannot go faster here:

* smtp: the workers' own SMTP channel sending emails, 32 at a time, to the pipeline benchmark's
  SMTP sink (its own process). Emails/s, and CPU per email in the sender and in the sink.
* dramatiq: a do-nothing async actor in one worker process (8 threads, the same middleware as
  the worker pools, 100 ms polling like the Procfile's pools), fed through a private
  redis-server. CPU per message in the worker and in Redis.
* transaction: one ``SELECT 1`` and a commit, through an AsyncSession as the workers use it and
  through psycopg alone. CPU per transaction in the client.

Everything is on 127.0.0.1 and private to the run. Prints a table and writes JSON to
bench/results/. See bench/PIPELINE.md ("Ceilings").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK, HOST, RESULTS_DIR, Service, git_state
from bench.pipeline import DEFAULT_DATABASE_URL, start_redis, start_sink

FLOOR_QUEUE = "floor"


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- smtp ---------------------------------------------------------------------------------------


def measure_smtp(emails: int, log_dir: Path) -> dict[str, Any]:
    from domain.notifications import Notice
    from domain.settings import load_settings
    from tests.notices import sample_notice
    from workers.channels.email import MAX_CONNECTIONS, SmtpChannel

    sink, reader, port = start_sink(log_dir, "floor")
    try:
        env = {**os.environ, "SMTP_HOST": HOST, "SMTP_PORT": str(port), "ADMIN_EMAILS": ""}
        channel = SmtpChannel(load_settings(env))

        def notice(i: int) -> Notice:
            return sample_notice(event_id=f"floor-{i}", recipient=f"agent{i % 4}@support.test")

        async def send_all() -> tuple[float, float, float]:
            slots = asyncio.Semaphore(MAX_CONNECTIONS)

            async def one(i: int) -> None:
                async with slots:
                    await channel.send(notice(i))

            await asyncio.gather(*(one(i) for i in range(MAX_CONNECTIONS)))  # connections open
            sink_before = cpu_s(sink.pid)
            started, cpu_before = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(emails)))
            wall = time.perf_counter() - started
            client_cpu = time.process_time() - cpu_before
            await channel.close()
            return wall, client_cpu, cpu_s(sink.pid) - sink_before

        wall, client_cpu, sink_cpu = asyncio.run(send_all())
        if not reader.wait_for(emails + MAX_CONNECTIONS, timeout=30):
            raise SystemExit(f"the sink got {reader.poll()} of {emails + MAX_CONNECTIONS} emails")
        return {
            "emails": emails,
            "per_s": emails / wall,
            "sender_cpu_ms": client_cpu * 1000 / emails,
            "sink_cpu_ms": sink_cpu * 1000 / emails,
        }
    finally:
        sink.stop()


# -- dramatiq -----------------------------------------------------------------------------------


def measure_dramatiq(messages: int, log_dir: Path) -> dict[str, Any]:
    import redis

    redis_service, redis_port = start_redis(log_dir)
    url = f"redis://{HOST}:{redis_port}/0"
    env = {**os.environ, "FLOOR_REDIS_URL": url, "dramatiq_worker_timeout": "100"}
    argv = [sys.executable, "-m", "dramatiq", "bench.floor_actor", "-p", "1", "-t", "8"]
    worker = Service("floor-worker", argv, env, log_dir / "floor-worker.log", "ready for action")
    client = redis.Redis.from_url(url)
    try:
        worker.start().wait_ready(60)
        worker_pid = _only_child(worker.pid)
        os.environ["FLOOR_REDIS_URL"] = url
        from bench import floor_actor

        time.sleep(2)  # past the worker's start-up
        idle_before = cpu_s(worker_pid)
        time.sleep(3)
        idle_pct = (cpu_s(worker_pid) - idle_before) / 3 * 100
        worker_before, redis_before = cpu_s(worker_pid), cpu_s(redis_service.pid)
        started = time.perf_counter()
        for i in range(messages):
            floor_actor.nothing.send(i)
        deadline = started + 120
        while int(client.get(floor_actor.DONE_KEY) or 0) < messages:
            if time.perf_counter() > deadline:
                raise SystemExit(f"the worker did not finish; see {worker.log_path}")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        return {
            "messages": messages,
            "per_s": messages / wall,
            "worker_cpu_ms": (cpu_s(worker_pid) - worker_before) * 1000 / messages,
            "redis_cpu_ms": (cpu_s(redis_service.pid) - redis_before) * 1000 / messages,
            "idle_worker_cpu_pct": idle_pct,
        }
    finally:
        worker.stop()
        redis_service.stop()


def _only_child(pid: int) -> int:
    """Dramatiq's worker process (the main process only supervises it)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


# -- transaction --------------------------------------------------------------------------------


def measure_transaction(transactions: int, database_url: str) -> dict[str, Any]:
    import psycopg
    from sqlalchemy import text

    from domain.db import make_engine, make_sessionmaker
    from domain.settings import load_settings

    sqlalchemy_url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    settings = load_settings({**os.environ, "DATABASE_URL": sqlalchemy_url})

    async def run() -> dict[str, Any]:
        engine = make_engine(settings, pool_size=1)
        sessions = make_sessionmaker(engine)

        async def with_session() -> None:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))
                await session.commit()

        connection = await psycopg.AsyncConnection.connect(database_url)

        async def with_psycopg() -> None:
            await connection.execute("SELECT 1")
            await connection.commit()

        result: dict[str, Any] = {"transactions": transactions}
        for name, once in (("session_cpu_ms", with_session), ("psycopg_cpu_ms", with_psycopg)):
            for _ in range(50):  # warm: connections open, statements prepared
                await once()
            before = time.process_time()
            for _ in range(transactions):
                await once()
            result[name] = (time.process_time() - before) * 1000 / transactions
        await connection.close()
        await engine.dispose()
        return result

    return asyncio.run(run())


# -- report -------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    smtp, hop, tx = results["smtp"], results["dramatiq"], results["transaction"]
    print(f"smtp        {smtp['per_s']:8.0f} emails/s   sender {smtp['sender_cpu_ms']:.2f} ms "
          f"+ sink {smtp['sink_cpu_ms']:.2f} ms CPU per email")  # fmt: skip
    print(f"dramatiq    {hop['per_s']:8.0f} messages/s worker {hop['worker_cpu_ms']:.2f} ms "
          f"+ redis {hop['redis_cpu_ms']:.2f} ms CPU per message; idle worker "
          f"{hop['idle_worker_cpu_pct']:.1f} % of a core")  # fmt: skip
    print(f"transaction session {tx['session_cpu_ms']:.2f} ms, psycopg alone "
          f"{tx['psycopg_cpu_ms']:.2f} ms CPU per SELECT 1 + commit")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    args = parser.parse_args(argv)
    if "bench" not in args.database_url.rsplit("/", 1)[-1]:
        parser.error("the database name must contain 'bench'")
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        log_dir = Path(tmp)
        results = {
            "smtp": measure_smtp(args.emails, log_dir),
            "dramatiq": measure_dramatiq(args.messages, log_dir),
            "transaction": measure_transaction(args.transactions, args.database_url),
        }
    document = {
        "benchmark": "floor",
        "at": datetime.now(UTC).isoformat(),
        "git": git_state(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    print_report(results)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"floor-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {path.relative_to(RESULTS_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
