"""Abuse suite: one misbehaving client must never hurt anyone else.

How to run it, what each case records and checks: bench/README.md, "Abuse suite", and the
section this writes in docs/reliability.md; tests/test_abuse_live.py runs it with assertions.
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
import secrets
import shutil
import socket
import struct
import sys
import tempfile
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

from bench.common import (
    BENCH_DIR,
    HOST,
    RESULTS_DIR,
    ROOT,
    Service,
    descendants,
    flush_redis,
    free_port,
    git_state,
    prepare_database,
    procfile_service,
    query,
    rss_mb,
    scan_log,
    service_env,
    summary_ms,
)
from domain.db import pool_capacity
from domain.settings import load_settings
from tests.tokens import TokenFactory, key_signer, new_rsa_key, public_pem_of

__all__ = ["scan_log"]

DATABASE_URL = "postgresql://root@127.0.0.1:5432/helpdesk_bench_abuse"
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
# Memory the server's processes may keep after a case (allocator arenas, caches).
RSS_TOLERANCE_MB = 32.0
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """How much of each attack a run sends: the defaults are ``FULL`` (``make faults``)."""

    name: str = "full"
    flood_requests: int = 3000
    flood_concurrency: int = 32
    bad_token_requests: int = 3000
    forged_users: int = 500
    slowloris: int = 200
    slow_bodies: int = 200
    idle_keepalive: int = 2000
    silent: int = 1300
    slow_seconds: float = 40.0
    body_repeats: int = 100
    path_repeats: int = 100
    hangups: int = 200
    baseline_s: float = 10.0
    recovery_timeout_s: float = 30.0
    bystander_rate: float = 30.0


FULL = Sizes()
QUICK = Sizes(
    "quick",
    flood_requests=300,
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
)


# -- tokens and raw HTTP/1.1 ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(alg: str, sub: str) -> str:
    header, claims = {"alg": alg, "typ": "JWT"}, {"sub": sub, "exp": int(time.time()) + 3600}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def hs256_with_public_pem(sub: str, public_pem: str) -> str:
    """The key-confusion attack: HMAC-signed with the server's public key as the secret
    (PyJWT refuses to produce this, so it is built by hand)."""
    signing_input = _unsigned("HS256", sub)
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


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
    lines += [f"Authorization: Bearer {token}"] if token is not None else []
    lines += [f"Content-Type: {content_type}"] if body and content_type else []
    lines += [f"Content-Length: {len(body)}"] if body else []
    lines += ["Connection: close"] if close else []
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


async def run_all(
    items: Iterable[T], each: Callable[[T], Awaitable[None]], concurrency: int
) -> None:
    """``each(item)`` for every item, at most ``concurrency`` at a time, in order."""
    queue = list(items)[::-1]

    async def worker() -> None:
        while queue:
            await each(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the server and what it holds -----------------------------------------------------------------

_STATES = ["ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE"]
_STATES += ["CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"]
_TCP_STATES = {f"{code:02X}": state for code, state in enumerate(_STATES, 1)}  # /proc/net/tcp


def server_sockets(port: int) -> Counter[str]:
    """The server side of every TCP connection to ``port`` by state, the accept queue's too
    (TIME_WAIT, the kernel's, and LISTEN, the listener itself, left out)."""
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                state = _TCP_STATES.get(fields[3], fields[3])
                ours = int(fields[1].rsplit(":", 1)[1], 16) == port
                if ours and state not in ("TIME_WAIT", "LISTEN"):
                    states[state] += 1
    return states


@dataclass
class Target:
    """The API server under attack, and what the attacks need to know about it."""

    api: Service
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
        return self.api.pid

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
        """The Procfile's API line in production mode, accepting tokens of ``public_pem``."""
        env = service_env(database_url, redis_url, APP_ENV="production", PORT=free_port())
        env |= {"JWT_PUBLIC_KEY": public_pem, "RATE_LIMIT_PER_MINUTE": str(rate_limit)}
        log_dir = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
        api = procfile_service("web", env, log_dir, args=["--workers", str(workers)])
        capacity = pool_capacity(load_settings(env))
        api.start().wait_ready()
        return cls(
            api, database_url, api.port, public_pem, sign, workers, capacity, secrets.token_hex(3)
        )

    def stop(self) -> None:
        self.api.stop()
        shutil.rmtree(self.api.log_path.parent, ignore_errors=True)


@dataclass
class Resources:
    rss_mb: float
    pg_connections: int
    pg_busy: int  # not idle: running a statement or inside a transaction
    tcp_connections: int
    tcp_states: dict[str, int] = field(default_factory=dict)

    def brief(self) -> str:
        busy = f"({self.pg_busy} busy), TCP {self.tcp_connections}"
        return f"RSS {self.rss_mb:.0f} MB, PG {self.pg_connections} {busy}"


class ResourceMonitor:
    """The API server's resources: RSS of its processes, its PostgreSQL connections
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
        rss = rss_mb(descendants(self.target.pid))
        return Resources(rss, int(total), int(busy), sum(sockets.values()), dict(sockets))

    def back_to(self, now: Resources, baseline: Resources) -> bool:
        """Back at ``baseline``: no more TCP connections, no busy database connection, no more
        PostgreSQL connections than the baseline or than the pools keep (they keep what they
        opened), memory within RSS_TOLERANCE_MB."""
        pools = self.target.workers * self.target.pool_capacity
        return (
            now.tcp_connections <= baseline.tcp_connections
            and now.pg_busy <= baseline.pg_busy
            and now.pg_connections <= max(baseline.pg_connections, pools)
            and now.rss_mb <= baseline.rss_mb + RSS_TOLERANCE_MB
        )

    def close(self) -> None:
        self.conn.close()


HALF_WRITTEN = (
    "tickets_without_first_message",
    "tickets_without_created_event",
    "messages_without_ticket",
    "events_without_ticket",
)


def half_written(database_url: str) -> dict[str, int]:
    (row,) = query(
        database_url,
        "SELECT (SELECT count(*) FROM tickets t WHERE NOT EXISTS"
        "  (SELECT 1 FROM messages m WHERE m.ticket_id = t.id)),"
        " (SELECT count(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM ticket_events e"
        "  WHERE e.ticket_id = t.id AND e.type = 'ticket.created')),"
        " (SELECT count(*) FROM messages m WHERE NOT EXISTS"
        "  (SELECT 1 FROM tickets t WHERE t.id = m.ticket_id)),"
        " (SELECT count(*) FROM ticket_events e WHERE NOT EXISTS"
        "  (SELECT 1 FROM tickets t WHERE t.id = e.ticket_id))",
    )
    return dict(zip(HALF_WRITTEN, (int(v) for v in row), strict=True))


def tickets_of(database_url: str, user_prefix: str) -> int:
    sql = "SELECT count(*) FROM tickets WHERE starts_with(user_id, %s)"
    return int(query(database_url, sql, user_prefix)[0][0])


# -- the bystander --------------------------------------------------------------------------------

BystanderRecord = tuple[float, str, str, float]  # (started, kind, outcome, latency s)


async def _bystander_load(
    conn: Connection, base_url: str, port: int, tokens: list[str], rate: float
) -> list[BystanderRecord]:
    """Of every 20 requests: 16 lists and 3 creates on keep-alive connections, 1 list on a new
    connection (a client that arrives during the attack)."""
    records: list[BystanderRecord] = []
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:

        async def one(n: int) -> None:
            kind = {3: "create", 9: "create", 15: "create", 19: "fresh list"}.get(n % 20, "list")
            token, started = tokens[n % len(tokens)], time.monotonic()
            try:
                if kind == "fresh list":
                    outcome = await exchange(port, http_request("GET", TICKETS, token=token))
                elif kind == "create":
                    body = {"subject": f"bystander {n}", "body": "steady traffic"}
                    response = await client.post(TICKETS, json=body, headers=bearer(token))
                    outcome = str(response.status_code)
                else:
                    outcome = str((await client.get(TICKETS, headers=bearer(token))).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            records.append((started, kind, outcome, time.monotonic() - started))

        first = await client.get(TICKETS, headers=bearer(tokens[0]))
        conn.send(("ready", first.status_code))
        tasks, start, n = [], time.monotonic(), 0
        while not conn.poll():
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        conn.recv()  # "stop"
        await asyncio.gather(*tasks)
    return records


def _bystander_process(conn: Connection, base_url: str, port: int, tokens: list[str]) -> None:
    """The bystander's own process (its latency must not depend on the attacker's CPU)."""
    while (command := conn.recv())[0] != "exit":
        conn.send(
            ("records", asyncio.run(_bystander_load(conn, base_url, port, tokens, command[1])))
        )


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
        args = (child, target.base_url, target.port, self.tokens)
        self.process = context.Process(target=_bystander_process, args=args, daemon=True)
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
        return list(self.conn.recv()[1])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("exit",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# -- attacks --------------------------------------------------------------------------------------


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
        self.created_201 += outcome == "201"

    def outcomes(self) -> Counter[str]:
        return sum(self.by_kind.values(), Counter())

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
    """``requests`` over keep-alive connections, ``flood_concurrency`` at a time. A 429 without
    Retry-After is its own outcome."""
    concurrency = ctx.sizes.flood_concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=ctx.target.base_url, timeout=15.0, limits=limits
    ) as client:

        async def send(request: FloodRequest) -> None:
            kind, method, path, headers, body, expected = request
            try:
                response = await client.request(method, path, headers=headers, json=body)
                outcome = str(response.status_code)
                if response.status_code == 429 and "retry-after" not in response.headers:
                    outcome = "429 without Retry-After"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            result.record(kind, outcome, expected)

        await run_all(requests, send, concurrency)


async def attack_rate_limit(ctx: CaseContext) -> AttackResult:
    """One user far over RATE_LIMIT_PER_MINUTE: lists, creates and (not being an admin) admin
    lists, 32 at a time. The guards refuse with 429 (or 403) before a database slot is taken."""
    result, headers = AttackResult(), bearer(ctx.token("flooder"))
    requests: list[FloodRequest] = []
    for n in range(ctx.sizes.flood_requests):
        if n % 10 == 0:
            body = {"subject": f"flood {n}", "body": "over the limit"}
            requests.append(("create", "POST", TICKETS, headers, body, {"201", "429"}))
        elif n % 10 == 5:
            kind = "admin list (not admin)"
            requests.append((kind, "GET", ADMIN_TICKETS, headers, None, {"403", "429"}))
        else:
            requests.append(("list", "GET", TICKETS, headers, None, {"200", "429"}))
    started = time.time()
    await _http_flood(ctx, requests, result)
    windows = int(time.time() // 60 - started // 60) + 2  # fixed windows the flood can touch
    admitted = sum(n for c in result.by_kind.values() for o, n in c.items() if o != "429")
    result.details |= {"admitted_past_the_limiter": admitted, "limit_windows_at_most": windows}
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
    target, forge, user = ctx.target, key_signer(new_rsa_key()), f"{ctx.user_prefix}victim"
    forged = [
        forge(f"{ctx.user_prefix}forged-{i}", admin=i % 2 == 0)
        for i in range(ctx.sizes.forged_users)
    ]
    fixed: list[tuple[str, dict[str, str]]] = [
        ("garbage", bearer("not-a-jwt")),
        ("garbage", bearer("a.b.c")),
        ("garbage", bearer(_b64(os.urandom(300)) + "." + _b64(os.urandom(40)))),
        ("expired", bearer(target.sign(user, exp_in=-3600))),
        ("signed by a foreign RSA key", bearer(forge(user))),
        ("signed by a foreign RSA key", bearer(forge(user, admin=True))),
        ("alg: none", bearer(_unsigned("none", user) + ".")),
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
    endpoints = [("GET", TICKETS), ("POST", TICKETS), ("GET", ADMIN_TICKETS)]
    body = {"subject": "forged", "body": "should never be stored"}
    requests: list[FloodRequest] = []
    n_forged = 0
    for n in range(ctx.sizes.bad_token_requests):
        kind, headers = cycle[n % len(cycle)]
        if not headers and kind == "many users, foreign key":
            headers, n_forged = bearer(forged[n_forged % len(forged)]), n_forged + 1
        method, path = endpoints[(n // len(cycle) + n) % len(endpoints)]  # every kind, each one
        requests.append((kind, method, path, headers, body if method == "POST" else None, {"401"}))
    result = AttackResult()
    await _http_flood(ctx, requests, result)
    return result


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Held = Callable[[int, float, Opener], Awaitable[tuple[str, float | None]]]


async def _hold(
    ctx: CaseContext, count: int, connection: Held, kind: Callable[[int], str], expected: set[str]
) -> AttackResult:
    """``count`` connections at once, each ``connection(n, deadline, open)`` until the case's
    deadline (``slow_seconds``); how each ended, and after how many seconds when the server
    ended it. Connections are opened 100 at a time."""
    result, deadline = AttackResult(), time.monotonic() + ctx.sizes.slow_seconds
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
            "count": len(t),
            "min": round(min(t), 1),
            "median": round(sorted(t)[len(t) // 2], 1),
            "max": round(max(t), 1),
        }
        for outcome, t in ended_after.items()
    }
    return result


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


async def _held_silent(ctx: CaseContext, count: int, kind: str, trickle: bytes) -> AttackResult:
    """``count`` connections that send ``trickle`` one byte a second (or nothing at all)."""

    async def connection(n: int, deadline: float, open_: Opener) -> tuple[str, float | None]:
        return await _trickle(open_, b"", trickle, deadline)

    expected = {"open when the client gave up", "closed by server", "408"}
    return await _hold(ctx, count, connection, lambda n: kind, expected)


async def attack_slowloris(ctx: CaseContext) -> AttackResult:
    """Connections that send a valid request's headers one byte a second."""
    request = http_request("GET", TICKETS, token=ctx.token("slowloris"), close=False)
    result = await _held_silent(ctx, ctx.sizes.slowloris, "headers at 1 byte/s", request)
    result.notes.append(
        f"the request is {len(request)} bytes, so none completes in {ctx.sizes.slow_seconds:g} s"
    )
    return result


