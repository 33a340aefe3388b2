"""Starting the real worker and scheduler processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from domain.outbox import (
    EVENTS_QUEUE,
    MAINTENANCE_QUEUE,
    NOTIFICATIONS_QUEUE,
    SLA_QUEUE,
    SLA_SWEEP_QUEUE,
    WEBHOOKS_QUEUE,
)

ROOT = Path(__file__).resolve().parent.parent
# The module of actors that consumes each queue, as the Procfile's pools run them.
POOL_MODULES = {
    EVENTS_QUEUE: "workers.events",
    NOTIFICATIONS_QUEUE: "workers.notifications",
    WEBHOOKS_QUEUE: "workers.webhooks",
    SLA_QUEUE: "workers.sla",
    SLA_SWEEP_QUEUE: "workers.sla",
    MAINTENANCE_QUEUE: "workers.maintenance",
}


class ServiceProcess:
    """A child process (dramatiq workers, the scheduler) with its output kept in a temp file."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_text: str | None) -> None:
        self.argv = argv
        self.env = env
        self.ready_text = ready_text
        # Kept open for the child's lifetime; closed in stop().
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="helpdesk-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.ready_text:
            deadline = time.monotonic() + timeout
            while self.ready_text not in self.output():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.argv[:3]} did not start:\n{self.output()[-3000:]}")
                time.sleep(0.1)
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: no chance to ack, nack or clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def worker_pids(self) -> list[int]:
        """PIDs of dramatiq's worker subprocesses (children of the main process)."""
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]


def dramatiq_workers(
    env: dict[str, str], queues: list[str], *, processes: int = 1, threads: int = 8
) -> ServiceProcess:
    """One Dramatiq worker for ``queues``, with only the modules of actors that consume them
    (several pools in one process when given the queues of several)."""
    modules = sorted({POOL_MODULES[queue] for queue in queues})
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        *modules,
        "--queues",
        *queues,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    return ServiceProcess(argv, env, ready_text="ready for action")


def scheduler(env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess([sys.executable, "-m", "workers.scheduler"], env, "scheduler.started")


class PrivateRedis:
    """A redis-server of our own on a random port, with no persistence: stopping it and starting
    it again gives an empty Redis, like a production Redis restarted without a disk."""

    def __init__(self) -> None:
        from tests.sinks import free_port

        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temp dir, random port, trust auth), for
    tests that stop and start the database. Runs as the ``postgres`` system user when we are
    root, since PostgreSQL refuses to run as root."""

    def __init__(self) -> None:
        import glob
        import shutil

        from tests.sinks import free_port

        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        self.bin = Path(versions[-1]) if versions else Path(shutil.which("pg_ctl") or "").parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="helpdesk-pg-"))
        self.data = self.dir / "data"
        self.as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/helpdesk"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.dir)

    def init(self) -> PrivatePostgres:
        if self.as_postgres:
            subprocess.run(["chown", "postgres", str(self.dir)], check=True)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> PrivatePostgres:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.dir / "log"),
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        import shutil

        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ApiServer(ServiceProcess):
    """``helpdesk serve`` on 127.0.0.1:PORT (from ``env``), ready once /healthz answers."""

    def __init__(self, env: dict[str, str], *, workers: int | None = None) -> None:
        argv = [sys.executable, "-m", "api.cli", "serve"]
        if workers:
            argv += ["--workers", str(workers)]
        super().__init__(argv, env, ready_text=None)
        self.base_url = f"http://127.0.0.1:{env['PORT']}"

    def start(self, timeout: float = 120.0) -> ApiServer:
        import httpx

        super().start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start:\n{self.output()[-3000:]}")
            time.sleep(0.2)
