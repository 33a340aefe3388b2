"""Every benchmark in one run (`make bench`): writes docs/benchmarks.md and PNG plots in docs/img/.

    uv run python -m bench.run_all            # the full suite (about 30 minutes)
    uv run python -m bench.run_all --quick    # shorter runs, same report (about 10 minutes)
    uv run python -m bench.run_all --report-from all20261130T084807   # rebuild the page

One after another: bench.http_load, bench.pipeline (steady rates up to saturation, then the
drain), bench.timers, then the resident memory of the API's and the workers' processes after a
create load. Rerunning one measurement of a run: bench/README.md. Figures are reported, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    ROOT,
    Sink,
    Stack,
    descendants,
    dev_tokens,
    flush_redis,
    free_port,
    git_state,
    mail_settings,
    md_table,
    newest_result,
    prepare_database,
    proc_table,
    rss_mb,
    service_env,
)

DOCS, IMG = ROOT / "docs", ROOT / "docs" / "img"
PIPELINE_RATES = (50, 100, 200, 400)


def run(module: str, *args: Any) -> None:
    """``python -m module args``, each argument split on spaces."""
    argv = [sys.executable, "-m", module, *" ".join(map(str, args)).split()]
    print("$", " ".join(argv[1:]), flush=True)
    subprocess.run(argv, cwd=ROOT, check=False)


def ensure_tools() -> None:
    """wrk and pgbench come from the system's packages; install them when missing."""
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        packages = ["wrk" if tool == "wrk" else "postgresql-client" for tool in missing]
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False)


def pipeline_runs(
    stamp: str, seconds_per_rate: float, quiet: list[str], measure: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"rates": {}, "drain": None}
    for rate in PIPELINE_RATES:
        if measure:
            tickets, warmup = int(rate * seconds_per_rate), max(20, rate)
            flags = f"--phase latency --rate {rate} --tickets {tickets} --warmup {warmup}"
            run("bench.pipeline", flags, "--label", f"{stamp}-r{rate}", *quiet)
        latency = (
            (newest_result("pipeline", f"{stamp}-r{rate}") or {}).get("results", {}).get("latency")
        )
        if latency and "latency" in latency:
            out["rates"][rate] = latency
            if latency["achieved_rate"] < 0.8 * rate or not latency["all_arrived"]:
                break  # saturated: higher rates only measure the queue
    if measure:
        run("bench.pipeline", "--phase", "drain", "--label", f"{stamp}-drain", *quiet)
    out["drain"] = (
        (newest_result("pipeline", f"{stamp}-drain") or {}).get("results", {}).get("drain")
    )
    return out


def measure_memory(seconds: int = 15, connections: int = 32) -> dict[str, float]:
    """RSS of the largest API worker process and of each worker pool's largest process, 10 s
    after a create load (the events and notifications pools, one process each, draining it)."""
    from bench.http_load import run_wrk

    database_url = "postgresql://root@127.0.0.1:5432/helpdesk_bench_memory"
    redis_url = "redis://127.0.0.1:6379/11"
    prepare_database(database_url)
    flush_redis(redis_url)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        sink = Sink.start(tmp_path := Path(tmp))
        mail = mail_settings(sink.port, "team@bench.test")
        env = service_env(
            database_url, redis_url, PORT=free_port(), NOTIFICATION_PROCESSES=1, **mail
        )
        stack = Stack(env, tmp_path)
        try:
            stack.start("web", "events", "notifications")
            run_wrk(stack["web"].port, "create", dev_tokens(["memory"])[0], connections, seconds)
            time.sleep(10)  # let the workers drain what the load queued
            table = proc_table()
            children = {
                pid: [c for c, (ppid, _, _) in table.items() if ppid == pid] for pid in table
            }
            largest = {}
            for name, label in (
                ("web", "API server process (largest granian worker)"),
                ("events", "events worker process (dramatiq)"),
                ("notifications", "notifications worker process (dramatiq)"),
            ):
                main = stack[name].pid
                # Granian's workers are its leaf processes; dramatiq's, its main process's children.
                tree = descendants(main, table)
                pids = [p for p in tree if not children[p]] if name == "web" else children[main]
                largest[label] = max(rss_mb([p]) for p in pids or [main])
            return largest
        finally:
            stack.stop()
            sink.stop()
            flush_redis(redis_url)


# -- report ---------------------------------------------------------------------------------------


