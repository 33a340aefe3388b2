"""Database engine and session factory. Built by each process at start-up, never at import."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from domain.settings import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=5,
        pool_pre_ping=False,  # a dead connection fails one request; pre-ping costs every request
        pool_recycle=1800,
        pool_timeout=5,
        hide_parameters=True,  # parameters carry ticket bodies; keep them out of error logs
        connect_args={"connect_timeout": 5, "application_name": "helpdesk"},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: handlers serialise objects after the commit.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
