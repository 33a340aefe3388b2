"""``python -m devservices run [options] -- COMMAND...``: run COMMAND with PostgreSQL and Redis
available (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devservices.plan import PROFILES
from devservices.supervisor import Supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devservices", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run a command with PostgreSQL and Redis available")
    run.add_argument(
        "--for",
        dest="profile",
        choices=sorted(PROFILES),
        default="app",
        help="app: DATABASE_URL / REDIS_URL, data kept in the data directory; test: "
        "TEST_DATABASE_URL / TEST_REDIS_URL, data thrown away after the run (default: app)",
    )
    run.add_argument(
        "--data-dir", type=Path, default=Path(".data"), help="where embedded data lives (.data)"
    )
    run.add_argument(
        "--env-file",
        type=Path,
        help="a .env file the command reads (honcho): its URLs count as configured",
    )
    run.add_argument(
        "--write-env",
        type=Path,
        help="write the URLs chosen to this file (for honcho -e .env,FILE, and other terminals)",
    )
    run.add_argument("--default-database-url", help="where to look for PostgreSQL (tests)")
    run.add_argument("--default-redis-url", help="where to look for Redis (tests)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m devservices run -- COMMAND...)")
    return Supervisor(
        profile=PROFILES[args.profile],
        command=command,
        data_dir=args.data_dir,
        env_file=args.env_file,
        write_env=args.write_env,
        default_database_url=args.default_database_url,
        default_redis_url=args.default_redis_url,
    ).run()


if __name__ == "__main__":
    sys.exit(main())