def plots(http: dict[str, Any], pipeline: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(IMG / name, dpi=110)
        plt.close(fig)
        made.append(f"img/{name}")

    if counts := sorted(int(c) for c in http):
        fig, (rates, latency) = plt.subplots(1, 2, figsize=(11, 4))
        for scenario, marker in (("create", "o"), ("list", "s")):
            for name, style in (("service", "-"), ("floor", "--"), ("pgbench", ":")):
                points = [(c, http[str(c)].get(scenario, {}).get(name, {})) for c in counts]
                points = [(c, cell) for c, cell in points if "rps" in cell]
                for ax, key, suffix in ((rates, "rps", ""), (latency, "p99_ms", " p99")):
                    if ax is rates or name != "pgbench":
                        xs, ys = [c for c, _ in points], [cell[key] for _, cell in points]
                        label = f"{scenario}: {name}{suffix}"
                        ax.plot(xs, ys, marker=marker, linestyle=style, label=label)
        for ax, title, unit in (
            (rates, "Throughput", "requests (transactions) / s"),
            (latency, "Latency", "ms"),
        ):
            ax.set(xlabel="concurrent connections", ylabel=unit, title=title)
            ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "http.png")
    if rates_run := sorted(pipeline["rates"]):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for key, style in (("p50_ms", "o-"), ("p99_ms", "s-"), ("max_ms", "^:")):
            values = [pipeline["rates"][r]["latency"][key] for r in rates_run]
            ax.plot(rates_run, values, style, label=key.removesuffix("_ms"))
        ax.axhline(250, color="grey", linestyle="--", linewidth=1, label="p99 target 250 ms")
        ax.set(
            xlabel="offered load, new tickets / s",
            ylabel="commit -> SMTP accepted, ms",
            yscale="log",
            title="Notification latency against offered load",
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "pipeline.png")
    return made


def flat(values: dict[str, Any] | None) -> list[str]:
    """The figures (not the nested ones) as a JSON block."""
    plain = {k: v for k, v in (values or {}).items() if not isinstance(v, dict | list)}
    return ["```", json.dumps(plain, indent=2, default=str), "```"]


