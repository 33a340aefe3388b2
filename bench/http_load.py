"""HTTP load: creating and listing tickets, next to the same SQL run by pgbench and by a framework
floor app (bench/floor_app.py), one table per number of connections.

    uv run python -m bench.http_load                     # 1, 8, 32 and 128 connections, 10 s
    uv run python -m bench.http_load -c 32 -d 3          # one concurrency, short runs
    uv run python -m bench.http_load --skip pgbench --skip floor --scenario create
    uv run python -m bench.http_load --server-env DB_POOL_SIZE=16
    uv run python -m bench.http_load --service-dir ../before --service-dir .   # before/after

What runs, how each figure is measured and how to read them: bench/README.md, "HTTP load
benchmark". Needs wrk and pgbench (Debian: wrk, postgresql-client).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from bench import floor_app
from bench.common import (
    BENCH_DIR,
    CREATE_PATH,
    HOST,
    RESULTS_DIR,
    ROOT,
    TICKET,
    Monitor,
    Service,
    Stack,
    bin_dir,
    dev_tokens,
    env_pairs,
    flush_redis,
    fmt,
    free_port,
    md_table,
    percentile,
    prepare_database,
    query,
    run_options,
    save_results,
    scan_log,
    service_env,
    wait_for_quiet,
)

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench"
REDIS_URL = "redis://127.0.0.1:6379/13"
CONNECTIONS = [1, 8, 32, 128]
LIST_PATH = "/v1/support/tickets?page=1&per_page=20"
LIST_TICKETS = 120
RATE_LIMIT = 100_000_000  # per user and minute: counted, never reached
CREATE_USER, LIST_USER = floor_app.CREATE_USER, floor_app.LIST_USER
CORES = os.cpu_count() or 1


# -- load generators ------------------------------------------------------------------------------


def run_wrk(port: int, scenario: str, token: str, conns: int, seconds: float) -> dict[str, Any]:
    """wrk with bench/wrk_request.lua for ``seconds``: req/s, latency in ms, errors."""
    create = scenario == "create"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        env = {
            **os.environ,
            "BENCH_METHOD": "POST" if create else "GET",
            "BENCH_TOKEN": token,
            "BENCH_BODY": json.dumps(TICKET) if create else "",
            "BENCH_REPORT": str(report),
        }
        argv = ["wrk", f"-t{min(CORES, conns)}", f"-c{conns}", f"-d{max(1, round(seconds))}s"]
        argv += ["--timeout=10s", f"--script={BENCH_DIR / 'wrk_request.lua'}"]
        argv.append(f"http://{HOST}:{port}{CREATE_PATH if create else LIST_PATH}")
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        raw = json.loads(report.read_text())
    rps, latency = raw["requests"] / (raw["duration_us"] / 1e6), raw["latency_us"]
    return {
        "requests": raw["requests"],
        "rps": round(rps, 1),
        **{f"{k}_ms": latency[k] / 1000 for k in ("p50", "p90", "p99", "p999", "max", "mean")},
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
        # Little's law: requests in flight on average. Well below the connections means the
        # server left some connections waiting (e.g. held them unaccepted).
        "busy_connections": round(rps * latency["mean"] / 1e6, 1),
    }


def pgbench_clients(database_url: str, wanted: int) -> int:
    """As many clients as connections, or as PostgreSQL still accepts if fewer (each is a server
    connection, while an app serves any number of HTTP connections from its pool), 2 spare."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    return max(1, min(wanted, (int(row[0]) if row else wanted) - 2))