async def attack_slow_body(ctx: CaseContext) -> AttackResult:
    """POSTs whose headers arrive at once and whose body arrives one byte a second: half a
    valid ticket of ~33 bytes (complete after ~33 s), half a body announced as 400 bytes that
    never completes (the client gives up at the end of the case)."""

    async def connection(n: int, deadline: float, open_: Opener) -> tuple[str, float | None]:
        body = json.dumps({"subject": f"slow {n}", "body": "x" * (1 if n % 2 == 0 else 400)})
        data = body.encode()[: 400 if n % 2 else None]
        request = http_request(
            "POST", TICKETS, token=ctx.token(f"slow-body-{n}"), body=data, close=False
        )
        return await _trickle(open_, request[: -len(data)], data, deadline)

    def kind(n: int) -> str:
        return "abandoned body at 1 byte/s" if n % 2 else "complete body at 1 byte/s"

    expected = {"201", "open when the client gave up"}
    result = await _hold(ctx, ctx.sizes.slow_bodies, connection, kind, expected)
    result.notes.append(
        "a complete body is ~33 bytes, so it completes only when the case lasts longer "
        f"(this run: {ctx.sizes.slow_seconds:g} s)"
    )
    return result


async def attack_idle_keepalive(ctx: CaseContext) -> AttackResult:
    """Connections that make one request with keep-alive, read the answer, then stay idle."""
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
    result = await _hold(
        ctx, ctx.sizes.idle_keepalive, connection, lambda n: "GET /healthz, then idle", expected
    )
    result.details["first_answer_after_ms"] = summary_ms(waits)
    return result


