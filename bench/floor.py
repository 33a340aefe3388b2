"""Ceilings: what this machine does for each part of the notification pipeline on its own
(smtp: the workers' SMTP channel to the sink; dramatiq: a do-nothing actor, bench/floor_actor.py;
transaction: SELECT 1 and a commit through a session and through psycopg alone).

    uv run python -m bench.floor [--emails 5000] [--messages 3000] [--transactions 2000]

Prints a table and writes JSON to bench/results/. See bench/PIPELINE.md ("Ceilings").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import HOST, Service, Sink, cpu_s, prepare_database, save_results, start_redis

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_pipeline"


def measure_smtp(emails: int, log_dir: Path) -> dict[str, Any]:
    from domain.settings import load_settings
    from tests.notices import sample_notice
    from workers.channels.email import MAX_CONNECTIONS, SmtpChannel

    sink = Sink.start(log_dir)
    try:
        env = {**os.environ, "SMTP_HOST": HOST, "SMTP_PORT": str(sink.port), "ADMIN_EMAILS": ""}
        channel = SmtpChannel(load_settings(env))

        async def send_all() -> tuple[float, float, float]:
            slots = asyncio.Semaphore(MAX_CONNECTIONS)

            async def one(i: int) -> None:
                async with slots:
                    notice = sample_notice(
                        event_id=f"floor-{i}", recipient=f"agent{i % 4}@support.test"
                    )
                    await channel.send(notice)

            await asyncio.gather(*(one(i) for i in range(MAX_CONNECTIONS)))  # connections open
            sink_before = cpu_s(sink.service.pid)
            started, cpu_before = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(emails)))
            wall, client_cpu = time.perf_counter() - started, time.process_time() - cpu_before
            await channel.close()
            return wall, client_cpu, cpu_s(sink.service.pid) - sink_before

        wall, client_cpu, sink_cpu = asyncio.run(send_all())
        if not sink.wait_for(emails + MAX_CONNECTIONS, timeout=30):
            raise SystemExit(f"the sink got {sink.poll()} of {emails + MAX_CONNECTIONS} emails")
    finally:
        sink.stop()
    return {
        "emails": emails,
        "per_s": emails / wall,
        "sender_cpu_ms": client_cpu * 1000 / emails,
        "sink_cpu_ms": sink_cpu * 1000 / emails,
    }


def measure_dramatiq(messages: int, log_dir: Path) -> dict[str, Any]:
    import redis

    redis_service = start_redis(log_dir)
    os.environ["FLOOR_REDIS_URL"] = url = f"redis://{HOST}:{redis_service.port}/0"
    env = dict(os.environ)
    argv = [sys.executable, "-m", "dramatiq", "bench.floor_actor", "-p", "1", "-t", "8"]
    worker = Service(
        "floor-worker", argv, env, log_dir / "floor-worker.log", ready_text="ready for action"
    )
    client = redis.Redis.from_url(url)
    try:
        worker.start().wait_ready(60)
        worker_pid = int(
            Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0]
        )
        from bench import floor_actor

        time.sleep(2)  # past the worker's start-up
        idle_before = cpu_s(worker_pid)
        time.sleep(3)
        idle_pct = (cpu_s(worker_pid) - idle_before) / 3 * 100
        worker_before, redis_before = cpu_s(worker_pid), cpu_s(redis_service.pid)
        started = time.perf_counter()
        for i in range(messages):
            floor_actor.nothing.send(i)
        while int(client.get(floor_actor.DONE_KEY) or 0) < messages:
            if time.perf_counter() > started + 120:
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
        connection = await psycopg.AsyncConnection.connect(database_url)

        async def with_session() -> None:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))
                await session.commit()

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--emails", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--database-url", default=DATABASE_URL)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        smtp = measure_smtp(args.emails, Path(tmp))
        hop = measure_dramatiq(args.messages, Path(tmp))
    prepare_database(args.database_url)  # created and migrated if missing, emptied otherwise
    tx = measure_transaction(args.transactions, args.database_url)
    print(
        f"smtp        {smtp['per_s']:8.0f} emails/s   sender {smtp['sender_cpu_ms']:.2f} ms "
        f"+ sink {smtp['sink_cpu_ms']:.2f} ms CPU per email"
    )
    print(
        f"dramatiq    {hop['per_s']:8.0f} messages/s worker {hop['worker_cpu_ms']:.2f} ms "
        f"+ redis {hop['redis_cpu_ms']:.2f} ms CPU per message; idle worker "
        f"{hop['idle_worker_cpu_pct']:.1f} % of a core"
    )
    print(
        f"transaction session {tx['session_cpu_ms']:.2f} ms, psycopg alone "
        f"{tx['psycopg_cpu_ms']:.2f} ms CPU per SELECT 1 + commit"
    )
    save_results("floor", {"results": {"smtp": smtp, "dramatiq": hop, "transaction": tx}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
