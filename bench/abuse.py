"""Abuse suite: one misbehaving client must never hurt anyone else.

Runs the real API server (``helpdesk serve``, Granian, 2 processes) on a random loopback port
against a real PostgreSQL database and Redis, and attacks it one case at a time while a
bystander (other, well-behaved users of the same app, ~30 requests/s of ticket lists and some
creates, from a process of its own) is measured. Every case is bounded in count and time.

    uv run python -m bench.abuse                       # every case, full counts (~5 minutes)
    uv run python -m bench.abuse --quick               # every case, small counts (~1 minute)
    uv run python -m bench.abuse --case rate-limit --case bad-tokens

For each case it records what was sent and every answer (by status, or how the connection
ended), the bystander's p50/p99 during the attack against a quiet baseline just before it and
every non-2xx the bystander saw, that nothing was written half-way (tickets without their first
message or created event, messages or events without a ticket) and that tickets grew only by
what 2xx answers said, that the server's memory, PostgreSQL connections and TCP connections came
back to their baseline, that /readyz and a new bystander request answer afterwards, and every
error line or traceback the server logged. A full run of every case writes the "Abuse" section
of docs/reliability.md and bench/results/abuse.json; other runs write
bench/results/abuse-partial.json. ``make faults`` runs it after the fault scenarios.
``tests/test_abuse_live.py`` runs the quick version of every case with assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import re
import secrets
import socket
import struct
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

from bench.common import HOST, RESULTS_DIR, ROOT, free_port, git_state, summary_ms
from bench.faults import flush_redis, fresh_database
from domain.db import pool_capacity
from domain.settings import load_settings
from tests.processes import ApiServer
from tests.tokens import TokenFactory, key_signer, new_rsa_key, public_pem_of

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_abuse"
REDIS_URL = "redis://127.0.0.1:6379/14"
REPORT = ROOT / "docs" / "reliability.md"
SECTION_START = "<!-- abuse:start (written by python -m bench.abuse; edit bench/abuse.py) -->"
SECTION_END = "<!-- abuse:end -->"
TICKETS = "/v1/support/tickets"
ADMIN_TICKETS = "/v1/admin/support/tickets"
RATE_LIMIT_PER_MINUTE = 60
WORKERS = 2
BYSTANDER_USERS = 96  # ~30 req/s over 96 users: ~19 requests per user and minute, limit 60
BYSTANDER_AFTER_S = 1.0  # the bystander goes on this long after each attack
# Memory the server's process tree may keep after a case (allocator arenas, caches) before
# the case counts as not having given its memory back.
RSS_TOLERANCE_MB = 32.0
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """How much of each attack a run sends (``FULL`` for ``make faults``, ``QUICK`` for tests)."""

    name: str
    flood_requests: int
    flood_concurrency: int
    bad_token_requests: int
    forged_users: int
    slowloris: int
    slow_bodies: int
    idle_keepalive: int
    silent: int
    slow_seconds: float
    body_repeats: int
    path_repeats: int
    hangups: int
    baseline_s: float
    recovery_timeout_s: float
    bystander_rate: float


FULL = Sizes(
    name="full",
    flood_requests=3000,
    flood_concurrency=32,
    bad_token_requests=3000,
    forged_users=500,
    slowloris=200,
    slow_bodies=200,
    idle_keepalive=2000,
    silent=1300,
    slow_seconds=40.0,
    body_repeats=100,
    path_repeats=100,
    hangups=200,
    baseline_s=10.0,
    recovery_timeout_s=30.0,
    bystander_rate=30.0,
)
QUICK = Sizes(
    name="quick",
    flood_requests=300,
    flood_concurrency=32,
    bad_token_requests=300,
    forged_users=50,
    slowloris=50,
    slow_bodies=50,
    idle_keepalive=300,
    silent=300,
    slow_seconds=4.0,
    body_repeats=5,
    path_repeats=5,
    hangups=50,
    baseline_s=1.5,
    recovery_timeout_s=15.0,
    bystander_rate=30.0,
)


# -- tokens -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def alg_none_token(sub: str) -> str:
    now = int(time.time())
    return _unsigned({"alg": "none", "typ": "JWT"}, {"sub": sub, "exp": now + 3600}) + "."


def hs256_with_public_pem(sub: str, public_pem: str) -> str:
    """The key-confusion attack: HMAC-signed with the server's public key as the secret
    (PyJWT refuses to produce this, so it is built by hand)."""
    now = int(time.time())
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, {"sub": sub, "exp": now + 3600})
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


# -- raw HTTP/1.1 over asyncio sockets ---------------------------------------------------------


def http_request(
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    content_type: str | None = "application/json",
    close: bool = True,
) -> bytes:
    """One HTTP/1.1 request as bytes, exactly as given (no normalisation of path or headers)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _status(line: bytes) -> str:
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return parts[1].decode()
    return "garbled answer"


async def _connect(port: int, wait_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), wait_s)


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def exchange(port: int, data: bytes, *, wait_s: float = 10.0) -> str:
    """Send ``data`` on a new connection; the answer's status code, or how the connection ended."""
    try:
        reader, writer = await _connect(port, wait_s)
    except TimeoutError:
        return "connect timeout"
    except OSError:
        return "connect refused"
    try:
        with contextlib.suppress(OSError, TimeoutError):
            # The server may answer (431, 413) and close before it has read everything.
            writer.write(data)
            await asyncio.wait_for(writer.drain(), wait_s)
        try:
            return _status(await asyncio.wait_for(reader.readuntil(b"\r\n"), wait_s))
        except asyncio.IncompleteReadError as exc:
            return "garbled answer" if exc.partial else "closed by server, no answer"
        except (ConnectionResetError, BrokenPipeError):
            return "reset by server"
        except TimeoutError:
            return "no answer (timeout)"
    finally:
        _abort(writer)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on an event loop of its own, in a thread of its own (so callers
    may be inside a running loop, and no loop of the caller's thread is replaced or closed)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def run_all(jobs: Iterable[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Run ``jobs`` with at most ``concurrency`` at a time."""
    queue = list(jobs)
    queue.reverse()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- what the server holds ---------------------------------------------------------------------

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_mb(pids: Iterable[int]) -> float:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def server_sockets(port: int) -> Counter[str]:
    """The server side of every TCP connection to ``port`` by state (TIME_WAIT and LISTEN left
    out: the first is the kernel's, not the server's, the second is the listener itself).
    Connections waiting in the accept queue count (they are ESTABLISHED)."""
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                state = _TCP_STATES.get(fields[3], fields[3])
                if local_port == port and state not in ("TIME_WAIT", "LISTEN"):
                    states[state] += 1
    return states


@dataclass
class Resources:
    rss_mb: float
    pg_connections: int
    pg_busy: int  # not idle: running a statement or inside a transaction
    tcp_connections: int
    tcp_states: dict[str, int] = field(default_factory=dict)

    def brief(self) -> str:
        return (
            f"RSS {self.rss_mb:.0f} MB, PG {self.pg_connections} ({self.pg_busy} busy), "
            f"TCP {self.tcp_connections}"
        )


class ResourceMonitor:
    """Reads the API server's resources: RSS of its process tree, its PostgreSQL connections
    (application_name 'helpdesk' on its database) and the TCP connections to its port."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conn = psycopg.connect(target.database_url, autocommit=True)

    def snapshot(self) -> Resources:
        total, busy = self.conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity "
            "WHERE application_name = 'helpdesk' AND datname = current_database()"
        ).fetchone() or (0, 0)
        sockets = server_sockets(self.target.port)
        return Resources(
            rss_mb=rss_mb(process_tree(self.target.pid)),
            pg_connections=int(total),
            pg_busy=int(busy),
            tcp_connections=sum(sockets.values()),
            tcp_states=dict(sockets),
        )

    def back_to(self, now: Resources, baseline: Resources) -> bool:
        """Whether ``now`` is back at ``baseline``: no more TCP connections, no busy database
        connection, no more PostgreSQL connections than the baseline or than the pools keep
        (they keep what they opened), memory within RSS_TOLERANCE_MB."""
        pools = self.target.workers * self.target.pool_capacity
        return (
            now.tcp_connections <= baseline.tcp_connections
            and now.pg_busy <= baseline.pg_busy
            and now.pg_connections <= max(baseline.pg_connections, pools)
            and now.rss_mb <= baseline.rss_mb + RSS_TOLERANCE_MB
        )

    def close(self) -> None:
        self.conn.close()


# -- what was written --------------------------------------------------------------------------

_INTEGRITY_SQL = """
SELECT
  (SELECT count(*) FROM tickets t
     WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.ticket_id = t.id)),
  (SELECT count(*) FROM tickets t
     WHERE NOT EXISTS (SELECT 1 FROM ticket_events e
                       WHERE e.ticket_id = t.id AND e.type = 'ticket.created')),
  (SELECT count(*) FROM messages m
     WHERE NOT EXISTS (SELECT 1 FROM tickets t WHERE t.id = m.ticket_id)),
  (SELECT count(*) FROM ticket_events e
     WHERE NOT EXISTS (SELECT 1 FROM tickets t WHERE t.id = e.ticket_id))
