"""Starting the real worker and scheduler processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.actors",
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
