"""Run a command with PostgreSQL and Redis available: real ones where they answer, embedded ones
(started here, stopped here) where they don't."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from devservices.plan import MODE_VARIABLE, Choice, PlanError, Profile, address, plan, read_env_file
from devservices.servers import (
    EmbeddedPostgres,
    EmbeddedRedis,
    ServerError,
    die_with_parent,
    postgres_bin_dir,
    redis_bin_dir,
)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long a Ctrl-C'd command has to stop on its own before it is told again; then how long a
# command that was told to stop has before it is killed.
INTERRUPT_GRACE_S = 10.0
STOP_GRACE_S = 30.0


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def say(message: str) -> None:
    print(f"devservices: {message}", file=sys.stderr, flush=True)


@dataclass
class Supervisor:
    profile: Profile
    command: list[str]
    data_dir: Path
    env_file: Path | None = None
    write_env: Path | None = None
    default_database_url: str | None = None
    default_redis_url: str | None = None
    _pending: list[int] = field(default_factory=list)
    _servers: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    # -- entry point ---------------------------------------------------------------------------

    def run(self) -> int:
        env = dict(os.environ)
        try:
            database, redis = plan(
                self.profile,
                {**env, **read_env_file(self.env_file)},
                default_database_url=self.default_database_url,
                default_redis_url=self.default_redis_url,
            )
        except PlanError as exc:
            say(str(exc))
            return 2
        child_env = _with_server_binaries(env)
        if not database.embedded and not redis.embedded:
            # Nothing to look after: become the command, so signals reach it directly.
            urls = {database.variable: str(database.url), redis.variable: str(redis.url)}
            child_env.update(urls)
            self._write_env(urls)
            say(f"using {_real(database)} and {_real(redis)}; nothing embedded")
            try:
                os.execvpe(self.command[0], self.command, child_env)
            except OSError as exc:
                say(f"cannot run {self.command[0]}: {exc}")
                return 127
        return self._run_embedded(database, redis, child_env)

    # -- with embedded servers -----------------------------------------------------------------

    def _run_embedded(self, database: Choice, redis: Choice, child_env: dict[str, str]) -> int:
        watched = _watched_ancestors()
        root = self._data_root()
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _raise)
        urls: dict[str, str] = {}
        try:
            try:
                if database.embedded:
                    postgres = EmbeddedPostgres(root, durable=self.profile.persistent)
                    self._servers.append(postgres)  # stopped below even if start() is cut short
                    postgres.start()
                    dbname = urlsplit(database.default_url).path.lstrip("/") or "helpdesk"
                    postgres.create_database(dbname)
                    urls[database.variable] = postgres.url(dbname)
                else:
                    urls[database.variable] = str(database.url)
                if redis.embedded:
                    server = EmbeddedRedis(root, durable=self.profile.persistent)
                    self._servers.append(server)
                    server.start()
                    urls[redis.variable] = server.url(
                        urlsplit(redis.default_url).path.lstrip("/") or "0"
                    )
                else:
                    urls[redis.variable] = str(redis.url)
                for signum in _STOP_SIGNALS:
                    signal.signal(signum, self._record)
            except ServerError as exc:
                say(str(exc))
                return 3
            except _Interrupted as exc:
                return 128 + exc.signum
            except KeyboardInterrupt:
                return 130
            child_env.update(urls)
            self._write_env(urls)
            say(self._describe(database, redis, root))
            try:
                child = subprocess.Popen(
                    self.command, env=child_env, preexec_fn=die_with_parent(signal.SIGTERM)
                )
            except OSError as exc:
                say(f"cannot run {self.command[0]}: {exc}")
                return 127
            returncode = self._supervise(child, watched)
            return returncode if returncode >= 0 else 128 - returncode
        finally:
            for signum in _STOP_SIGNALS:  # a second Ctrl-C must not cut the shutdown short
                signal.signal(signum, self._record)
            for running in reversed(self._servers):
                running.stop()
            if self.write_env is not None and urls:
                with contextlib.suppress(OSError):
                    self.write_env.unlink()
            if not self.profile.persistent:
                shutil.rmtree(root, ignore_errors=True)

    def _supervise(self, child: subprocess.Popen[bytes], watched: list[int]) -> int:
        interrupted_at: float | None = None
        told_at: float | None = None
        failed = False

        def tell(signum: int) -> None:
            nonlocal told_at
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
            told_at = told_at or time.monotonic()

        while (returncode := child.poll()) is None:
            now = time.monotonic()
            while self._pending:
                signum = self._pending.pop(0)
                if signum == signal.SIGINT:
                    # A Ctrl-C reaches the whole foreground process group, the command too.
                    interrupted_at = interrupted_at or now
                else:
                    tell(signum)
            if interrupted_at and told_at is None and now - interrupted_at > INTERRUPT_GRACE_S:
                tell(signal.SIGINT)
            if told_at is None and (
                os.getppid() != watched[0] or not all(map(_running, watched[1:]))
            ):
                say("the process that started this one is gone; stopping")
                tell(signal.SIGTERM)
            if told_at is None:
                for server in self._servers:
                    if not server.alive():
                        name = "PostgreSQL" if isinstance(server, EmbeddedPostgres) else "Redis"
                        say(f"the embedded {name} stopped (see {server.log}); stopping")
                        failed = True
                        tell(signal.SIGTERM)
                        break
            if told_at is not None and now - told_at > STOP_GRACE_S:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            time.sleep(0.1)
        return returncode or (1 if failed else 0)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)

    # -- helpers -------------------------------------------------------------------------------

    def _data_root(self) -> Path:
        base = self.data_dir.resolve()
        if not base.exists():
            # Enterable by others: as root, PostgreSQL runs as an unprivileged user.
            base.mkdir(parents=True)
            base.chmod(0o755)
        if self.profile.persistent:
            return base
        # A test run's servers live in a directory of their own, removed when the run ends;
        # one left by a run that was killed is removed by the next.
        for old in base.glob(f"{self.profile.name}-*"):
            pid = old.name.rpartition("-")[2]
            if pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        return base / f"{self.profile.name}-{os.getpid()}"

    def _write_env(self, urls: dict[str, str]) -> None:
        if self.write_env is None:
            return
        self.write_env.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# Written by devservices for the run in progress; do not edit."]
        lines += [f"{name}={url}" for name, url in urls.items()]
        self.write_env.write_text("\n".join(lines) + "\n")

    def _describe(self, database: Choice, redis: Choice, root: Path) -> str:
        embedded: list[str] = []
        why: list[str] = []
        for server in self._servers:
            if isinstance(server, EmbeddedPostgres):
                who = f" (as user {server.runs_as})" if server.runs_as else ""
                embedded.append(f"PostgreSQL {server.version()}{who} on 127.0.0.1:{server.port}")
            else:
                embedded.append(f"Redis {server.version()} on 127.0.0.1:{server.port}")
        chosen = [c for c in (database, redis) if c.embedded]
        if any(c.why.startswith(MODE_VARIABLE) for c in chosen):
            why.append(f"{MODE_VARIABLE}=embedded")
        silent = dict.fromkeys(
            address(c.default_url) for c in chosen if not c.why.startswith(MODE_VARIABLE)
        )
        if silent:
            why.append(f"nothing answers at {' or '.join(silent)}")
        kept = "kept between runs" if self.profile.persistent else "removed after the run"
        text = (
            f"embedded {' and '.join(embedded)} ({'; '.join(why)}), data in "
            f"{_shown(root)}/ ({kept})"
        )
        real = [_real(choice) for choice in (database, redis) if not choice.embedded]
        if real:
            text += f"; using {' and '.join(real)}"
        names = " and ".join(c.variable for c in (database, redis) if c.embedded)
        return f"{text}; to use your own servers instead, set {names} or {MODE_VARIABLE}=external"


def _raise(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signum)


def _real(choice: Choice) -> str:
    return f"{choice.service} at {address(str(choice.url))} ({choice.why})"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _watched_ancestors() -> list[int]:
    """The processes whose death ends the run: the parent, and its parent too when the parent
    is only ``uv run`` (so a killed ``make`` ends it, not just a killed ``uv``)."""
    parent = os.getppid()
    watched = [parent]
    try:
        with open(f"/proc/{parent}/stat") as stat:
            comm_end = (fields := stat.read()).rindex(")")
        if fields[fields.index("(") + 1 : comm_end] == "uv":
            watched.append(int(fields[comm_end + 2 :].split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    return watched


def _with_server_binaries(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the embedded servers' bin directories at the end of PATH: a command that
    starts a redis-server or pg_ctl of its own finds one even where the system has none."""
    env = dict(env)
    path = env.get("PATH", os.defpath).split(os.pathsep)
    for found in (redis_bin_dir(), postgres_bin_dir()):
        if found is not None and str(found) not in path:
            path.append(str(found))
    env["PATH"] = os.pathsep.join(path)
    return env