"""
HALF_WRITTEN = (
    "tickets_without_first_message",
    "tickets_without_created_event",
    "messages_without_ticket",
    "events_without_ticket",
)


def half_written(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(_INTEGRITY_SQL).fetchone() or (0, 0, 0, 0)
    return dict(zip(HALF_WRITTEN, (int(v) for v in row), strict=True))


def tickets_of(database_url: str, user_prefix: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM tickets WHERE starts_with(user_id, %s)", (user_prefix,)
        ).fetchone()
    return int(row[0]) if row else 0


# -- the server's log --------------------------------------------------------------------------


@dataclass
class LogScan:
    lines: int = 0
    error_lines: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)


def scan_log(text: str) -> LogScan:
    """Error-level lines and tracebacks in the server's output (JSON lines from our processes,
    plain lines from Granian's main process), and warning lines counted by event and status."""
    scan = LogScan()
    warnings: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        scan.lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if "Traceback" in line or re.search(r"\b(ERROR|CRITICAL|panicked)\b", line):
                scan.error_lines.append(line[:500])
            continue
        level = str(record.get("level", "")).lower()
        if level in ("error", "critical", "exception", "fatal") or "Traceback" in line:
            scan.error_lines.append(line[:500])
        elif level == "warning":
            key = str(record.get("event", "?"))
            if "status" in record:
                key += f" {record['status']}"
            warnings[key] += 1
    scan.warnings = dict(warnings)
    return scan


# -- the server --------------------------------------------------------------------------------


@dataclass
class Target:
    """The API server under attack, and what the attacks need to know about it."""

    api: ApiServer
    database_url: str
    port: int
    public_pem: str
    sign: TokenFactory
    workers: int
    pool_capacity: int
    run_id: str

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.api.proc is not None
        return self.api.proc.pid

    @classmethod
    def start(
        cls,
        *,
        database_url: str,
        redis_url: str,
        public_pem: str,
        sign: TokenFactory,
        workers: int = WORKERS,
        rate_limit: int = RATE_LIMIT_PER_MINUTE,
    ) -> Target:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SLACK_", "JWT_"))}
        env.update(
            PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            APP_ENV="production",
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            PORT=str(port),
            JWT_PUBLIC_KEY=public_pem,
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            RATE_LIMIT_PER_MINUTE=str(rate_limit),
        )
        settings = load_settings(env)
        api = ApiServer(env, workers=workers).start()
        return cls(
            api=api,
            database_url=database_url,
            port=port,
            public_pem=public_pem,
            sign=sign,
            workers=workers,
            pool_capacity=pool_capacity(settings),
            run_id=secrets.token_hex(3),
        )

    def stop(self) -> None:
        self.api.stop()


# -- the bystander -----------------------------------------------------------------------------

BystanderRecord = tuple[float, str, str, float]  # (started, kind, outcome, latency s)


def _bystander_kind(n: int) -> str:
    """Of every 20 requests: 16 lists and 3 creates on keep-alive connections, 1 list on a
    new connection (a client that arrives during the attack)."""
    slot = n % 20
    if slot in (3, 9, 15):
        return "create"
    return "fresh list" if slot == 19 else "list"