async def attack_silent(ctx: CaseContext) -> AttackResult:
    """Connections that are opened and never send a byte."""
    return await _held_silent(ctx, ctx.sizes.silent, "connected, silent", b"")


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def hostile_bodies(tokens: Sequence[str], first: int = 0) -> list[tuple[str, bytes, set[str]]]:
    """(kind, raw request, expected statuses) for POST /v1/support/tickets, the requests signed
    in as ``tokens[first]``, ``tokens[first + 1]``... (round the list)."""
    nine, emoji, s_b = b"9" * 10_000, "\U0001f600", b'{"subject": "s", "body": "b"'

    def js(value: dict[str, Any]) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    dupes = b'{"subject": "first", "subject": "second", "body": "a", "body": "b"}'
    nested = b'{"subject": %s, "body": "x"}' % _nested(30_000)
    emoji_200 = js({"subject": emoji * 200, "body": "x"})
    kinds: list[tuple[str, bytes, str]] = [
        ("64 kB of nested arrays", _nested(32_000), "400"),
        ("60 kB of nested arrays in subject", nested, "400"),
        ("NUL (\\u0000) in subject", b'{"subject": "a\\u0000b", "body": "x"}', "400"),
        ("NUL (\\u0000) in body", b'{"subject": "s", "body": "x\\u0000"}', "400"),
        ("raw NUL byte in subject", b'{"subject": "a\x00b", "body": "x"}', "400"),
        ("invalid UTF-8", b'{"subject": "a\xff\xfe\xc0b", "body": "x"}', "400"),
        ("60 kB of 4-byte emoji in body", js({"subject": "emoji", "body": emoji * 15_000}), "201"),
        ("emoji subject at the 200-character limit", emoji_200, "201"),
        ("emoji subject over the limit", js({"subject": emoji * 201, "body": "x"}), "400"),
        ("10,000-digit integer as priority", s_b + b', "priority": ' + nine + b"}", "400"),
        ("10,000-digit number in an unknown field", s_b + b', "n": ' + nine + b"}", "400"),
        ("10,000-digit float", s_b + b', "priority": 0.' + nine + b"e99999}", "400"),
        ("duplicate keys", dupes, "201"),
        ("text/plain", s_b + b"}", "415"),
        ("form-urlencoded", b"subject=s&body=b", "415"),
        ("no content type", s_b + b"}", "415"),
        ("truncated JSON", b'{"subject": "s", "bo', "400"),
        ("JSON null", b"null", "400"),
        ("70 kB body (over MAX_BODY_BYTES)", js({"subject": "s", "body": "x" * 70_000}), "413"),
    ]  # fmt: skip
    types = {"text/plain": "text/plain", "form-urlencoded": "application/x-www-form-urlencoded"}
    requests = []
    for n, (kind, body, expected) in enumerate(kinds):
        token = tokens[(first + n) % len(tokens)]
        ct = None if kind == "no content type" else types.get(kind, "application/json")
        request = http_request("POST", TICKETS, token=token, body=body, content_type=ct)
        requests.append((kind, request, {expected}))
    # Bodies without Content-Length: chunked over the limit, and chunked encoding that is not
    # chunked encoding at all (a body the server cannot read: the client's fault, so a 400).
    chunked_100k = b"%x\r\n%s\r\n" % (1000, b"x" * 1000) * 100 + b"0\r\n\r\n"
    for kind, body, expected in [
        ("chunked 100 kB (over MAX_BODY_BYTES)", chunked_100k, "413"),
        ("invalid chunked encoding", b'{"subject": "s", "body": "b"}', "400"),
    ]:
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        token = tokens[(first + len(requests)) % len(tokens)]
        head = http_request("POST", TICKETS, token=token, headers=headers, content_type=None)
        requests.append((kind, head + body, {expected}))
    return requests


