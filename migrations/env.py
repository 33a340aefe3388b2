"""Alembic environment: migrates the database named by DATABASE_URL (or the -x url=... option)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import domain.webhooks  # noqa: F401  (its table, for autogenerate)
from domain.models import Base  # the tickets' tables, the SLA clocks' too
from domain.settings import load_settings, to_sqlalchemy_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    explicit = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    return to_sqlalchemy_url(explicit) if explicit else load_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