def run_pgbench(database_url: str, scenario: str, clients: int, seconds: float) -> dict[str, Any]:
    """pgbench with bench/pgbench_<scenario>.sql; tps, and latency from its per-transaction log."""
    defines = {"user": LIST_USER}
    if scenario == "create":
        defines = {"user": CREATE_USER, **{k: v for k, v in TICKET.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["pgbench", "--no-vacuum", f"--client={clients}", f"--jobs={min(CORES, clients)}"]
        argv += [f"--time={max(1, round(seconds))}", "--protocol=prepared", "--log"]
        argv += [f"--log-prefix={tmp}/txn", f"--file={BENCH_DIR / f'pgbench_{scenario}.sql'}"]
        argv += [f"--define={name}={value}" for name, value in defines.items()]
        done = subprocess.run([*argv, database_url], check=False, capture_output=True, text=True)
        latencies = sorted(
            int(line.split()[2]) / 1000
            for path in Path(tmp).iterdir()
            for line in path.read_text().splitlines()
            if line.strip()
        )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if done.returncode or tps is None:
        return {"error": (done.stderr or done.stdout).strip()[-500:]}
    return {
        "transactions": len(latencies),
        "rps": round(float(tps.group(1)), 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "clients": clients,
    }


# -- what is measured -----------------------------------------------------------------------------

Runner = Callable[[float], dict[str, Any]]
GRANIAN = "--interface asgi --runtime-mode mt --loop uvloop --http 1 --no-ws --log-level warning"


@dataclass
class Target:
    """The floor app, or the service of one checkout, with its database and tokens."""

    name: str
    root: Path
    database_url: str
    tokens: dict[str, str]

    def start(self, args: argparse.Namespace, log_dir: Path) -> Service:
        port = free_port()
        if self.name == "floor":
            argv = [str(bin_dir() / "granian"), *GRANIAN.split(), "--workers", str(args.workers)]
            argv += ["--host", HOST, "--port", str(port), "bench.floor_app:app"]
            env = {**os.environ, "FLOOR_DATABASE_URL": self.database_url}
            ready = f"http://{HOST}:{port}{LIST_PATH}"
            floor = Service("floor", argv, env, log_dir / "floor.log", ready_url=ready, port=port)
            return floor.start().wait_ready()
        env = service_env(
            self.database_url,
            args.redis_url,
            root=self.root,
            PORT=port,
            RATE_LIMIT_PER_MINUTE=RATE_LIMIT,
            **args.server_env,
        )
        web = Stack(env, log_dir, self.root).start("web", web_args=["--workers", str(args.workers)])
        for _ in range(LIST_TICKETS - count_tickets(self.database_url, LIST_USER)):
            post_ticket(port, self.tokens["list"])  # through its own API: its own rows
        return web["web"]


def count_tickets(database_url: str, user: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM tickets WHERE user_id = %s", user)[0][0])


def post_ticket(port: int, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"http://{HOST}:{port}{CREATE_PATH}"
    with urllib.request.urlopen(
        urllib.request.Request(url, json.dumps(TICKET).encode(), headers), timeout=60
    ) as response:
        if response.status != 201:
            raise SystemExit(f"seeding failed: POST answered {response.status}")


def seed_by_sql(database_url: str) -> None:
    """The list user's tickets in the database of pgbench, the floor and this checkout's
    service, written with the floor's statement."""
    data = floor_app.CreateTicket(**TICKET)  # type: ignore[arg-type]
    with psycopg.connect(database_url) as conn:
        for _ in range(LIST_TICKETS - count_tickets(database_url, LIST_USER)):
            conn.execute(floor_app.INSERT_CREATED, floor_app.create_params(data, LIST_USER))


def measure(
    args: argparse.Namespace, database_url: str, pid: int | None, run: Runner
) -> dict[str, Any]:
    """ANALYZE, a quiet machine, a warm-up, then ``--duration`` s with the CPU each part used
    per request; while other processes took more than ``--max-other`` % of a core, again (up to
    ``--attempts`` times), keeping the least disturbed result."""
    best: dict[str, Any] = {}
    for attempt in range(1, args.attempts + 1):
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE tickets, messages, ticket_events")
        idle = wait_for_quiet(args.quiet_below, args.quiet_timeout)
        if args.warmup > 0:
            run(args.warmup)
        monitor = Monitor({"app": pid} if pid else {}, database_url)
        monitor.start()
        result = run(args.duration)
        cpu = monitor.finish()
        done = result.get("requests") or result.get("transactions") or 0
        per = {f"{role}_ms": round(1000 * s / done, 3) for role, s in cpu["cpu_s"].items()}
        total_s = sum(cpu["cpu_s"].values()) / done if done else 0
        per["cpu_bound_rate"] = round(CORES / total_s, 1) if total_s else 0.0
        other = cpu["cpu_pct"]["other"]
        result |= {"cpu_pct": cpu["cpu_pct"], "cpu_other_processes": cpu["other_processes"]}
        result |= {"cpu_per_request": per, "machine_busy_pct_before": idle, "attempts": attempt}
        if not best or other < best["cpu_pct"]["other"]:
            best = result
        if other <= args.max_other or "error" in result or attempt == args.attempts:
            break
        print(f"  other processes used {other:.0f}% of a core; again", flush=True)
    best["disturbed"] = best["cpu_pct"]["other"] > args.max_other
    return best


def measure_all(args: argparse.Namespace, targets: list[Target], log_root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for conns in args.connections:
        row: dict[str, dict[str, Any]] = {scenario: {} for scenario in args.scenario}
        results[str(conns)] = row
        if "pgbench" not in args.skip:
            clients = pgbench_clients(args.database_url, conns)
            for scenario in args.scenario:
                print(f"pgbench {scenario}: {clients} clients", flush=True)
                row[scenario]["pgbench"] = measure(
                    args,
                    args.database_url,
                    None,
                    partial(run_pgbench, args.database_url, scenario, clients),
                )
        for target in targets:
            log_dir = log_root / f"{target.name}-c{conns}"
            log_dir.mkdir()
            server = target.start(args, log_dir)
            try:
                for scenario in args.scenario:
                    print(f"{target.name} {scenario}: {conns} connections", flush=True)
                    created = count_tickets(target.database_url, CREATE_USER)
                    token = target.tokens.get(scenario, "")
                    result = measure(
                        args,
                        target.database_url,
                        server.pid,
                        partial(run_wrk, server.port, scenario, token, conns),
                    )
                    if scenario == "create":
                        created = count_tickets(target.database_url, CREATE_USER) - created
                        result["rows_created"] = created
                    if result["busy_connections"] < 0.8 * conns:
                        print(f"  only {result['busy_connections']:.0f} connections were busy")
                    row[scenario][target.name] = result
            finally:
                server.stop()
                flush_redis(args.redis_url)
            scan = scan_log(server.output())
            for scenario in args.scenario:
                row[scenario][target.name]["log_errors"] = scan.error_lines[:5]
                row[scenario][target.name]["log_warnings"] = scan.warnings
            if scan.error_lines:
                print(f"  {len(scan.error_lines)} error lines: {scan.error_lines[0]}")
        for cells in row.values():
            cells["ratios"] = ratios(cells)
        print("\n".join(tables({str(conns): row})), flush=True)
    return results


def ratios(cells: dict[str, Any]) -> dict[str, float]:
    """service/floor, service/pgbench and floor/pgbench (req/s over req/s or tps)."""
    rate = {name: cell.get("rps") for name, cell in cells.items() if name != "ratios"}
    return {
        f"{name}/{base}": round(rate[name] / rate[base], 3)
        for name in rate
        for base in ("floor", "pgbench")
        if name not in ("pgbench", base) and rate[name] and rate.get(base)
    }


def tables(results: dict[str, Any]) -> list[str]:
    """One markdown table per number of connections: a row per scenario and service."""
    lines: list[str] = []
    header = ["scenario", "service", "pgbench tps", "floor req/s", "service req/s"]
    header += ["service / floor", "service / pgbench", "floor / pgbench"]
    header += ["pgbench p50 / p99 ms", "floor p50 / p99 ms", "service p50 / p99 ms"]
    for conns, row in results.items():
        body = []
        for scenario, cells in row.items():
            pg, floor, r = cells.get("pgbench", {}), cells.get("floor", {}), cells["ratios"]
            for name in [n for n in cells if n.startswith("service")] or ["service"]:
                svc = cells.get(name, {})
                rates = [rate(pg), rate(floor), rate(svc)]
                shares = [r.get(f"{name}/floor"), r.get(f"{name}/pgbench"), r.get("floor/pgbench")]
                shares = [f"{share:.2f}" if share else "-" for share in shares]
                body.append([scenario, name, *rates, *shares, lat(pg), lat(floor), lat(svc)])
        clients = {c.get("pgbench", {}).get("clients") for c in row.values()} - {None, int(conns)}
        note = f" (pgbench: {min(clients)} clients, what PostgreSQL accepted)" if clients else ""
        lines += ["", f"**{conns} connections**{note}", "", *md_table(header, body)]
    return lines


def rate(cell: dict[str, Any]) -> str:
    if "error" in cell:
        return "failed"
    return f"{cell['rps']:,.0f}" + ("*" if cell.get("disturbed") else "") if "rps" in cell else "-"


def lat(cell: dict[str, Any]) -> str:
    return f"{fmt(cell.get('p50_ms'))} / {fmt(cell.get('p99_ms'))}" if "p50_ms" in cell else "-"


# -- the run --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http_load", description=__doc__)
    run_options(parser, DATABASE_URL, quiet_below=25.0, quiet_timeout=120.0)
    add = parser.add_argument
    add("-c", "--connections", type=int, action="append", help="repeatable (default 1 8 32 128)")
    add("-d", "--duration", type=float, default=10.0, help="seconds per measurement")
    add("--warmup", type=float, default=3.0, help="seconds of warm-up before each")
    add("--scenario", action="append", choices=["create", "list"], help="repeatable (default both)")
    add("--skip", action="append", default=[], choices=["pgbench", "floor", "service"])
    add("--service-dir", action="append", type=Path, help="checkout to measure (repeatable)")
    add("--workers", type=int, default=CORES, help="server processes (floor and service)")
    add("--server-env", action="append", default=[], help="NAME=VALUE for the service")
    add("--redis-url", default=REDIS_URL, help="the service's broker and rate limit (flushed)")
    add("--max-other", type=float, default=30.0, help="disturbed: others used this %% of a core")
    add("--attempts", type=int, default=3, help="most measurements of one figure")
    args = parser.parse_args(argv)
    args.connections = args.connections or CONNECTIONS
    args.scenario = args.scenario or ["create", "list"]
    args.service_dir = [path.resolve() for path in args.service_dir or [ROOT]]
    args.server_env = env_pairs(parser, args.server_env)
    return args


def targets(args: argparse.Namespace) -> list[Target]:
    """The floor, then each checkout's service with its database (created, migrated, emptied)
    and tokens signed with its development key."""
    found = [] if "floor" in args.skip else [Target("floor", ROOT, args.database_url, {})]
    for root in [] if "service" in args.skip else args.service_dir:
        name, url = "service", args.database_url
        if root != ROOT:
            name, url = (
                f"service@{root.name}",
                args.database_url + "_" + re.sub(r"\W", "_", root.name),
            )
            prepare_database(url, root=root)
        tokens = dev_tokens([CREATE_USER, LIST_USER], root)
        found.append(Target(name, root, url, {"create": tokens[0], "list": tokens[1]}))
    return found


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "pgbench"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: wrk, postgresql-client)")
    # Stop the servers on SIGTERM, and on SIGINT even when started with it ignored.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    lock = open(RESULTS_DIR / ".http_load.lock", "w")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another http_load run is in progress (same databases, Redis); waiting")
        fcntl.flock(lock, fcntl.LOCK_EX)
    prepare_database(args.database_url)
    seed_by_sql(args.database_url)
    measured = targets(args)
    flush_redis(args.redis_url)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as log_root:
        results = measure_all(args, measured, Path(log_root))
    config = {k: v for k, v in vars(args).items() if k != "service_dir"}
    config["services"] = {t.name: str(t.root) for t in measured if t.name != "floor"}
    save_results("http_load", {"config": config, "results": results}, args.label)
    print("\n".join(tables(results)))
    print("\n* other processes took more than --max-other of a core during the measurement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
