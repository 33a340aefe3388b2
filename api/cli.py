"""The ``helpdesk`` command: mint development tokens, prepare the database, serve the API."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jwt
import psycopg
from psycopg import sql

from domain.devkey import ensure_dev_keypair
from domain.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def cmd_token(args: argparse.Namespace) -> int:
    """Print a development token signed with the local dev key (valid when APP_ENV=development)."""
    private_pem, _ = ensure_dev_keypair()
    now = int(time.time())
    claims: dict[str, object] = {"sub": args.sub, "iat": now, "exp": now + args.ttl}
    if args.admin:
        claims["role"] = load_settings().jwt_admin_role
    if args.email:
        claims["email"] = args.email
    settings = load_settings()
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    print(jwt.encode(claims, private_pem, algorithm="RS256"))
    return 0


def ensure_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` if it does not exist. True if created."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.get("dbname") or info.get("user") or "postgres"
    info["dbname"] = "postgres"
    with psycopg.connect(**info, autocommit=True, connect_timeout=5) as conn:  # type: ignore[arg-type]
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        return True


def migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.cmd_opts = argparse.Namespace(x=[f"url={database_url}"])
    command.upgrade(config, "head")


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    if ensure_database(settings.database_url):
        print(
            f"created database {psycopg.conninfo.conninfo_to_dict(settings.database_url)['dbname']}"
        )
    migrate(settings.database_url)
    print("database is at the latest migration")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    """Fill the database with example tickets (for a newcomer's first look)."""
    import asyncio

    from domain.db import make_engine, make_sessionmaker
    from domain.policies import time_policy
    from domain.seed import seed
    from domain.tickets import TicketService

    settings = load_settings()

    async def run() -> int:
        engine = make_engine(settings, pool_size=2)
        try:
            policy = time_policy(settings)
            ids = await seed(make_sessionmaker(engine), TicketService(policy), tickets=args.tickets)
        finally:
            await engine.dispose()
        return len(ids)

    count = asyncio.run(run())
    print(f"created {count} example tickets (users demo-user-1..6, agents demo-agent-1..2)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API under Granian (replaces this process, so signals reach the server directly)."""
    settings = load_settings()
    from api.auth import TokenVerifier

    TokenVerifier(settings)  # fail here, with a clear message, if no token key is configured
    workers = args.workers or int(os.environ.get("API_WORKERS", "0") or 0) or (os.cpu_count() or 1)
    # uvloop (a dependency except on Windows) costs 10-20 % less CPU per request than asyncio
    # (bench/http_load.py). GRANIAN_LOOP overrides it; other GRANIAN_* variables set the options
    # not given below. Also measured (wrk, 32 connections, docs/profiling.md section 8), left at
    # Granian's defaults: --runtime-mode st against mt (what auto picks for ASGI) and --http 1
    # against auto made no difference beyond noise; --task-impl rust broke anyio's cancel scopes
    # (500s); GRANIAN_BACKPRESSURE starved connections (section 3).
    os.environ.setdefault("GRANIAN_LOOP", "uvloop" if _has_uvloop() else "asyncio")
    # Every server process writes its metric samples here; /metrics, whichever process answers
    # it, reports the sum (api/metrics.py). Emptied at each start.
    from api.metrics import prepare_multiprocess_dir

    metrics_root = Path(os.environ.get("METRICS_DIR") or tempfile.gettempdir())
    prepare_multiprocess_dir(metrics_root / f"helpdesk-api-{settings.port}")
    argv = [
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        args.host,
        "--port",
        str(settings.port),
        "--workers",
        str(workers),
        "--no-ws",
        "--log-level",
        "warning",
        "api.app:create_app",
    ]
    os.execvp(argv[0], argv)


def cmd_status(args: argparse.Namespace) -> int:
    """Queue depths, outbox lag, failed deliveries, next SLA deadlines, live processes."""
    import redis

    from api.status_report import gather, render

    try:
        data = gather(load_settings(), deadlines=args.deadlines)
    except redis.RedisError as exc:
        print(f"cannot reach Redis: {exc}", file=sys.stderr)
        return 3
    print(render(data, as_json=args.json))
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    """Serve the scaling and alerting signals for Prometheus (runs until stopped)."""
    from domain.logging import configure_logging
    from workers.exporter import serve

    settings = load_settings()
    configure_logging(settings)
    serve(settings, host=args.host, port=args.port)
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helpdesk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    token = sub.add_parser("token", help="mint a development token")
    token.add_argument("--sub", required=True, help="user id (the token's subject)")
    token.add_argument("--admin", action="store_true", help="give the token the admin role")
    token.add_argument("--email", help="email claim (where the user gets replies)")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    mig = sub.add_parser("migrate", help="create the database if missing and apply migrations")
    mig.set_defaults(func=cmd_migrate)

    seed = sub.add_parser("seed", help="fill the database with example tickets")
    seed.add_argument("--tickets", type=int, default=36, help="how many (default 36)")
    seed.set_defaults(func=cmd_seed)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--workers", type=int, default=0, help="server processes (default: cores)")
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="queues, outbox lag, failures, SLA, live processes")
    status.add_argument("--json", action="store_true", help="print JSON instead of a screen")
    status.add_argument("--deadlines", type=int, default=5, help="next SLA deadlines to show")
    status.set_defaults(func=cmd_status)

    exporter = sub.add_parser("exporter", help="serve queue depths, outbox lag etc. to Prometheus")
    exporter.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    exporter.add_argument(
        "--port", type=int, default=int(os.environ.get("EXPORTER_PORT", "9200") or 9200)
    )
    exporter.set_defaults(func=cmd_exporter)

    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"cannot reach PostgreSQL: {exc}".strip(), file=sys.stderr)
        return 3
    return result


if __name__ == "__main__":
    sys.exit(main())
