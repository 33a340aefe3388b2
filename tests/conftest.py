"""Shared fixtures: a real PostgreSQL database migrated with Alembic, real Redis, signed tokens."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from api.cli import ensure_database, migrate
from domain.db import make_engine, make_sessionmaker
from domain.outbox import ALL_QUEUES
from domain.settings import Settings, load_settings
from tests.processes import ServiceProcess
from tests.sinks import HttpSink, SmtpSink
from tests.tokens import TokenFactory, key_signer, new_rsa_key, public_pem_of

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/helpdesk_test"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# -- what many test files share: import these ``from tests.conftest`` ----------------------------

USER_URL = "/v1/support/tickets"
ADMIN_URL = "/v1/admin/support/tickets"
MISSING_ID = "01JN2XG6H7J8K9M0N1P2Q3R4S5"  # a well-formed ULID that no ticket has
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
T0 = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)  # the tests' fixed moment; a Clock starts here
QUEUES = list(ALL_QUEUES)  # for worker processes that consume every queue
TEAM = ("team@support.test", "oncall@support.test")  # ADMIN_EMAILS of service_env


def iso(moment: datetime) -> str:
    """A moment as the API writes it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """A clock moved by hand, so every timestamp the code under test writes is known exactly."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> str:
        """Move on by ``timedelta(**delta)``; returns the new moment as the API writes it."""
        self.now += timedelta(**delta)
        return self.iso()

    def at(self, seconds: float) -> datetime:
        """Set the clock to ``seconds`` after T0."""
        self.now = T0 + timedelta(seconds=seconds)
        return self.now

    def iso(self) -> str:
        return iso(self.now)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the SMTP sink's chatter
    missing = []
    if not _reachable(TEST_DATABASE_URL, 5432):
        missing.append(f"PostgreSQL at {urlsplit(TEST_DATABASE_URL).netloc}")
    if not _reachable(TEST_REDIS_URL, 6379):
        missing.append(f"Redis at {urlsplit(TEST_REDIS_URL).netloc}")
    if missing:
        pytest.exit(
            "The tests need a running " + " and ".join(missing) + ". Start them (see README, "
            "'Running the tests') or point TEST_DATABASE_URL / TEST_REDIS_URL elsewhere.",
            returncode=3,
        )


def recreate_database(url: str) -> None:
    """Drop and recreate the database in ``url`` so every run starts from an empty schema."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = str(info["dbname"])
    info["dbname"] = "postgres"
    with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    ensure_database(url)


@pytest.fixture(scope="session")
def database_url() -> str:
    recreate_database(TEST_DATABASE_URL)
    migrate(TEST_DATABASE_URL)
    return TEST_DATABASE_URL


@pytest.fixture
def clean_db(database_url: str) -> Iterator[str]:
    """Each test starts with empty tables (real commits, so other processes see the data)."""
    yield database_url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE tickets, messages, ticket_events, deliveries, idempotency_keys CASCADE"
        )


@pytest.fixture
def db(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain psycopg connection for asserting what was written."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        yield conn


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# -- tokens ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsa_private_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def public_pem(rsa_private_key: rsa.RSAPrivateKey) -> str:
    return public_pem_of(rsa_private_key)


@pytest.fixture(scope="session")
def make_token(rsa_private_key: rsa.RSAPrivateKey) -> TokenFactory:
    """``make_token("alice", admin=True, email="a@example.com", exp_in=60, **extra_claims)``."""
    return key_signer(rsa_private_key)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Headers of callers. A file whose callers need other subjects overrides ``user`` / ``admin``.


@pytest.fixture
def alice(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("alice"))


@pytest.fixture
def bob(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("bob"))


@pytest.fixture
def user(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("alice"))


@pytest.fixture
def admin(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("agent-7", admin=True))


# -- the application ----------------------------------------------------------------------------


class RecordingPublisher:
    """A publisher that records what it was asked to publish (a boundary we own)."""

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish_soon(self, event_ids: list[str]) -> None:
        self.published.extend(event_ids)


@pytest.fixture
def settings(clean_db: str, public_pem: str) -> Settings:
    base = load_settings(
        {
            "APP_ENV": "production",
            "DATABASE_URL": clean_db,
            "REDIS_URL": TEST_REDIS_URL,
            "LOG_FORMAT": "json",
            "RATE_LIMIT_PER_MINUTE": "0",  # tests/test_abuse.py turns it on
        }
    )
    return replace(base, jwt_public_key=public_pem)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Worker/scheduler processes a test starts; all stopped at the end of the test."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def slack_sink() -> Iterator[HttpSink]:
    sink = HttpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def service_env(
    clean_db: str,
    redis_client: redis.Redis,
    smtp_sink: SmtpSink,
    slack_sink: HttpSink,
    public_pem: str,
) -> dict[str, str]:
    """Environment for real worker/scheduler processes, pointing at the test sinks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "JWT_", "SLACK_"))}
    env.update(
        APP_ENV="production",
        DATABASE_URL=clean_db,
        REDIS_URL=TEST_REDIS_URL,
        JWT_PUBLIC_KEY=public_pem,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_sink.port),
        SMTP_FROM="Support <support@helpdesk.test>",
        ADMIN_EMAILS=",".join(TEAM),
        SLACK_WEBHOOK_URL=slack_sink.url,
        LOG_FORMAT="json",
        RATE_LIMIT_PER_MINUTE="0",
        OUTBOX_SWEEP_INTERVAL_SECONDS="0.5",
        OUTBOX_PUBLISH_GRACE_SECONDS="1",
        OUTBOX_REPUBLISH_AFTER_SECONDS="5",
        # As the Procfile runs the events, notifications and sla pools: idle consumers poll
        # every 100 ms, not up to 1 s (each hop of an escalation email could wait that long).
        dramatiq_worker_timeout="100",
    )
    return env


@pytest.fixture
async def live_client(
    service_env: dict[str, str],
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The API with its real broker publisher, configured like the worker processes."""
    app = create_app(load_settings(service_env))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
async def client(
    settings: Settings, publisher: RecordingPublisher
) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings, publisher=publisher)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
def clock(client: AsyncTestClient[Any]) -> Clock:
    """The API's ticket service runs on a Clock that starts at T0."""
    clock = Clock()
    client.app.state.service.clock = clock
    return clock


async def create_ticket(
    client: AsyncTestClient[Any], headers: dict[str, str], **fields: Any
) -> dict[str, Any]:
    """POST a ticket (subject "s", body "b" unless ``fields`` say otherwise); it must be created."""
    response = await client.post(
        USER_URL, json={"subject": "s", "body": "b", **fields}, headers=headers
    )
    assert response.status_code == 201, response.text
    ticket: dict[str, Any] = response.json()
    return ticket


# -- the database directly ------------------------------------------------------------------------


@pytest.fixture
def sessions_pool_size() -> int:
    """Connections in the ``sessions`` engine's pool; a file that needs more overrides this."""
    return 2


@pytest.fixture
async def sessions(
    settings: Settings, sessions_pool_size: int
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """SQLAlchemy sessions on the test database, for calling domain code without the API."""
    engine = make_engine(settings, pool_size=sessions_pool_size)
    yield make_sessionmaker(engine)
    await engine.dispose()