def hostile_paths(token: str) -> list[tuple[str, bytes, set[str]]]:
    """(kind, raw request, expected statuses) with hostile paths, query strings and headers."""
    long_id, reply = "A" * 10_000, b'{"body": "x"}'
    paths: list[tuple[str, str, str, bytes, str]] = [
        ("10 kB ticket id (GET)", "GET", f"{TICKETS}/{long_id}", b"", "404"),
        ("10 kB ticket id (reply)", "POST", f"{TICKETS}/{long_id}/messages", reply, "404"),
        ("10 kB ticket id (close)", "POST", f"{TICKETS}/{long_id}/close", b"", "404"),
        ("10 kB ticket id (admin, not admin)", "GET", f"{ADMIN_TICKETS}/{long_id}", b"", "403"),
        ("%00 as ticket id", "GET", f"{TICKETS}/%00", b"", "404"),
        ("%00 inside a ticket id", "GET", f"{TICKETS}/01ARZ3NDEKTSV4RRFF%00Q69G5FAV", b"", "404"),
        ("%ff as ticket id", "GET", f"{TICKETS}/%ff", b"", "404"),
        ("9 kB of %ff", "GET", f"{TICKETS}/" + "%ff" * 3000, b"", "404"),
        ("%zz (not percent-encoding)", "GET", f"{TICKETS}/%zz", b"", "404"),
        ("overlong UTF-8 dots %c0%ae", "GET", f"{TICKETS}/%c0%ae%c0%ae/%c0%ae%c0%ae", b"", "404"),
        ("../ encoded", "GET", f"{TICKETS}/..%2f..%2f..%2fetc%2fpasswd", b"", "404"),
        ("../ raw", "GET", f"{TICKETS}/../../../etc/passwd", b"", "404"),
        ("%2e%2e segments", "GET", f"{TICKETS}/%2e%2e/%2e%2e/healthz", b"", "404"),
        ("garbage at the root", "GET", "/%ff%fe%00%0d%0a", b"", "404"),
        ("?page=%00", "GET", f"{TICKETS}?page=%00", b"", "400"),
        ("?page=10^23", "GET", f"{TICKETS}?page=" + "9" * 23, b"", "400"),
        ("?per_page=-1", "GET", f"{TICKETS}?per_page=-1", b"", "400"),
        ("100 kB URL", "GET", f"{TICKETS}?" + "a" * 100_000, b"", "414"),
        ("unknown method", "BREW", TICKETS, b"", "405"),
    ]
    requests = [
        (kind, http_request(method, path, token=token, body=body), {expected})
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
    host = f"GET {TICKETS} HTTP/1.1\r\nHost: \x01\x02\r\nAuthorization: Bearer {token}\r\n"
    requests.append(
        ("control bytes in Host", f"{host}Connection: close\r\n\r\n".encode("latin-1"), {"400"})
    )
    return requests


async def _raw_flood(
    ctx: CaseContext, requests: Sequence[tuple[str, bytes, set[str]]]
) -> AttackResult:
    """Each request on a new connection, 16 at a time."""
    result = AttackResult()

    async def send(item: tuple[str, bytes, set[str]]) -> None:
        kind, request, expected = item
        result.record(kind, await exchange(ctx.target.port, request, wait_s=15.0), expected)

    await run_all(requests, send, 16)
    return result


async def attack_hostile_bodies(ctx: CaseContext) -> AttackResult:
    """Hostile JSON bodies on POST /v1/support/tickets with a valid token."""
    # Spread over 128 users, so that the rate limit does not answer for the parser; each repeat
    # starts at other users.
    tokens = [ctx.token(f"body-{n}") for n in range(128)]
    return await _raw_flood(
        ctx, [r for i in range(ctx.sizes.body_repeats) for r in hostile_bodies(tokens, 21 * i)]
    )


async def attack_hostile_paths(ctx: CaseContext) -> AttackResult:
    """Hostile paths, query strings and headers with a valid token (a user per repeat, each
    well under the limit)."""
    return await _raw_flood(
        ctx,
        [r for i in range(ctx.sizes.path_repeats) for r in hostile_paths(ctx.token(f"paths-{i}"))],
    )


async def attack_hangups(ctx: CaseContext) -> AttackResult:
    """Clients that send a whole valid request (list or create) and close before the answer:
    half with a normal close (FIN), half with a reset (RST)."""
    result = AttackResult(created_at_most=0)

    async def send(n: int) -> None:
        token, what = ctx.token(f"hangup-{n}"), "create" if n % 2 else "list"
        body = json.dumps({"subject": f"hang-up {n}", "body": "gone"}).encode() if n % 2 else b""
        request = http_request("POST" if n % 2 else "GET", TICKETS, token=token, body=body)
        kind = f"{what}, then {'reset (RST)' if n % 4 >= 2 else 'close (FIN)'}"
        result.created_at_most = (result.created_at_most or 0) + n % 2
        try:
            _, writer = await _connect(ctx.target.port, 10.0)
        except (OSError, TimeoutError):
            result.record(kind, "connect failed", {"sent, then hung up"})
            return
        writer.write(request)
        await writer.drain()
        if n % 4 >= 2:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        result.record(kind, "sent, then hung up", {"sent, then hung up"})

    await run_all(range(ctx.sizes.hangups), send, 32)
    await asyncio.sleep(1.0)  # let the server finish what it was doing for them
    return result


# The routes that take no token: Prometheus' scrape, the probes, the API schema, the console.
OPEN_PATHS = ("/metrics", "/healthz", "/readyz", "/schema/openapi.json", "/console/")


async def attack_open_endpoints(ctx: CaseContext) -> AttackResult:
    """The routes that need no token, flooded without one, 32 at a time: anyone can send these,
    so each must cost about what a health check costs (a scrape renders every process's
    samples, a readiness check asks the database)."""
    result = AttackResult()
    requests: list[FloodRequest] = [
        (path, "GET", path, {}, None, {"200"})
        for n in range(ctx.sizes.flood_requests)
        for path in [OPEN_PATHS[n % len(OPEN_PATHS)]]
    ]
    await _http_flood(ctx, requests, result)
    return result


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    attack: Callable[[CaseContext], Awaitable[AttackResult]]
    time_limit_s: float | None = None  # None: the case's slow_seconds + 30 s

    def limit(self, sizes: Sizes) -> float:
        return self.time_limit_s or sizes.slow_seconds + 30


CASES = {
    case.name: case
    for case in [
        Case("rate-limit", "one user far over the rate limit (429 flood)", attack_rate_limit, 120),
        Case(
            "bad-tokens", "invalid, forged and expired tokens (401 flood)", attack_bad_tokens, 120
        ),
        Case("slowloris", "request headers at one byte a second", attack_slowloris),
        Case("slow-body", "POST bodies at one byte a second", attack_slow_body),
        Case("idle-keepalive", "idle keep-alive connections", attack_idle_keepalive),
        Case("silent", "connections that never send a byte", attack_silent),
        Case(
            "hostile-bodies", "hostile JSON bodies with a valid token", attack_hostile_bodies, 120
        ),
        Case(
            "hostile-paths", "hostile paths, query strings and headers", attack_hostile_paths, 120
        ),
        Case("hang-ups", "clients that hang up before reading the answer", attack_hangups, 60),
        Case("open-endpoints", "the routes without a token, flooded", attack_open_endpoints, 120),
    ]
}
CASE_NAMES = list(CASES)


# -- running a case -------------------------------------------------------------------------------


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
    records: list[BystanderRecord], ready: float, start: float, end: float
) -> dict[str, Any]:
    attack = [r for r in records if start <= r[0] <= end]
    creates = [outcome for _, kind, outcome, _ in records if kind == "create"]
    return {
        "requests": len(records),
        "baseline": summary_ms(r[3] for r in records if ready <= r[0] < start),
        "attack": summary_ms(r[3] for r in attack),
        "after": summary_ms(r[3] for r in records if r[0] > end),
        "attack_fresh_connections": summary_ms(r[3] for r in attack if r[1] == "fresh list"),
        "rate_during_attack": round(len(attack) / max(end - start, 1e-9), 1),
        "non_2xx": dict(Counter(f"{kind}: {o}" for _, kind, o, _ in records if o[0] != "2")),
        "creates_201": creates.count("201"),
        "creates_unanswered": sum(1 for o in creates if not o.isdigit()),
    }


