"""Every benchmark in one run (`make bench`): writes docs/benchmarks.md and PNG plots in docs/img/.

    uv run python -m bench.run_all            # the full suite (about 25 minutes)
    uv run python -m bench.run_all --quick    # shorter runs, same report (about 10 minutes)

It runs, one after another so they do not disturb each other:
1. bench.http_load: create and list over HTTP at 1, 8, 32 and 128 connections, each next to
   pgbench running the same SQL on the same PostgreSQL in the same run;
2. bench.pipeline: commit -> SMTP-accepted latency at steady rates up to saturation, and the
   drain rate of a backlog with the Procfile's worker settings;
3. bench.timers: SLA lateness over 1,000 timers, auto-close of 100,000 due tickets;
4. the resident memory of the API's and a worker's processes after a load.
Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.sinks import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
IMG = DOCS / "img"
CONNECTIONS = (1, 8, 32, 128)
PIPELINE_RATES = (50, 100, 200, 400)


def run(module: str, *args: str) -> None:
    argv = [sys.executable, "-m", module, *args]
    print("$", " ".join(argv[1:]), flush=True)
    subprocess.run(argv, cwd=ROOT, check=False)


def newest(prefix: str, label: str) -> dict[str, Any] | None:
    files = sorted(glob.glob(str(RESULTS / f"{prefix}-*-{label}.json")), key=os.path.getmtime)
    if not files:
        return None
    data: dict[str, Any] = json.loads(Path(files[-1]).read_text())
    return data


def ensure_tools() -> None:
    """wrk and pgbench come from the system's packages; install them when missing."""
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        packages = ["wrk" if t == "wrk" else "postgresql-client" for t in missing]
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False)


# -- runs -------------------------------------------------------------------------------------


def http_runs(
    stamp: str, duration: float, patience: list[str], *, measure: bool = True
) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for connections in CONNECTIONS:
        label = f"{stamp}-c{connections}"
        if measure:
            run(
                "bench.http_load",
                "-c",
                str(connections),
                "-d",
                str(duration),
                "--label",
                label,
                "--port",
                str(free_port()),
                *patience,
            )
        doc = newest("http_load", label)
        if doc:
            rows[connections] = doc["results"]
    return rows