def write_report(
    stamp: str,
    http: dict[str, Any],
    pipeline: dict[str, Any],
    timers: dict[str, Any] | None,
    memory: dict[str, float],
    made: list[str],
    minutes: float | None,
) -> None:
    from bench.http_load import LIST_TICKETS, tables

    commit = git_state()["commit"][:7]
    took = (
        f", which took {minutes:.0f} minutes."
        if minutes is not None
        else (" (this page rebuilt from its saved results with `--report-from`).")
    )
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`uv run python -m bench.run_all`) at commit `{commit}` on this "
        f"project's reference machine: {os.cpu_count()} cores, PostgreSQL, Redis, the load "
        "generators and every service process on the same host. Absolute numbers depend on the "
        "machine; the ratios and the shape of the curves are what to compare. Each section says "
        f"how it was measured. Results of run `{stamp}`{took}",
        "",
        "Missed targets, their profiles and the before/after of each fix are in",
        "[profiling.md](profiling.md).",
        "",
        "## Create and list over HTTP, next to the framework floor and pgbench",
        "",
        "`bench/http_load.py`: wrk drives `POST /v1/support/tickets` (create) and",
        f"`GET /v1/support/tickets?page=1&per_page=20` (list, a user with {LIST_TICKETS} tickets)",
        "at a fixed number of connections for a fixed time after a warm-up, against `helpdesk",
        "serve` with every layer on (token check, rate limit counted in Redis, access log, events",
        "published to Redis) and against the framework floor (`bench/floor_app.py`: Litestar on",
        "Granian, msgspec, an async psycopg pool, the same SQL, nothing else). pgbench runs the",
        "same SQL at the same concurrency (with fewer clients when PostgreSQL would refuse that",
        "many: an app serves every HTTP connection from its small pool). `*`: other processes took",
        "more",
        "than 30 % of a core during the measurement.",
        *tables(http),
    ]
    if "img/http.png" in made:
        lines += ["", "![HTTP throughput and latency](img/http.png)"]
    header = ["offered tickets/s", "achieved", "emails", "p50 ms", "p99 ms", "max ms"]
    rates = [
        [rate, r["achieved_rate"], r["emails_received"]]
        + [r["latency"].get(key) for key in ("p50_ms", "p99_ms", "max_ms")]
        + [r["all_arrived"]]
        for rate, r in sorted(pipeline["rates"].items())
    ]
    lines += [
        "",
        "## Notification pipeline",
        "",
        "`bench/pipeline.py`: the API, the worker pools exactly as in the `Procfile` and the",
        "scheduler; an open-loop generator creates tickets at a steady rate and an SMTP server",
        "in its own process records when it accepts each email. Latency = SMTP accept time minus",
        "the commit time of the ticket's event. Target: p99 <= 250 ms at 200 tickets/s.",
        "",
        *md_table([*header, "all arrived"], rates),
    ]
    if "img/pipeline.png" in made:
        lines += ["", "![Latency against offered load](img/pipeline.png)"]
    lines += [
        "",
        "Drain: a backlog of events (several team addresses each) is created with the workers",
        "stopped, then the Procfile's pools start and the rate at which the SMTP server accepts",
        "the notifications is measured. Target: >= 1,000 notifications/s.",
        "",
        *flat(pipeline.get("drain")),
        "",
        "## Timers",
        "",
    ]
    if timers:
        sla, late = timers.get("sla", {}), timers.get("sla", {}).get("lateness", {})
        twice = (sla.get("breach_events") or 0) - (sla.get("breach_events_distinct_tickets") or 0)
        row = [sla.get("timers"), sla.get("fired"), twice]
        row += [late.get(key) for key in ("p50_ms", "p99_ms", "max_ms")]
        lines += [
            "`bench/timers.py`: 1,000 urgent tickets whose deadlines fall within one minute, with",
            "the Procfile's pools and the scheduler; lateness = `sla_breached_at - sla_due_at`.",
            "Target: p99 <= 1 s.",
            "",
            *md_table(["timers", "fired", "fired twice", "p50 ms", "p99 ms", "max ms"], [row]),
            "",
            "Auto-close of due resolved tickets by the real actor (bounded batches, SKIP LOCKED);",
            "target <= 60 s for 100,000:",
            "",
            *flat(timers.get("close", {})),
        ]
    else:
        lines.append("(the timers benchmark did not produce results in this run)")
    lines += [
        "",
        "## Memory after load",
        "",
        "Resident set size (VmRSS) 10 s after a 15 s create load at 32 connections:",
        "",
    ]
    lines += [f"- {name}: {mb:.0f} MB" for name, mb in memory.items()] or ["- (not measured)"]
    lines += ["", "Raw JSON of every run is in `bench/results/` (not committed).", ""]
    page = DOCS / "benchmarks.md"
    # Sections other benchmarks append to the page (after this one's last) stay.
    old = page.read_text() if page.exists() else ""
    marker = "\n## Memory after load"
    appended = old.split(marker, 1)[1].split("\n## ", 1)[1:] if marker in old else []
    page.write_text("\n".join(lines) + "".join(f"\n## {section}" for section in appended))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--report-from", metavar="STAMP", help="rebuild the page from an earlier run"
    )
    args = parser.parse_args()
    started = time.time()
    stamp = args.report_from or time.strftime("all%Y%m%dT%H%M%S")
    measure = not args.report_from
    IMG.mkdir(parents=True, exist_ok=True)
    # --quick: shorter measurements, one attempt each, little waiting for a quiet machine.
    quiet = ["--quiet-timeout", "5"] if args.quick else []
    if measure:
        ensure_tools()
        duration = ["-d", "5", "--attempts", "1"] if args.quick else []
        run("bench.http_load", "--label", f"{stamp}-http", *duration, *quiet)
    http = (newest_result("http_load", f"{stamp}-http") or {}).get("results", {})
    pipeline = pipeline_runs(stamp, 5 if args.quick else 10, quiet, measure)
    if measure:
        tickets = 20_000 if args.quick else 100_000
        run("bench.timers", "--tickets", tickets, "--tag", f"{stamp}-timers", *quiet)
    timers = newest_result("timers", f"{stamp}-timers")
    saved = RESULTS_DIR / f"memory-{stamp}.json"  # kept with the run's results for --report-from
    if measure:
        saved.write_text(json.dumps(measure_memory(), indent=2))
    memory = json.loads(saved.read_text()) if saved.exists() else {}
    made = plots(http, pipeline)
    write_report(
        stamp,
        http,
        pipeline,
        timers,
        memory,
        made,
        None if args.report_from else (time.time() - started) / 60,
    )
    print(f"wrote {DOCS / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