async def _during(
    attack: Awaitable[AttackResult], monitor: ResourceMonitor, limit_s: float
) -> tuple[AttackResult, Resources]:
    """Run the attack (bounded by ``limit_s``), sampling the resources every second; the result
    and the peak of each resource."""
    peak = await asyncio.to_thread(monitor.snapshot)
    task = asyncio.ensure_future(attack)
    deadline = time.monotonic() + limit_s
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        now = await asyncio.to_thread(monitor.snapshot)
        peak = Resources(
            max(peak.rss_mb, now.rss_mb),
            max(peak.pg_connections, now.pg_connections),
            max(peak.pg_busy, now.pg_busy),
            max(peak.tcp_connections, now.tcp_connections),
        )
        if time.monotonic() > deadline and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise TimeoutError(f"the attack did not end within {limit_s:g} s")
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
                try:
                    headers = bearer(bystander.tokens[n % len(bystander.tokens)])
                    return str((await c.get(TICKETS, headers=headers)).status_code)
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
    prefixes = {"all": "", "bystander": bystander.user_prefix, "attacker": ctx.user_prefix}
    before = {who: tickets_of(target.database_url, prefix) for who, prefix in prefixes.items()}

    bystander.begin(sizes.bystander_rate)
    ready_at = time.monotonic()
    time.sleep(sizes.baseline_s)
    attack_start = time.monotonic()
    attack, peak = run_async(_during(case.attack(ctx), monitor, case.limit(sizes)))
    attack_end = time.monotonic()
    time.sleep(BYSTANDER_AFTER_S)  # and just after it, when anything left behind would show
    records = bystander.end()

    # Back to the baseline: counted from when the bystander stopped (its own connections
    # count until then).
    stopped, now = time.monotonic(), monitor.snapshot()
    while (
        not monitor.back_to(now, baseline)
        and time.monotonic() <= stopped + sizes.recovery_timeout_s
    ):
        time.sleep(0.5)
        now = monitor.snapshot()
    recovered_in = round(time.monotonic() - stopped, 1) if monitor.back_to(now, baseline) else None
    after = _after_checks(target, bystander)
    time.sleep(0.3)  # the access lines of the last requests
    log = scan_log(target.api.output()[log_offset:])
    by = _bystander_report(records, ready_at, attack_start, attack_end)
    delta = {who: tickets_of(target.database_url, prefixes[who]) - before[who] for who in prefixes}
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
        tickets={
            "attacker_delta": delta["attacker"],
            "attacker_201": attack.created_201,
            "attacker_at_most": attack.created_at_most,
            "bystander_delta": delta["bystander"],
            "bystander_201": by["creates_201"],
            "all_delta": delta["all"],
        },
        half_written=half_written(target.database_url),
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
    found = [
        f"unexpected answers to '{kind}': {outcomes}" for kind, outcomes in r.unexpected.items()
    ]
    t, by = r.tickets, r.bystander
    checks = [
        (by["non_2xx"], f"the bystander saw non-2xx: {by['non_2xx']}"),
        (by["creates_unanswered"], f"{by['creates_unanswered']} bystander creates unanswered"),
        (any(r.half_written.values()), f"half-written rows: {r.half_written}"),
        (
            t["bystander_delta"] != t["bystander_201"] and not by["creates_unanswered"],
            f"bystander tickets grew by {t['bystander_delta']}, 201s: {t['bystander_201']}",
        ),
        (
            t["attacker_at_most"] is None and t["attacker_delta"] != t["attacker_201"],
            f"attacker tickets grew by {t['attacker_delta']}, 201s: {t['attacker_201']}",
        ),
        (
            t["attacker_at_most"] is not None and t["attacker_delta"] > t["attacker_at_most"],
            f"attacker tickets grew by {t['attacker_delta']} > {t['attacker_at_most']} sent",
        ),
        (
            t["all_delta"] != t["attacker_delta"] + t["bystander_delta"],
            f"tickets of unknown users appeared: {t}",
        ),
        (
            not r.resources["back_to_baseline"],
            "resources not back within the recovery time: "
            f"{Resources(**r.resources['baseline']).brief()} before, "
            f"{Resources(**r.resources['after']).brief()} after",
        ),
        (r.after["readyz"] != 200, f"/readyz answered {r.after['readyz']} after the case"),
        (
            r.after["bystander_request"] != "200",
            f"a bystander request after the case got {r.after['bystander_request']}",
        ),
        (
            set(r.after["burst"]) != {"200"},
            f"a burst of bystander requests after the case got {r.after['burst']}",
        ),
        (r.log["error_lines"], f"{r.log['error_lines']} error lines in the server log"),
    ]
    return found + [message for failed, message in checks if failed]


