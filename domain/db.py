"""Database engine and session factory. Built by each process at start-up, never at import."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from domain.settings import Settings

# Connections a process may open beyond its pool size, for bursts.
OVERFLOW = 5


def make_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    size = (pool_size or settings.db_pool_size) + OVERFLOW
    return create_async_engine(
        settings.sqlalchemy_url,
        # At most DB_POOL_SIZE + OVERFLOW connections, as with pool_size/max_overflow, but the
        # pool keeps every connection it opens instead of closing the overflow ones whenever
        # they come back: under load that closed and reopened dozens of connections (each a new
        # PostgreSQL process) every 10 s. Connections are opened on demand; bench/http_load.py.
        pool_size=size,
        max_overflow=0,
        pool_pre_ping=False,  # a dead connection fails one request; pre-ping costs every request
        pool_recycle=1800,
        pool_timeout=5,
        hide_parameters=True,  # parameters carry ticket bodies; keep them out of error logs
        connect_args={"connect_timeout": 5, "application_name": "helpdesk"},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: handlers serialise objects after the commit.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