async def _bystander_load(
    conn: Connection, base_url: str, port: int, tokens: list[str], rate: float
) -> list[BystanderRecord]:
    records: list[BystanderRecord] = []
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:

        async def one(n: int) -> None:
            kind = _bystander_kind(n)
            token = tokens[n % len(tokens)]
            started = time.monotonic()
            try:
                if kind == "fresh list":
                    request = http_request("GET", TICKETS, token=token)
                    outcome = await exchange(port, request, wait_s=10.0)
                elif kind == "create":
                    body = {"subject": f"bystander {n}", "body": "steady traffic"}
                    response = await client.post(
                        TICKETS, json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                    outcome = str(response.status_code)
                else:
                    response = await client.get(
                        TICKETS, headers={"Authorization": f"Bearer {token}"}
                    )
                    outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            records.append((started, kind, outcome, time.monotonic() - started))

        first = await client.get(TICKETS, headers={"Authorization": f"Bearer {tokens[0]}"})
        conn.send(("ready", first.status_code))
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        n = 0
        while not conn.poll():
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        conn.recv()  # "stop"
        await asyncio.gather(*tasks)
    return records


def _bystander_process(conn: Connection, base_url: str, port: int, tokens: list[str]) -> None:
    """The bystander's own process (its latency must not depend on the attacker's CPU)."""
    while True:
        command = conn.recv()
        if command[0] == "exit":
            return
        _, rate = command
        conn.send(("records", asyncio.run(_bystander_load(conn, base_url, port, tokens, rate))))


class Bystander:
    """Well-behaved users measured during each case, from a process of their own."""

    def __init__(self, target: Target) -> None:
        self.user_prefix = f"bystander-{target.run_id}-"
        self.tokens = [
            target.sign(f"{self.user_prefix}{i:02d}", exp_in=6 * 3600)
            for i in range(BYSTANDER_USERS)
        ]
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_bystander_process,
            args=(child, target.base_url, target.port, self.tokens),
            daemon=True,
        )
        self.process.start()

    def begin(self, rate: float) -> None:
        self.conn.send(("go", rate))
        try:
            if not self.conn.poll(60):
                raise RuntimeError("the bystander did not start")
            _, status = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError("the bystander process died") from exc
        if status != 200:
            raise RuntimeError(f"the bystander's first request got {status}")

    def end(self) -> list[BystanderRecord]:
        self.conn.send(("stop",))
        if not self.conn.poll(60):
            raise RuntimeError("the bystander did not stop")
        _, records = self.conn.recv()
        return list(records)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("exit",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# -- attacks -----------------------------------------------------------------------------------


@dataclass
class AttackResult:
    sent: int = 0
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    expected: dict[str, set[str]] = field(default_factory=dict)
    # Tickets the attacker's users may have created: exactly the 201s they saw, unless the
    # attacker never read its answers (then at most ``created_at_most``).
    created_201: int = 0
    created_at_most: int | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def record(self, kind: str, outcome: str, expected: Iterable[str]) -> None:
        self.sent += 1
        self.by_kind.setdefault(kind, Counter())[outcome] += 1
        self.expected.setdefault(kind, set(expected))
        if outcome == "201":
            self.created_201 += 1

    def outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_kind.values():
            total.update(counts)
        return total

    def unexpected(self) -> dict[str, dict[str, int]]:
        return {
            kind: {o: n for o, n in counts.items() if o not in self.expected[kind]}
            for kind, counts in self.by_kind.items()
            if set(counts) - self.expected[kind]
        }


@dataclass
class CaseContext:
    target: Target
    sizes: Sizes
    user_prefix: str  # every user this case's attacker signs in as starts with it

    def token(self, user: str, **claims: Any) -> str:
        return self.target.sign(f"{self.user_prefix}{user}", **claims)


# (kind, method, path, headers, JSON body, expected outcomes)
FloodRequest = tuple[str, str, str, dict[str, str], dict[str, Any] | None, set[str]]


async def _http_flood(
    ctx: CaseContext, requests: Sequence[FloodRequest], result: AttackResult
) -> None:
    """Send ``(kind, method, path, headers, json body, expected)`` requests over keep-alive
    connections, ``flood_concurrency`` at a time. A 429 without Retry-After is its own outcome."""
    limits = httpx.Limits(
        max_connections=ctx.sizes.flood_concurrency,
        max_keepalive_connections=ctx.sizes.flood_concurrency,
    )
    async with httpx.AsyncClient(
        base_url=ctx.target.base_url, timeout=15.0, limits=limits
    ) as client:

        def job(
            kind: str,
            method: str,
            path: str,
            headers: dict[str, str],
            body: dict[str, Any] | None,
            expected: set[str],
        ) -> Callable[[], Awaitable[None]]:
            async def send() -> None:
                try:
                    response = await client.request(method, path, headers=headers, json=body)
                    outcome = str(response.status_code)
                    if response.status_code == 429 and "retry-after" not in response.headers:
                        outcome = "429 without Retry-After"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                result.record(kind, outcome, expected)

            return send

        await run_all((job(*r) for r in requests), ctx.sizes.flood_concurrency)


async def attack_rate_limit(ctx: CaseContext) -> AttackResult:
    """One user far over RATE_LIMIT_PER_MINUTE: lists, creates and (not being an admin) admin
    lists, 32 at a time. The guards refuse with 429 (or 403) before a database slot is taken."""
    result = AttackResult()
    headers = {"Authorization": f"Bearer {ctx.token('flooder')}"}
    requests: list[FloodRequest] = []
    for n in range(ctx.sizes.flood_requests):
        if n % 10 == 0:
            body = {"subject": f"flood {n}", "body": "over the limit"}
            requests.append(("create", "POST", TICKETS, headers, body, {"201", "429"}))
        elif n % 10 == 5:
            requests.append(
                ("admin list (not admin)", "GET", ADMIN_TICKETS, headers, None, {"403", "429"})
            )
        else:
            requests.append(("list", "GET", TICKETS, headers, None, {"200", "429"}))
    started = time.time()
    await _http_flood(ctx, requests, result)
    windows = int(time.time() // 60 - started // 60) + 2  # fixed windows the flood can touch
    admitted = sum(n for c in result.by_kind.values() for o, n in c.items() if o != "429")
    result.details["admitted_past_the_limiter"] = admitted
    result.details["limit_windows_at_most"] = windows
    if admitted > RATE_LIMIT_PER_MINUTE * windows:
        result.by_kind.setdefault("limit", Counter())["more admitted than the limit allows"] += 1
        result.expected.setdefault("limit", set())
    result.notes.append(
        f"{admitted} requests got past the limiter (limit {RATE_LIMIT_PER_MINUTE}/min, "
        f"fixed windows, so at most {RATE_LIMIT_PER_MINUTE} per window)"
    )
    return result


async def attack_bad_tokens(ctx: CaseContext) -> AttackResult:
    """Tokens the server must refuse (401), 32 at a time, on lists, creates and admin lists."""
    target = ctx.target
    foreign = new_rsa_key()
    forge = key_signer(foreign)
    user = f"{ctx.user_prefix}victim"
    forged_users = [
        forge(f"{ctx.user_prefix}forged-{i}", admin=i % 2 == 0)
        for i in range(ctx.sizes.forged_users)
    ]

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    fixed: list[tuple[str, dict[str, str]]] = [
        ("garbage", bearer("not-a-jwt")),
        ("garbage", bearer("a.b.c")),
        ("garbage", bearer(_b64(os.urandom(300)) + "." + _b64(os.urandom(40)))),
        ("expired", bearer(target.sign(user, exp_in=-3600))),
        ("signed by a foreign RSA key", bearer(forge(user))),
        ("signed by a foreign RSA key", bearer(forge(user, admin=True))),
        ("alg: none", bearer(alg_none_token(user))),
        (
            "HS256 with the server's public PEM as secret",
            bearer(hs256_with_public_pem(user, target.public_pem)),
        ),
        ("20 kB token signed by the server's key", bearer(target.sign(user, pad="x" * 20_000))),
        ("signed, no sub", bearer(target.sign(None))),
        ("signed, NUL in sub", bearer(target.sign(f"{user}\x00admin"))),
        ("wrong scheme (Basic)", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("no Authorization header", {}),
    ]
    # A third of the requests come from the many forged users, one after another.
    cycle = [*fixed, *[("many users, foreign key", {})] * (len(fixed) // 2)]
    endpoints: list[tuple[str, str]] = [("GET", TICKETS), ("POST", TICKETS), ("GET", ADMIN_TICKETS)]
    body = {"subject": "forged", "body": "should never be stored"}
    requests: list[FloodRequest] = []
    forged = 0
    for n in range(ctx.sizes.bad_token_requests):
        kind, headers = cycle[n % len(cycle)]
        if not headers and kind == "many users, foreign key":
            headers = bearer(forged_users[forged % len(forged_users)])
            forged += 1
        method, path = endpoints[(n // len(cycle) + n) % len(endpoints)]  # every kind, each one
        requests.append((kind, method, path, headers, body if method == "POST" else None, {"401"}))
    result = AttackResult()
    await _http_flood(ctx, requests, result)
    return result


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _hold(
    ctx: CaseContext,
    count: int,
    connection: Callable[[int, float, Opener], Awaitable[tuple[str, float | None]]],
    result: AttackResult,
    kind: Callable[[int], str],
    expected: set[str],
) -> None:
    """Run ``count`` connections at once, each ``connection(n, deadline, open)`` until the
    case's deadline (``slow_seconds``); record how each ended, and after how many seconds when
    the server ended it. Connections are opened 100 at a time."""
    deadline = time.monotonic() + ctx.sizes.slow_seconds
    opening = asyncio.Semaphore(100)
    ended_after: dict[str, list[float]] = {}

    async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with opening:
            return await _connect(ctx.target.port, 10.0)

    async def one(n: int) -> None:
        outcome, ended_at = await connection(n, deadline, open_one)
        if ended_at is not None:
            ended_after.setdefault(outcome, []).append(ended_at)
        result.record(kind(n), outcome, expected)

    await asyncio.gather(*(one(n) for n in range(count)))
    result.details["ended_after_s"] = {
        outcome: {
            "count": len(times),
            "min": round(min(times), 1),
            "median": round(sorted(times)[len(times) // 2], 1),
            "max": round(max(times), 1),
        }
        for outcome, times in ended_after.items()
    }


async def _first_answer(reader: asyncio.StreamReader) -> bytes:
    """The status line of the server's answer, or b"" when it closes without one."""
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except ConnectionError:
        return b""


async def _until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


def _ended(answer: bytes) -> str:
    return _status(answer) if answer else "closed by server"


async def _trickle(
    open_connection: Opener, head: bytes, trickle: bytes, deadline: float
) -> tuple[str, float | None]:
    """Send ``head`` at once, then ``trickle`` one byte a second until the deadline; the
    server's answer (or "closed by server") and when it came, or "open when the client gave
    up" if neither came by the deadline."""
    opened = time.monotonic()
    try:
        reader, writer = await open_connection()
    except (OSError, TimeoutError):
        return "connect failed", None
    answer = asyncio.create_task(_first_answer(reader))
    try:
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(head)
            for byte in trickle:
                if answer.done() or time.monotonic() >= deadline:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.wait({answer}, timeout=1.0)
        if not answer.done():
            await asyncio.wait({answer}, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        _abort(writer)
    if answer.done():
        return _ended(answer.result()), time.monotonic() - opened
    answer.cancel()
    return "open when the client gave up", None


async def attack_slowloris(ctx: CaseContext) -> AttackResult:
    """Connections that send a valid request's headers one byte a second."""
    result = AttackResult()
    request = http_request("GET", TICKETS, token=ctx.token("slowloris"), close=False)

    async def connection(n: int, deadline: float, open_: Opener) -> tuple[str, float | None]:
        return await _trickle(open_, b"", request, deadline)

    expected = {"open when the client gave up", "closed by server", "408"}
    await _hold(
        ctx, ctx.sizes.slowloris, connection, result, lambda n: "headers at 1 byte/s", expected
    )
    result.notes.append(
        f"the request is {len(request)} bytes, so none completes in {ctx.sizes.slow_seconds:g} s"
    )
    return result


async def attack_slow_body(ctx: CaseContext) -> AttackResult:
    """POSTs whose headers arrive at once and whose body arrives one byte a second: half a
    valid ticket of ~33 bytes (complete after ~33 s), half a body announced as 400 bytes that
    never completes (the client gives up at the end of the case)."""
    result = AttackResult()

    async def connection(n: int, deadline: float, open_: Opener) -> tuple[str, float | None]:
        token = ctx.token(f"slow-body-{n}")
        body = json.dumps({"subject": f"slow {n}", "body": "x" * (1 if n % 2 == 0 else 400)})
        data = body.encode()[: 400 if n % 2 else None]
        request = http_request("POST", TICKETS, token=token, body=data, close=False)
        return await _trickle(open_, request[: -len(data)], data, deadline)

    def kind(n: int) -> str:
        return "complete body at 1 byte/s" if n % 2 == 0 else "abandoned body at 1 byte/s"

    expected = {"201", "open when the client gave up"}
    await _hold(ctx, ctx.sizes.slow_bodies, connection, result, kind, expected)
    result.notes.append(
        "a complete body is ~33 bytes, so it completes only when the case lasts longer "
        f"(this run: {ctx.sizes.slow_seconds:g} s)"
    )
    return result


async def attack_idle_keepalive(ctx: CaseContext) -> AttackResult:
    """Connections that make one request with keep-alive, read the answer, then stay idle."""
    result = AttackResult()
    request = http_request("GET", "/healthz", close=False)
    waits: list[float] = []

    async def connection(n: int, deadline: float, open_: Opener) -> tuple[str, float | None]:
        opened = time.monotonic()
        try:
            reader, writer = await open_()
        except (OSError, TimeoutError):
            return "connect failed", None
        try:
            writer.write(request)
            await writer.drain()
            answer = asyncio.create_task(_first_answer(reader))
            await asyncio.wait({answer}, timeout=max(0.1, deadline - time.monotonic()))
            if not answer.done():
                answer.cancel()
                return "never answered (waited in the accept queue)", None
            status, waited = _ended(answer.result()), time.monotonic() - opened
            waits.append(waited)
            if status != "200":
                return f"answered: {status}", waited
            prefix = "answered" if waited < 2.0 else "answered only after > 2 s in the queue"
            closed = asyncio.create_task(_until_closed(reader))
            await asyncio.wait({closed}, timeout=max(0.0, deadline - time.monotonic()))
            if closed.done():
                return f"{prefix}, then closed by server while idle", time.monotonic() - opened
            closed.cancel()
            return f"{prefix}, idle until the client gave up", None
        except (ConnectionError, OSError):
            return "reset by server", time.monotonic() - opened
        finally:
            _abort(writer)

    expected = {
        "answered, idle until the client gave up",
        "answered, then closed by server while idle",
    }
    await _hold(
        ctx,
        ctx.sizes.idle_keepalive,
        connection,
        result,
        lambda n: "GET /healthz, then idle",
        expected,
    )
    result.details["first_answer_after_ms"] = summary_ms(waits)
    return result


async def attack_silent(ctx: CaseContext) -> AttackResult:
    """Connections that are opened and never send a byte."""
    result = AttackResult()

    async def connection(n: int, deadline: float, open_: Opener) -> tuple[str, float | None]:
        return await _trickle(open_, b"", b"", deadline)

    expected = {"open when the client gave up", "closed by server", "408"}
    await _hold(ctx, ctx.sizes.silent, connection, result, lambda n: "connected, silent", expected)
    return result


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _chunked(total: int, size: int = 1000) -> bytes:
    chunk = b"%x\r\n%s\r\n" % (size, b"x" * size)
    return chunk * (total // size) + b"0\r\n\r\n"


def hostile_bodies(tokens: Sequence[str], first: int = 0) -> list[tuple[str, bytes, set[str]]]:
    """(kind, raw request, expected statuses) for POST /v1/support/tickets, the requests signed
    in as ``tokens[first]``, ``tokens[first + 1]``... (round the list)."""

    def token(n: int) -> str:
        return tokens[(first + n) % len(tokens)]

    ct_json = "application/json"
    nine = "9" * 10_000
    emoji = "\U0001f600"
    kinds: list[tuple[str, bytes, str | None, dict[str, str], set[str]]] = [
        ("64 kB of nested arrays", _nested(32_000), ct_json, {}, {"400"}),
        (
            "60 kB of nested arrays in subject",
            b'{"subject": ' + _nested(30_000) + b', "body": "x"}',
            ct_json,
            {},
            {"400"},
        ),
        (
            "NUL (\\u0000) in subject",
            b'{"subject": "a\\u0000b", "body": "x"}',
            ct_json,
            {},
            {"400"},
        ),
        ("NUL (\\u0000) in body", b'{"subject": "s", "body": "x\\u0000"}', ct_json, {}, {"400"}),
        ("raw NUL byte in subject", b'{"subject": "a\x00b", "body": "x"}', ct_json, {}, {"400"}),
        ("invalid UTF-8", b'{"subject": "a\xff\xfe\xc0b", "body": "x"}', ct_json, {}, {"400"}),
        (
            "60 kB of 4-byte emoji in body",
            json.dumps({"subject": "emoji", "body": emoji * 15_000}, ensure_ascii=False).encode(),
            ct_json,
            {},
            {"201"},
        ),
        (
            "emoji subject at the 200-character limit",
            json.dumps({"subject": emoji * 200, "body": "x"}, ensure_ascii=False).encode(),
            ct_json,
            {},
            {"201"},
        ),
        (
            "emoji subject over the limit",
            json.dumps({"subject": emoji * 201, "body": "x"}, ensure_ascii=False).encode(),
            ct_json,
            {},
            {"400"},
        ),
        (
            "10,000-digit integer as priority",
            b'{"subject": "s", "body": "b", "priority": ' + nine.encode() + b"}",
            ct_json,
            {},
            {"400"},
        ),
        (
            "10,000-digit number in an unknown field",
            b'{"subject": "s", "body": "b", "n": ' + nine.encode() + b"}",
            ct_json,
            {},
            {"400"},
        ),
        (
            "10,000-digit float",
            b'{"subject": "s", "body": "b", "priority": 0.' + nine.encode() + b"e99999}",
            ct_json,
            {},
            {"400"},
        ),
        (
            "duplicate keys",
            b'{"subject": "first", "subject": "second", "body": "a", "body": "b"}',
            ct_json,
            {},
            {"201"},
        ),
        ("text/plain", b'{"subject": "s", "body": "b"}', "text/plain", {}, {"415"}),
        ("form-urlencoded", b"subject=s&body=b", "application/x-www-form-urlencoded", {}, {"415"}),
        ("no content type", b'{"subject": "s", "body": "b"}', None, {}, {"415"}),
        ("truncated JSON", b'{"subject": "s", "bo', ct_json, {}, {"400"}),
        ("JSON null", b"null", ct_json, {}, {"400"}),
        (
            "70 kB body (over MAX_BODY_BYTES)",
            json.dumps({"subject": "s", "body": "x" * 70_000}).encode(),
            ct_json,
            {},
            {"413"},
        ),
    ]
    requests = []
    for n, (kind, body, content_type, headers, expected) in enumerate(kinds):
        request = http_request(
            "POST", TICKETS, token=token(n), body=body, content_type=content_type, headers=headers
        )
        requests.append((kind, request, expected))
    # Bodies without Content-Length: chunked over the limit, and chunked encoding that is not
    # chunked encoding at all (a body the server cannot read: the client's fault, so a 400).
    for kind, body, expected in [
        ("chunked 100 kB (over MAX_BODY_BYTES)", _chunked(100_000), {"413"}),
        ("invalid chunked encoding", b'{"subject": "s", "body": "b"}', {"400"}),
    ]:
        head = http_request(
            "POST",
            TICKETS,
            token=token(len(requests)),
            headers={"Content-Type": ct_json, "Transfer-Encoding": "chunked"},
            content_type=None,
        )
        requests.append((kind, head + body, expected))
    return requests


async def _raw_flood(
    ctx: CaseContext, requests: Sequence[tuple[str, bytes, set[str]]], result: AttackResult
) -> None:
    """Each request ``path_repeats``/``body_repeats`` times, each on a new connection."""

    def job(kind: str, request: bytes, expected: set[str]) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            result.record(kind, await exchange(ctx.target.port, request, wait_s=15.0), expected)

        return send

    await run_all((job(*r) for r in requests), 16)


async def attack_hostile_bodies(ctx: CaseContext) -> AttackResult:
    """Hostile JSON bodies on POST /v1/support/tickets with a valid token."""
    result = AttackResult()
    # Spread over 128 users, so that the rate limit does not answer for the parser.
    tokens = [ctx.token(f"body-{n}") for n in range(128)]
    repeated = []
    for r in range(ctx.sizes.body_repeats):
        repeated += hostile_bodies(tokens, first=21 * r)  # each repeat starts at other users
    await _raw_flood(ctx, repeated, result)
    return result


def hostile_paths(token: str) -> list[tuple[str, bytes, set[str]]]:
    """(kind, raw request, expected statuses) with hostile paths, query strings and headers."""
    long_id = "A" * 10_000
    json_body = b'{"body": "x"}'
    paths: list[tuple[str, str, str, bytes, set[str]]] = [
        ("10 kB ticket id (GET)", "GET", f"{TICKETS}/{long_id}", b"", {"404"}),
        ("10 kB ticket id (reply)", "POST", f"{TICKETS}/{long_id}/messages", json_body, {"404"}),
        ("10 kB ticket id (close)", "POST", f"{TICKETS}/{long_id}/close", b"", {"404"}),
        ("10 kB ticket id (admin, not admin)", "GET", f"{ADMIN_TICKETS}/{long_id}", b"", {"403"}),
        ("%00 as ticket id", "GET", f"{TICKETS}/%00", b"", {"404"}),
        ("%00 inside a ticket id", "GET", f"{TICKETS}/01ARZ3NDEKTSV4RRFF%00Q69G5FAV", b"", {"404"}),
        ("%ff as ticket id", "GET", f"{TICKETS}/%ff", b"", {"404"}),
        ("9 kB of %ff", "GET", f"{TICKETS}/" + "%ff" * 3000, b"", {"404"}),
        ("%zz (not percent-encoding)", "GET", f"{TICKETS}/%zz", b"", {"404"}),
        ("overlong UTF-8 dots %c0%ae", "GET", f"{TICKETS}/%c0%ae%c0%ae/%c0%ae%c0%ae", b"", {"404"}),
        ("../ encoded", "GET", f"{TICKETS}/..%2f..%2f..%2fetc%2fpasswd", b"", {"404"}),
        ("../ raw", "GET", f"{TICKETS}/../../../etc/passwd", b"", {"404"}),
        ("%2e%2e segments", "GET", f"{TICKETS}/%2e%2e/%2e%2e/healthz", b"", {"404"}),
        ("garbage at the root", "GET", "/%ff%fe%00%0d%0a", b"", {"404"}),
        ("?page=%00", "GET", f"{TICKETS}?page=%00", b"", {"400"}),
        ("?page=10^23", "GET", f"{TICKETS}?page=" + "9" * 23, b"", {"400"}),
        ("?per_page=-1", "GET", f"{TICKETS}?per_page=-1", b"", {"400"}),
        ("100 kB URL", "GET", f"{TICKETS}?" + "a" * 100_000, b"", {"414"}),
        ("unknown method", "BREW", TICKETS, b"", {"405"}),
    ]
    requests = [
        (kind, http_request(method, path, token=token, body=body), expected)
        for kind, method, path, body, expected in paths
    ]
    header_sets: list[tuple[str, dict[str, str], set[str]]] = [
        ("100 headers of 8 kB", {f"X-Junk-{i}": "v" * 8192 for i in range(100)}, {"431"}),
        ("200 small headers", {f"X-Small-{i}": "v" for i in range(200)}, {"431"}),
        ("one 64 kB header", {"X-Junk": "v" * 65_536}, {"200"}),
        ("10 kB X-Request-ID", {"X-Request-ID": "r" * 10_000}, {"200"}),
        ("CR/LF-free control bytes in a header", {"X-Ctl": "\x01\x02\x7f"}, {"200", "400"}),
    ]
    requests += [
        (kind, http_request("GET", TICKETS, token=token, headers=headers), expected)
        for kind, headers, expected in header_sets
    ]
    requests.append(
        (
            "control bytes in Host",
            f"GET {TICKETS} HTTP/1.1\r\nHost: \x01\x02\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1"),
            {"400"},
        )
    )
    return requests


async def attack_hostile_paths(ctx: CaseContext) -> AttackResult:
    """Hostile paths, query strings and headers with a valid token."""
    result = AttackResult()
    repeated = []
    for r in range(ctx.sizes.path_repeats):  # a user per repeat, each well under the limit
        repeated += hostile_paths(ctx.token(f"paths-{r}"))
    await _raw_flood(ctx, repeated, result)
    return result


async def attack_hangups(ctx: CaseContext) -> AttackResult:
    """Clients that send a whole valid request (list or create) and close before the answer:
    half with a normal close (FIN), half with a reset (RST)."""
    result = AttackResult()
    creates = 0

    def job(n: int) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            nonlocal creates
            token = ctx.token(f"hangup-{n}")
            if n % 2:
                body = json.dumps({"subject": f"hang-up {n}", "body": "gone"}).encode()
                request = http_request("POST", TICKETS, token=token, body=body)
                what = "create"
                creates += 1
            else:
                request, what = http_request("GET", TICKETS, token=token), "list"
            how = "reset (RST)" if n % 4 >= 2 else "close (FIN)"
            try:
                _, writer = await _connect(ctx.target.port, 10.0)
            except (OSError, TimeoutError):
                result.record(f"{what}, then {how}", "connect failed", {"sent, then hung up"})
                return
            writer.write(request)
            await writer.drain()
            if n % 4 >= 2:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            result.record(f"{what}, then {how}", "sent, then hung up", {"sent, then hung up"})

        return send

    await run_all((job(n) for n in range(ctx.sizes.hangups)), 32)
    result.created_at_most = creates
    await asyncio.sleep(1.0)  # let the server finish what it was doing for them
    return result


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    attack: Callable[[CaseContext], Awaitable[AttackResult]]
    time_limit_s: Callable[[Sizes], float]


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "rate-limit",
            "one user far over the rate limit (429 flood)",
            attack_rate_limit,
            lambda s: 120,
        ),
        Case(
            "bad-tokens",
            "invalid, forged and expired tokens (401 flood)",
            attack_bad_tokens,
            lambda s: 120,
        ),
        Case(
            "slowloris",
            "request headers at one byte a second",
            attack_slowloris,
            lambda s: s.slow_seconds + 30,
        ),
        Case(
            "slow-body",
            "POST bodies at one byte a second",
            attack_slow_body,
            lambda s: s.slow_seconds + 30,
        ),
        Case(
            "idle-keepalive",
            "idle keep-alive connections",
            attack_idle_keepalive,
            lambda s: s.slow_seconds + 30,
        ),
        Case(
            "silent",
            "connections that never send a byte",
            attack_silent,
            lambda s: s.slow_seconds + 30,
        ),
        Case(
            "hostile-bodies",
            "hostile JSON bodies with a valid token",
            attack_hostile_bodies,
            lambda s: 120,
        ),
        Case(
            "hostile-paths",
            "hostile paths, query strings and headers",
            attack_hostile_paths,
            lambda s: 120,
        ),
        Case(
            "hang-ups",
            "clients that hang up before reading the answer",
            attack_hangups,
            lambda s: 60,
        ),
    ]
}
CASE_NAMES = list(CASES)

# API misbehaviour this suite found and left to the API's owners (see docs/reliability.md):
# outcome kinds whose observed status differs from the expected one because of it.
# -- running a case ----------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: str
    title: str
    sizes: str
    sent: int
    outcomes: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    unexpected: dict[str, dict[str, int]]
    attack_s: float
    bystander: dict[str, Any]
    tickets: dict[str, Any]
    half_written: dict[str, int]
    resources: dict[str, Any]
    after: dict[str, Any]
    log: dict[str, Any]
    notes: list[str]
    details: dict[str, Any]
    problems: list[str]


def _bystander_report(
    records: list[BystanderRecord], ready_at: float, attack_start: float, attack_end: float
) -> dict[str, Any]:
    baseline = [r for r in records if ready_at <= r[0] < attack_start]
    attack = [r for r in records if attack_start <= r[0] <= attack_end]
    after = [r for r in records if r[0] > attack_end]
    non_2xx = Counter(f"{kind}: {outcome}" for _, kind, outcome, _ in records if outcome[0] != "2")
    creates = sum(1 for _, kind, outcome, _ in records if kind == "create" and outcome == "201")
    unsure = sum(1 for _, kind, o, _ in records if kind == "create" and not o.isdigit())
    return {
        "requests": len(records),
        "baseline": summary_ms(r[3] for r in baseline),
        "attack": summary_ms(r[3] for r in attack),
        "after": summary_ms(r[3] for r in after),
        "attack_fresh_connections": summary_ms(r[3] for r in attack if r[1] == "fresh list"),
        "rate_during_attack": round(len(attack) / max(attack_end - attack_start, 1e-9), 1),
        "non_2xx": dict(non_2xx),
        "creates_201": creates,
        "creates_unanswered": unsure,
    }


async def _during(
    attack: Awaitable[AttackResult], monitor: ResourceMonitor, time_limit_s: float
) -> tuple[AttackResult, Resources]:
    """Run the attack (bounded by ``time_limit_s``) and sample resources every second; the
    result and the peak of each resource."""
    peak = await asyncio.to_thread(monitor.snapshot)
    task = asyncio.ensure_future(attack)
    deadline = time.monotonic() + time_limit_s
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        now = await asyncio.to_thread(monitor.snapshot)
        peak = Resources(
            rss_mb=max(peak.rss_mb, now.rss_mb),
            pg_connections=max(peak.pg_connections, now.pg_connections),
            pg_busy=max(peak.pg_busy, now.pg_busy),
            tcp_connections=max(peak.tcp_connections, now.tcp_connections),
        )
        if time.monotonic() > deadline and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise TimeoutError(f"the attack did not end within {time_limit_s:g} s")
    return task.result(), peak


def _after_checks(target: Target, bystander: Bystander) -> dict[str, Any]:
    """/readyz, one new bystander request, and a burst of concurrent bystander requests larger
    than the connection gates admit at once (a process whose gate leaked slots would 503)."""
    checks: dict[str, Any] = {}
    try:
        checks["readyz"] = httpx.get(f"{target.base_url}/readyz", timeout=5).status_code
    except httpx.HTTPError as exc:
        checks["readyz"] = type(exc).__name__
    started = time.monotonic()
    request = http_request("GET", TICKETS, token=bystander.tokens[0])
    checks["bystander_request"] = run_async(exchange(target.port, request, wait_s=5.0))
    checks["bystander_request_ms"] = round((time.monotonic() - started) * 1000, 1)

    burst = 2 * target.workers * target.pool_capacity

    async def burst_requests() -> Counter[str]:
        limits = httpx.Limits(max_connections=burst)
        async with httpx.AsyncClient(base_url=target.base_url, timeout=15, limits=limits) as c:

            async def one(n: int) -> str:
                token = bystander.tokens[n % len(bystander.tokens)]
                try:
                    response = await c.get(TICKETS, headers={"Authorization": f"Bearer {token}"})
                    return str(response.status_code)
                except httpx.HTTPError as exc:
                    return type(exc).__name__

            return Counter(await asyncio.gather(*(one(n) for n in range(burst))))

    checks["burst"] = dict(run_async(burst_requests()))
    return checks


def run_case(
    name: str, target: Target, bystander: Bystander, monitor: ResourceMonitor, sizes: Sizes
) -> CaseResult:
    case = CASES[name]
    ctx = CaseContext(target, sizes, user_prefix=f"abuse-{target.run_id}-{name}-")
    log_offset = len(target.api.output())
    baseline = monitor.snapshot()
    tickets_before = {
        "all": tickets_of(target.database_url, ""),
        "bystander": tickets_of(target.database_url, bystander.user_prefix),
        "attacker": tickets_of(target.database_url, ctx.user_prefix),
    }

    bystander.begin(sizes.bystander_rate)
    ready_at = time.monotonic()
    time.sleep(sizes.baseline_s)
    attack_start = time.monotonic()
    attack, peak = run_async(_during(case.attack(ctx), monitor, case.time_limit_s(sizes)))
    attack_end = time.monotonic()
    time.sleep(BYSTANDER_AFTER_S)  # and just after it, when anything left behind would show
    records = bystander.end()

    # Back to the baseline: counted from when the bystander stopped (its own connections
    # count until then).
    stopped = time.monotonic()
    recovered_in: float | None = None
    now = monitor.snapshot()
    deadline = stopped + sizes.recovery_timeout_s
    while True:
        if monitor.back_to(now, baseline):
            recovered_in = round(time.monotonic() - stopped, 1)
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        now = monitor.snapshot()
    after = _after_checks(target, bystander)
    time.sleep(0.3)  # the access lines of the last requests
    log = scan_log(target.api.output()[log_offset:])

    by = _bystander_report(records, ready_at, attack_start, attack_end)
    tickets = {
        "attacker_delta": tickets_of(target.database_url, ctx.user_prefix)
        - tickets_before["attacker"],
        "attacker_201": attack.created_201,
        "attacker_at_most": attack.created_at_most,
        "bystander_delta": tickets_of(target.database_url, bystander.user_prefix)
        - tickets_before["bystander"],
        "bystander_201": by["creates_201"],
        "all_delta": tickets_of(target.database_url, "") - tickets_before["all"],
    }
    written = half_written(target.database_url)
    result = CaseResult(
        case=name,
        title=case.title,
        sizes=sizes.name,
        sent=attack.sent,
        outcomes=dict(attack.outcomes()),
        by_kind={k: dict(v) for k, v in attack.by_kind.items()},
        unexpected=attack.unexpected(),
        attack_s=round(attack_end - attack_start, 1),
        bystander=by,
        tickets=tickets,
        half_written=written,
        resources={
            "baseline": asdict(baseline),
            "peak": asdict(peak),
            "after": asdict(now),
            "back_to_baseline": recovered_in is not None,
            "back_after_s": recovered_in,
        },
        after=after,
        log={
            "lines": log.lines,
            "error_lines": len(log.error_lines),
            "error_samples": log.error_lines[:5],
            "warnings": log.warnings,
        },
        notes=attack.notes,
        details=attack.details,
        problems=[],
    )
    result.problems = problems(result)
    return result


def problems(r: CaseResult) -> list[str]:
    """Everything in ``r`` that says the attack hurt the service or someone else."""
    found = []
    for kind, outcomes in r.unexpected.items():
        found.append(f"unexpected answers to '{kind}': {outcomes}")
    if r.bystander["non_2xx"]:
        found.append(f"the bystander saw non-2xx: {r.bystander['non_2xx']}")
    if r.bystander["creates_unanswered"]:
        found.append(f"{r.bystander['creates_unanswered']} bystander creates unanswered")
    if any(r.half_written.values()):
        found.append(f"half-written rows: {r.half_written}")
    t = r.tickets
    if t["bystander_delta"] != t["bystander_201"] and not r.bystander["creates_unanswered"]:
        found.append(
            f"bystander tickets grew by {t['bystander_delta']}, 201s: {t['bystander_201']}"
        )
    if t["attacker_at_most"] is None and t["attacker_delta"] != t["attacker_201"]:
        found.append(f"attacker tickets grew by {t['attacker_delta']}, 201s: {t['attacker_201']}")
    if t["attacker_at_most"] is not None and t["attacker_delta"] > t["attacker_at_most"]:
        found.append(
            f"attacker tickets grew by {t['attacker_delta']} > {t['attacker_at_most']} sent"
        )
    if t["all_delta"] != t["attacker_delta"] + t["bystander_delta"]:
        found.append(f"tickets of unknown users appeared: {t}")
    if not r.resources["back_to_baseline"]:
        base, after = r.resources["baseline"], r.resources["after"]
        found.append(
            f"resources not back within the recovery time: {Resources(**base).brief()} before, "
            f"{Resources(**after).brief()} after"
        )
    if r.after["readyz"] != 200:
        found.append(f"/readyz answered {r.after['readyz']} after the case")
    if r.after["bystander_request"] != "200":
        found.append(f"a bystander request after the case got {r.after['bystander_request']}")
    if set(r.after["burst"]) != {"200"}:
        found.append(f"a burst of bystander requests after the case got {r.after['burst']}")
    if r.log["error_lines"]:
        found.append(f"{r.log['error_lines']} error lines in the server log")
    return found


class Suite:
    """A target, its bystander and its resource monitor, and the results of the cases run."""

    def __init__(self, target: Target, sizes: Sizes) -> None:
        self.target = target
        self.sizes = sizes
        self.bystander = Bystander(target)
        self.monitor = ResourceMonitor(target)
        self.results: dict[str, CaseResult] = {}
        # Warm up, so that the first case's baseline is a server that has served requests
        # (its pools opened, its caches filled) like every later case's.
        self.bystander.begin(sizes.bystander_rate)
        time.sleep(2)
        self.bystander.end()
        _after_checks(target, self.bystander)

    def run(self, name: str) -> CaseResult:
        if name not in self.results:
            self.results[name] = run_case(
                name, self.target, self.bystander, self.monitor, self.sizes
            )
        return self.results[name]

    def close(self) -> None:
        self.bystander.close()
        self.monitor.close()


# -- report ------------------------------------------------------------------------------------


def _fmt_outcomes(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))


def _latency(summary: dict[str, Any]) -> str:
    if not summary.get("count"):
        return "-"
    return f"{summary['p50_ms']:g} / {summary['p99_ms']:g}"


def _resources_cell(r: CaseResult) -> str:
    base, peak, after = (r.resources[k] for k in ("baseline", "peak", "after"))
    back = (
        f"back in {r.resources['back_after_s']:g} s"
        if r.resources["back_to_baseline"]
        else "**not back**"
    )
    return (
        f"RSS {base['rss_mb']:.0f} → peak {peak['rss_mb']:.0f} → {after['rss_mb']:.0f} MB; "
        f"PG {base['pg_connections']} → {peak['pg_connections']} → {after['pg_connections']} "
        f"({after['pg_busy']} busy); TCP {base['tcp_connections']} → {peak['tcp_connections']} "
        f"→ {after['tcp_connections']}; {back}"
    )


def _errors_cell(r: CaseResult) -> str:
    return str(r.log["error_lines"])


DEFENDED = """\
### What is and is not defended

- **Rate limit, bad tokens, non-admins**: refused by the router's guards (token, then the
  per-user limit in Redis, then the admin role) before a body is read or a database slot is
  taken, so a flood of 401/403/429 costs CPU only.
- **Connection permits (Granian's `--backpressure`)**: `api/cli.py` leaves it at its default,
  backlog / workers = 1,024 / 2 = 512 connections per worker process (`GRANIAN_BACKPRESSURE`,
  `GRANIAN_BACKLOG` change it). A connection holds its permit for its whole life, idle or not.
  Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
  connections over them by a hash; a connection beyond a worker's 512 waits, unanswered, in
  that worker's accept queue. **So one client holding about 1,100 connections (idle
  keep-alive, silent or slowloris) locks out every new client** until some of its
  connections close; clients whose keep-alive connections were already open keep being
  served. Nothing in the service limits connections per client: that takes a proxy or load
  balancer in front (per-IP connection limits, idle and header timeouts) or a firewall rule.
- **Slowloris (request headers trickled)**: Granian's `--http1-header-read-timeout` (default
  30 s; `api/cli.py` does not set it, `GRANIAN_HTTP1_HEADER_READ_TIMEOUT` can, at most 60 s)
  closes a connection whose headers are not complete 30 s after they started.
- **Idle keep-alive connections**: the same timeout covers the wait for the next request, so
  an idle keep-alive connection is closed 30 s after its last answer (Granian 2.8 has no
  separate keep-alive timeout for HTTP/1; `--no-http1-keep-alive` would turn keep-alive off).
- **Connections that never send a byte are never closed**: the header-read timer starts with
  the first byte (a silent connection was still open after 200 s when we stopped waiting).
- **Slow bodies**: nothing bounds how long a body may take: a body sent one byte a second is
  read to the end (a ~33-byte ticket is created after ~33 s) and its connection held
  meanwhile. The body is read before the handler's dependencies are resolved, so a slow body
  holds no database slot. `MAX_BODY_BYTES` (64 kB) caps its size, with or without
  Content-Length (413).
- **Headers and URLs**: more than 100 headers, or headers larger than Granian's HTTP/1 buffer
  (`--http1-buffer-size`, 408 kB), get 431 from Granian before the app sees them; a 100 kB
  URL gets 414.
- **Hostile JSON**: deep nesting, NUL, invalid UTF-8 and 10,000-digit numbers get 400 (msgspec
  and the request structs), other content types 415 before the body is read.
- **Clients that hang up**: what they asked for is still done, whole (a create is committed
  with its message and event, or not at all), nothing is logged at error level and nothing is
  held afterwards.
- **A body that never arrives** (the client hangs up mid-body, or sends `Transfer-Encoding:
  chunked` with a body that is not chunked) is the client's doing: 400, logged at info.
"""


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=96, break_long_words=False, break_on_hyphens=False)


def write_section(results: list[CaseResult], sizes: Sizes, stamp: str) -> None:
    """Replace (or append) the Abuse section of docs/reliability.md."""
    intro = (
        "Produced by `make faults` (after the scenarios above) or `uv run python -m "
        "bench.abuse`; raw figures in `bench/results/abuse.json`; the same cases with small "
        "counts and assertions in `tests/test_abuse_live.py`. Each case attacks the real API "
        f"server (`helpdesk serve`: Granian, {WORKERS} processes, "
        f"`RATE_LIMIT_PER_MINUTE={RATE_LIMIT_PER_MINUTE}`) while a bystander, other users of "
        f"the same app at {sizes.bystander_rate:g} requests/s from a process of its own (80 % "
        "ticket lists and 15 % creates on keep-alive connections, 5 % lists on a new "
        "connection; a request unanswered after 10 s is a timeout and counts as 10 s), is "
        f"measured; its baseline is the {sizes.baseline_s:g} s just before the attack, and it "
        f"goes on for {BYSTANDER_AFTER_S:g} s after the attack (its non-2xx column covers all "
        "of it)."
    )
    resources = (
        "Resources afterwards: RSS of the server's process tree, its PostgreSQL connections "
        "and the TCP connections to its port, quiet before the case → peak during it → after "
        "it, and how long after the bystander stopped they were back. They are back when TCP "
        "and busy database connections are at the baseline, "
        "PostgreSQL connections within what the pools keep (each process keeps what it "
        f"opened, up to DB_POOL_SIZE + 5 = 15) and RSS within {RSS_TOLERANCE_MB:g} MB of the "
        "baseline. After each case `/readyz`, one new bystander request and a burst of "
        "concurrent bystander requests (more than the connection gates admit at once) must "
        "all answer 200, and nothing may be half-written (tickets without their first message "
        "or created event, messages or events without a ticket) and tickets must have grown "
        "by exactly the 201s answered (for clients that hung up: by no more than they sent). "
        "The machine has 2 cores shared by the server, PostgreSQL, Redis, the attacker and "
        "the bystander, so an attack that costs CPU shows in the bystander's latency."
    )
    lines = [
        SECTION_START,
        "## Abuse: one misbehaving client must not hurt anyone else",
        "",
        *_wrap(intro),
        "",
        *_wrap(resources),
        "",
        f"Run {stamp} ({sizes.name} counts).",
        "",
        "| case | requests sent | answers seen | bystander p50 / p99 ms, baseline → attack | "
        "bystander non-2xx | resources afterwards | error lines in the log |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = r.bystander
        non_2xx = _fmt_outcomes(b["non_2xx"]) if b["non_2xx"] else "0"
        lines.append(
            f"| **{r.case}**: {r.title} | {r.sent} | {_fmt_outcomes(r.outcomes)} | "
            f"{_latency(b['baseline'])} → {_latency(b['attack'])} | {non_2xx} | "
            f"{_resources_cell(r)} | {_errors_cell(r)} |"
        )
    lines += ["", "### Problems found", ""]
    found = [(r.case, p) for r in results for p in r.problems]
    lines += [f"- **{case}**: {p}." for case, p in found] or ["None."]
    lines += ["", "### Per case", ""]
    for r in results:
        kinds = "; ".join(f"{k}: {_fmt_outcomes(v)}" for k, v in r.by_kind.items())
        extra = [*r.notes]
        for outcome, c in r.details.get("ended_after_s", {}).items():
            extra.append(
                f"'{outcome}' came after {c['min']:g}-{c['max']:g} s (median {c['median']:g} s, "
                f"{c['count']} connections)"
            )
        t = r.tickets
        extra.append(
            f"tickets: attacker +{t['attacker_delta']} ({t['attacker_201']} answered 201"
            + (f", {t['attacker_at_most']} creates sent" if t["attacker_at_most"] else "")
            + f"), bystander +{t['bystander_delta']} ({t['bystander_201']} answered 201)"
        )
        if "first_answer_after_ms" in r.details:
            w = r.details["first_answer_after_ms"]
            extra.append(
                f"first answers came after p50 {w['p50_ms']:g} ms, p99 {w['p99_ms']:g} ms, "
                f"max {w['max_ms']:g} ms"
            )
        fresh = r.bystander["attack_fresh_connections"]
        if fresh.get("count"):
            extra.append(
                "bystander lists on new connections during the attack: p50 / p99 "
                f"{_latency(fresh)} ms"
            )
        if r.log["warnings"]:
            extra.append(f"warning lines: {r.log['warnings']}")
        item = f"- **{r.case}** ({r.attack_s:g} s): {kinds}. " + "; ".join(extra) + "."
        lines += _wrap(item)[:1] + ["  " + line for line in _wrap(item)[1:]]
    lines += ["", DEFENDED, SECTION_END, ""]
    section = "\n".join(lines)
    text = REPORT.read_text() if REPORT.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    REPORT.write_text(text)


def abuse_section(text: str) -> str:
    """The Abuse section of a reliability report (for bench/faults.py to keep it)."""
    if SECTION_START in text and SECTION_END in text:
        return (
            SECTION_START + text.split(SECTION_START, 1)[1].split(SECTION_END, 1)[0] + SECTION_END
        )
    return ""


# -- command line ------------------------------------------------------------------------------


def run_suite(names: list[str], sizes: Sizes) -> list[CaseResult]:
    """Start a server on the benchmark database and run ``names``; print each result."""
    fresh_database(DATABASE_URL)
    flush_redis(REDIS_URL)
    key = new_rsa_key()
    target = Target.start(
        database_url=DATABASE_URL,
        redis_url=REDIS_URL,
        public_pem=public_pem_of(key),
        sign=key_signer(key),
    )
    suite: Suite | None = None
    try:
        suite = Suite(target, sizes)
        results = []
        for name in names:
            print(f"-- abuse case {name}", flush=True)
            result = suite.run(name)
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
        return results
    finally:
        if suite is not None:
            suite.close()
        target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--case", action="append", choices=CASE_NAMES, help="repeatable")
    parser.add_argument("--quick", action="store_true", help="small counts (the tests' sizes)")
    parser.add_argument(
        "--report-from", type=Path, help="rewrite the docs section from a run's JSON; no run"
    )
    args = parser.parse_args(argv)
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        results = [CaseResult(**case) for case in saved["cases"]]
        write_section(results, Sizes(**saved["sizes"]), saved["stamp"])
        print(f"wrote the Abuse section of {REPORT.relative_to(ROOT)}")
        return 0
    names = args.case or CASE_NAMES
    sizes = QUICK if args.quick else FULL
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = run_suite(names, sizes)
    complete = names == CASE_NAMES and sizes is FULL
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / ("abuse.json" if complete else "abuse-partial.json")
    saved = {
        "stamp": stamp,
        "git": git_state(),
        "sizes": asdict(sizes),
        "cases": [asdict(r) for r in results],
    }
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    if complete:
        write_section(results, sizes, stamp)
        print(f"wrote the Abuse section of {REPORT.relative_to(ROOT)}")
    for r in results:
        print(f"{r.case}: " + ("; ".join(r.problems) if r.problems else "ok"))
    return 0 if all(not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