def pipeline_runs(
    stamp: str, seconds_per_rate: float, patience: list[str], *, measure: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {"rates": {}, "drain": None}
    for rate in PIPELINE_RATES:
        label = f"{stamp}-r{rate}"
        tickets = str(int(rate * seconds_per_rate))
        if measure:
            run(
                "bench.pipeline",
                "--phase",
                "latency",
                "--rate",
                str(rate),
                "--tickets",
                tickets,
                "--warmup",
                str(max(20, rate)),
                "--label",
                label,
                *patience,
            )
        doc = newest("pipeline", label)
        if doc and "latency" in doc["results"]:
            out["rates"][rate] = doc["results"]["latency"]
            lat = doc["results"]["latency"]
            if lat.get("achieved_rate", rate) < 0.8 * rate or not lat.get("all_arrived", True):
                break  # saturated: higher rates only measure the queue
    label = f"{stamp}-drain"
    if measure:
        run("bench.pipeline", "--phase", "drain", "--label", label, *patience)
    doc = newest("pipeline", label)
    if doc:
        out["drain"] = doc["results"].get("drain")
    return out


def timer_runs(
    stamp: str, tickets: int, patience: list[str], *, measure: bool = True
) -> dict[str, Any] | None:
    if measure:
        run("bench.timers", "--tickets", str(tickets), "--tag", f"{stamp}-timers", *patience)
    return newest("timers", f"{stamp}-timers")


def process_memory(stamp: str, *, measure: bool = True) -> dict[str, float]:
    """RSS of the API's worker processes and of a notifications worker after a create load
    (kept with the run's results, so a report rebuilt from them shows the same figures)."""
    saved = RESULTS / f"memory-{stamp}.json"
    if not measure and saved.exists():
        memory: dict[str, float] = json.loads(saved.read_text())
        return memory
    from bench.memory import measure_memory_after_load

    memory = measure_memory_after_load()
    saved.write_text(json.dumps(memory, indent=2))
    return memory


# -- report -----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def plot_http(rows: dict[int, dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for scenario, marker in (("create", "o"), ("list", "s")):
        xs = [c for c in CONNECTIONS if c in rows and rows[c].get(scenario, {}).get("http")]
        ax1.plot(
            xs,
            [rows[c][scenario]["http"]["rps"] for c in xs],
            marker=marker,
            label=f"{scenario} over HTTP",
        )
        pg = [c for c in xs if (rows[c][scenario].get("pgbench") or {}).get("tps")]
        ax1.plot(
            pg,
            [rows[c][scenario]["pgbench"]["tps"] for c in pg],
            marker=marker,
            linestyle="--",
            label=f"{scenario}: pgbench, same SQL",
        )
        ax2.plot(
            xs,
            [rows[c][scenario]["http"]["p99_ms"] for c in xs],
            marker=marker,
            label=f"{scenario} p99",
        )
        ax2.plot(
            xs,
            [rows[c][scenario]["http"]["p50_ms"] for c in xs],
            marker=marker,
            linestyle=":",
            label=f"{scenario} p50",
        )
    for ax, title, unit in (
        (ax1, "Throughput", "requests (transactions) / s"),
        (ax2, "Latency", "ms"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "http.png", dpi=110)
    plt.close(fig)
    made.append("img/http.png")
    return made


def plot_pipeline(pipeline: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted(pipeline["rates"])
    if not rates:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s-"), ("max_ms", "^:")):
        ax.plot(
            rates,
            [pipeline["rates"][r]["latency"][key] for r in rates],
            style,
            label=key.replace("_ms", ""),
        )
    ax.axhline(250, color="grey", linestyle="--", linewidth=1, label="p99 target 250 ms")
    ax.set_xlabel("offered load, new tickets / s")
    ax.set_ylabel("commit -> SMTP accepted, ms")
    ax.set_yscale("log")
    ax.set_title("Notification latency against offered load")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "pipeline.png", dpi=110)
    plt.close(fig)
    return ["img/pipeline.png"]


def write_report(
    http: dict[int, dict[str, Any]],
    pipeline: dict[str, Any],
    timers: dict[str, Any] | None,
    memory: dict[str, float],
    plots: list[str],
    started: float,
    stamp: str,
    rebuilt: bool,
) -> None:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`uv run python -m bench.run_all`) at commit `{git}` on this "
        f"project's reference machine: {os.cpu_count()} cores, PostgreSQL, Redis, the load "
        "generators and every service process on the same host. Absolute numbers depend on the "
        "machine; the ratios and the shape of the curves are what to compare. Each section says "
        f"how it was measured. Results of run `{stamp}`"
        + (
            " (this page rebuilt from its saved results with `--report-from`, after single "
            "measurements were rerun under the same label)."
            if rebuilt
            else f", which took {(time.time() - started) / 60:.0f} minutes."
        ),
        "",
        "Missed targets, their profiles and the before/after of each fix are in",
        "[profiling.md](profiling.md).",
        "",
        "## Create and list over HTTP, next to pgbench",
        "",
        "`bench/http_load.py`: wrk drives `POST /v1/support/tickets` (create) and",
        "`GET /v1/support/tickets?page=1&per_page=20` (list, a user with 50 tickets) against",
        "`helpdesk serve` for a fixed time after a warm-up. pgbench then runs the same SQL",
        "(create: BEGIN, one INSERT whose CTEs insert the ticket and message, COMMIT; list: the",
        "page query and the count) at the same concurrency",
        "against the same PostgreSQL (with fewer clients when the server's max_connections",
        "would refuse that many: the API serves every HTTP connection from its small pool).",
        "ratio = HTTP req/s / pgbench tps. Targets: create >= 0.6,",
        "list >= 0.4.",
        "",
        "| connections | scenario | HTTP req/s | p50 ms | p99 ms | pgbench tps | pgbench clients "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for connections in CONNECTIONS:
        for scenario in ("create", "list"):
            row = http.get(connections, {}).get(scenario, {})
            h, p = row.get("http") or {}, row.get("pgbench") or {}
            lines.append(
                f"| {connections} | {scenario} | {fmt(h.get('rps'))} | {fmt(h.get('p50_ms'))} | "
                f"{fmt(h.get('p99_ms'))} | {fmt(p.get('tps'))} | {p.get('clients', '-')} | "
                f"{fmt(row.get('ratio'), 2)} |"
            )
    if "img/http.png" in plots:
        lines += ["", "![HTTP throughput and latency](img/http.png)"]

    lines += [
        "",
        "## Notification pipeline",
        "",
        "`bench/pipeline.py`: the API, the worker pools exactly as in the `Procfile` and the",
        "scheduler; an open-loop generator creates tickets at a steady rate and an SMTP server",
        "in its own process records when it accepts each email. Latency = SMTP accept time minus",
        "the commit time of the ticket's event. Target: p99 <= 250 ms at 200 tickets/s.",
        "",
        "| offered tickets/s | achieved | emails | p50 ms | p99 ms | max ms | all arrived |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in sorted(pipeline["rates"]):
        r = pipeline["rates"][rate]
        lat = r.get("latency", {})
        lines.append(
            f"| {rate} | {fmt(r.get('achieved_rate'))} | {r.get('emails_received')} | "
            f"{fmt(lat.get('p50_ms'))} | {fmt(lat.get('p99_ms'))} | {fmt(lat.get('max_ms'))} | "
            f"{r.get('all_arrived')} |"
        )
    if "img/pipeline.png" in plots:
        lines += ["", "![Latency against offered load](img/pipeline.png)"]
    drain = pipeline.get("drain") or {}
    lines += [
        "",
        "Drain: a backlog of events (several team addresses each) is created with the workers",
        "stopped, then the Procfile's pools start and the rate at which the SMTP server accepts",
        "the notifications is measured. Target: >= 1,000 notifications/s.",
        "",
        "```",
        json.dumps({k: v for k, v in drain.items() if not isinstance(v, dict | list)}, indent=2),
        "```",
    ]

    lines += ["", "## Timers", ""]
    if timers:
        sla = timers.get("sla", {})
        close = timers.get("close", timers.get("auto_close", {}))
        late = sla.get("lateness", {})
        lines += [
            "`bench/timers.py`: 1,000 urgent tickets whose deadlines fall within one minute, with",
            "the Procfile's pools and the scheduler; lateness = `sla_breached_at - sla_due_at`.",
            "Target: p99 <= 1 s.",
            "",
            "| timers | fired | fired twice | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|",
            f"| {sla.get('timers')} | {sla.get('fired')} | "
            f"{(sla.get('breach_events') or 0) - (sla.get('breach_events_distinct_tickets') or 0)}"
            f" | {fmt(late.get('p50_ms'))} | {fmt(late.get('p99_ms'))} | "
            f"{fmt(late.get('max_ms'))} |",
            "",
            "Auto-close of due resolved tickets by the real actor (bounded batches, SKIP LOCKED);",
            "target <= 60 s for 100,000:",
            "",
            "```",
            json.dumps(
                {k: v for k, v in close.items() if not isinstance(v, dict | list)},
                indent=2,
                default=str,
            ),
            "```",
        ]
    else:
        lines.append("(the timers benchmark did not produce results in this run)")

    lines += [
        "",
        "## Memory after load",
        "",
        "Resident set size (VmRSS) right after a 15 s create load at 32 connections:",
        "",
    ]
    lines += [f"- {name}: {mb:.0f} MB" for name, mb in memory.items()] or ["- (not measured)"]
    lines += ["", "Raw JSON of every run is in `bench/results/` (not committed).", ""]
    (DOCS / "benchmarks.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--report-from",
        metavar="STAMP",
        help="rebuild the report from the results of an earlier run (e.g. all20261130T084807; "
        "a single measurement can be rerun first with that run's --label)",
    )
    args = parser.parse_args()
    started = time.time()
    stamp = args.report_from or time.strftime("all%Y%m%dT%H%M%S")
    measure = not args.report_from
    RESULTS.mkdir(parents=True, exist_ok=True)
    IMG.mkdir(parents=True, exist_ok=True)
    if measure:
        ensure_tools()

    # --quick: one attempt per measurement and little waiting for a quiet machine.
    http = http_runs(
        stamp,
        5 if args.quick else 10,
        ["--attempts", "1", "--quiet-timeout", "5"] if args.quick else [],
        measure=measure,
    )
    quiet = ["--quiet-timeout", "5"] if args.quick else []
    pipeline = pipeline_runs(stamp, 5 if args.quick else 10, quiet, measure=measure)
    timers = timer_runs(stamp, 20_000 if args.quick else 100_000, quiet, measure=measure)
    memory = process_memory(stamp, measure=measure)
    plots = plot_http(http) + plot_pipeline(pipeline)
    write_report(http, pipeline, timers, memory, plots, started, stamp, rebuilt=not measure)
    print(f"wrote {DOCS / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