class Suite:
    """A target, its bystander and its resource monitor, and the results of the cases run."""

    def __init__(self, target: Target, sizes: Sizes) -> None:
        self.target, self.sizes = target, sizes
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


# -- report ---------------------------------------------------------------------------------------


def _fmt_outcomes(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))


def _latency(summary: dict[str, Any]) -> str:
    return f"{summary['p50_ms']:g} / {summary['p99_ms']:g}" if summary.get("count") else "-"


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


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=96, break_long_words=False, break_on_hyphens=False)


def write_section(results: list[CaseResult], sizes: Sizes, stamp: str) -> None:
    """Replace (or append) the Abuse section of docs/reliability.md; its closing part, what is
    and is not defended, is bench/abuse_defended.md."""
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
        "and busy database connections are at the baseline, PostgreSQL connections within what "
        "the pools keep (each process keeps what it opened, up to DB_POOL_SIZE + 5 = 15) and "
        f"RSS within {RSS_TOLERANCE_MB:g} MB of the baseline. After each case `/readyz`, one "
        "new bystander request and a burst of concurrent bystander requests (more than the "
        "connection gates admit at once) must all answer 200, and nothing may be half-written "
        "(tickets without their first message or created event, messages or events without a "
        "ticket) and tickets must have grown by exactly the 201s answered (for clients that "
        "hung up: by no more than they sent). The machine has 2 cores shared by the server, "
        "PostgreSQL, Redis, the attacker and the bystander, so an attack that costs CPU shows "
        "in the bystander's latency."
    )
    lines = [SECTION_START, "## Abuse: one misbehaving client must not hurt anyone else", ""]
    lines += [*_wrap(intro), "", *_wrap(resources), "", f"Run {stamp} ({sizes.name} counts).", ""]
    lines += [
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
            f"{_resources_cell(r)} | {r.log['error_lines']} |"
        )
    found = [f"- **{r.case}**: {p}." for r in results for p in r.problems]
    lines += ["", "### Problems found", "", *(found or ["None."]), "", "### Per case", ""]
    for r in results:
        extra = [*r.notes]
        for outcome, c in r.details.get("ended_after_s", {}).items():
            extra.append(
                f"'{outcome}' came after {c['min']:g}-{c['max']:g} s (median {c['median']:g} s, "
                f"{c['count']} connections)"
            )
        t = r.tickets
        sent = f", {t['attacker_at_most']} creates sent" if t["attacker_at_most"] else ""
        extra.append(
            f"tickets: attacker +{t['attacker_delta']} ({t['attacker_201']} answered 201{sent}), "
            f"bystander +{t['bystander_delta']} ({t['bystander_201']} answered 201)"
        )
        if w := r.details.get("first_answer_after_ms"):
            extra.append(
                f"first answers came after p50 {w['p50_ms']:g} ms, p99 {w['p99_ms']:g} ms, "
                f"max {w['max_ms']:g} ms"
            )
        if r.bystander["attack_fresh_connections"].get("count"):
            fresh = _latency(r.bystander["attack_fresh_connections"])
            extra.append(
                f"bystander lists on new connections during the attack: p50 / p99 {fresh} ms"
            )
        if r.log["warnings"]:
            extra.append(f"warning lines: {r.log['warnings']}")
        kinds = "; ".join(f"{k}: {_fmt_outcomes(v)}" for k, v in r.by_kind.items())
        item = _wrap(f"- **{r.case}** ({r.attack_s:g} s): {kinds}. " + "; ".join(extra) + ".")
        lines += item[:1] + ["  " + line for line in item[1:]]
    lines += ["", (BENCH_DIR / "abuse_defended.md").read_text(), SECTION_END, ""]
    text = REPORT.read_text() if REPORT.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + "\n".join(lines) + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    REPORT.write_text(text)


# -- command line ---------------------------------------------------------------------------------


def run_suite(names: list[str], sizes: Sizes) -> list[CaseResult]:
    """Start a server on the benchmark database and run ``names``; print each result."""
    prepare_database(DATABASE_URL, fresh=True)
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
            results.append(suite.run(name))
            print(json.dumps(asdict(results[-1])), flush=True)
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
        "--report-from", type=Path, help="rewrite the docs section from a run's JSON"
    )
    args = parser.parse_args(argv)
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        write_section(
            [CaseResult(**case) for case in saved["cases"]], Sizes(**saved["sizes"]), saved["stamp"]
        )
        print(f"wrote the Abuse section of {REPORT.relative_to(ROOT)}")
        return 0
    names, sizes = args.case or CASE_NAMES, QUICK if args.quick else FULL
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
