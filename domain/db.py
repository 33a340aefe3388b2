"""Database engine, session factory and the direct path for hot statements. Built by each
process at start-up, never at import."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from domain.settings import Settings

# Connections a process may open beyond its pool size, for bursts.
POOL_OVERFLOW = 5
POOL_TIMEOUT_S = 5


def pool_capacity(settings: Settings, *, pool_size: int | None = None) -> int:
    """The most connections one process's pool holds: DB_POOL_SIZE plus the burst allowance."""
    return (pool_size or settings.db_pool_size) + POOL_OVERFLOW


def make_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        # At most DB_POOL_SIZE + POOL_OVERFLOW connections, as with pool_size/max_overflow, but the
        # pool keeps every connection it opens instead of closing the overflow ones whenever
        # they come back: under load that closed and reopened dozens of connections (each a new
        # PostgreSQL process) every 10 s. Connections are opened on demand; bench/http_load.py.
        pool_size=pool_capacity(settings, pool_size=pool_size),
        max_overflow=0,
        pool_pre_ping=False,  # a dead connection fails one request; pre-ping costs every request
        pool_recycle=1800,
        pool_timeout=POOL_TIMEOUT_S,
        hide_parameters=True,  # parameters carry ticket bodies; keep them out of error logs
        connect_args={"connect_timeout": 5, "application_name": "helpdesk"},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: handlers serialise objects after the commit.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class WaitingGauge(Protocol):
    """Where the gate counts the requests queued for a slot (a Prometheus gauge in the API)."""

    def inc(self) -> None: ...

    def dec(self) -> None: ...


class ConnectionGate:
    """Admits requests to the database in arrival order, as many at once as the pool can serve.

    Without it, requests beyond the pool's size queue inside the pool, where a request that
    arrives just as a connection comes back takes it ahead of those already waiting: at 128
    connections list p99 was 3.9 s with timeouts while the median was 112 ms. asyncio's
    semaphore is first come, first served. One connection is left outside the gate for the
    process's own work (the event publisher marks events published through the same pool).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = POOL_TIMEOUT_S,
        waiting: WaitingGauge | None = None,
    ) -> None:
        self.slots = max(1, pool_capacity(settings) - 1)
        self._slots = asyncio.Semaphore(self.slots)
        self.timeout_s = timeout_s
        self._waiting = waiting

    @property
    def free(self) -> int:
        """Slots no request holds right now (what a wedged process runs out of)."""
        return self._slots._value

    async def _wait_for_slot(self, wait_s: float) -> None:
        # Only a request that finds every slot taken is counted as waiting.
        waiting = self._waiting
        if waiting is not None:
            waiting.inc()
        try:
            async with asyncio.timeout(wait_s):
                await self._slots.acquire()
        except TimeoutError as exc:
            # The same error as the pool's own timeout: the API answers 503 with Retry-After.
            raise PoolTimeout(f"no database connection free within {wait_s} s") from exc
        finally:
            if waiting is not None:
                waiting.dec()

    @asynccontextmanager
    async def slot(self, *, timeout_s: float | None = None) -> AsyncIterator[None]:
        if self._slots.locked():
            await self._wait_for_slot(self.timeout_s if timeout_s is None else timeout_s)
        else:
            # The usual case, a free slot: taken at once, with no timer to arm and cancel.
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()


class Executor(Protocol):
    """What a use case needs to run statements in one transaction: an ``AsyncSession``, or a
    :class:`DirectConnection` on the hot paths. ``info`` carries the ids of the events written
    (domain/events.py) to whoever commits."""

    @property
    def info(self) -> dict[Any, Any]: ...

    async def execute(self, statement: Any, params: Any = None) -> Any: ...


class Rows:
    """A statement's rows, fetched at once, read like SQLAlchemy's ``Result``."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def all(self) -> Sequence[Any]:
        return self._rows

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class DirectConnection:
    """A connection from the engine's own pool (same gate, same limits), used through psycopg
    itself: the statements are still SQLAlchemy's, compiled once to their SQL text, but running
    them skips the ORM's unit of work and the greenlet hop that each statement of an
    ``AsyncSession`` takes. For the hottest requests only (create, the owner's list); py-spy put
    those layers at about a fifth of a create's CPU. See docs/profiling.md."""

    def __init__(self, connection: psycopg.AsyncConnection[Any], dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self._info: dict[Any, Any] = {}

    @property
    def info(self) -> dict[Any, Any]:
        return self._info

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        async with self.connection.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(_sql_text(statement, self.dialect), params)
            return Rows(await cursor.fetchall() if cursor.description else [])

    async def begin(self) -> None:
        """Run the next statements in one transaction, until :meth:`commit` (or a rollback when
        the connection goes back). Without it each statement is its own transaction."""
        if self.connection.autocommit:
            await self.connection.set_autocommit(False)

    async def commit(self) -> None:
        await self.connection.commit()  # nothing to do (no round trip) without begin()


_SQL_TEXT: dict[Executable, str] = {}


def _sql_text(statement: Executable, dialect: Dialect) -> str:
    """The statement's SQL for psycopg (``%(name)s`` placeholders), compiled on first use. Only
    for statements built once at import: a statement built per call would grow the cache."""
    sql = _SQL_TEXT.get(statement)
    if sql is None:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, compile_kwargs={"render_postcompile": True}
        )
        sql = _SQL_TEXT[statement] = str(compiled)
    return sql


@asynccontextmanager
async def direct_connection(engine: AsyncEngine) -> AsyncIterator[DirectConnection]:
    """A pooled connection for :class:`DirectConnection`; back to the pool (rolled back if a
    transaction is still open) when the block ends.

    Each statement is its own transaction (autocommit) unless :meth:`DirectConnection.begin`
    is called: the hot requests send one statement (a create's CTE, a list page), and a
    transaction around it cost two more round trips (psycopg's BEGIN, and the pool's ROLLBACK
    or a COMMIT), about a sixth of a list's CPU in the API (docs/profiling.md section 11).
    """
    async with engine.connect() as connection:
        pooled = await connection.get_raw_connection()
        driver: psycopg.AsyncConnection[Any] = pooled.driver_connection  # type: ignore[assignment]
        await driver.set_autocommit(True)
        try:
            yield DirectConnection(driver, engine.dialect)
        except psycopg.OperationalError:
            if driver.broken or driver.closed:
                # SQLAlchemy did not see the error (its pool would have discarded the
                # connection): discard it here, or the next request gets a dead one.
                await connection.invalidate()
            raise
        finally:
            # The pool's other users (sessions) expect transactions; with autocommit on, no
            # transaction is open, so the switch is allowed and costs no round trip.
            if driver.autocommit and not driver.closed:
                with contextlib.suppress(psycopg.Error):
                    await driver.set_autocommit(False)
