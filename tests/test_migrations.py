"""The Alembic migrations: upgrade from empty, downgrade to nothing, upgrade again."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from api.cli import ROOT, migrate
from domain.models import Base
from domain.settings import to_sqlalchemy_url
from tests.conftest import TEST_DATABASE_URL, recreate_database


def alembic_config(database_url: str) -> Config:
    """The configuration ``api.cli.migrate`` builds, for the commands it does not offer."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.cmd_opts = argparse.Namespace(x=[f"url={database_url}"])
    return config


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A throwaway database on the test server, dropped afterwards."""
    info = psycopg.conninfo.conninfo_to_dict(TEST_DATABASE_URL)
    name = f"{info['dbname']}_migrations_{os.getpid()}"
    url = urlunsplit(urlsplit(TEST_DATABASE_URL)._replace(path=f"/{name}"))
    recreate_database(url)
    try:
        yield url
    finally:
        admin = {**info, "dbname": "postgres"}
        with psycopg.connect(**admin, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def schema(url: str) -> dict[str, Any]:
    """Tables with their columns, plus every other object a migration might leave behind."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position"
        ).fetchall()
        relations = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' ORDER BY c.relname"
        ).fetchall()
        types = conn.execute(
            "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')"
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public'"
        ).fetchall()
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for table, *column in columns:
        tables.setdefault(table, []).append(tuple(column))
    return {"tables": tables, "relations": relations, "types": types, "functions": functions}


def version(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    url = empty_database
    heads = ScriptDirectory.from_config(alembic_config(url)).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"

    assert schema(url)["tables"] == {}
    migrate(url)
    first = schema(url)
    assert {"tickets", "messages", "ticket_events", "deliveries", "alembic_version"} <= set(
        first["tables"]
    )
    assert version(url) == heads

    # Migrations and models describe the same tables and columns.
    engine = create_engine(to_sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    structural = [
        diff
        for diff in diffs
        if isinstance(diff, tuple)
        and diff[0] in {"add_table", "remove_table", "add_column", "remove_column"}
        and not (diff[0] == "remove_table" and diff[1].name == "alembic_version")
    ]
    assert structural == []

    command.downgrade(alembic_config(url), "base")
    after_downgrade = schema(url)
    assert set(after_downgrade["tables"]) == {"alembic_version"}
    leftovers = [name for name, _ in after_downgrade["relations"]]
    assert set(leftovers) <= {"alembic_version", "alembic_version_pkc"}, leftovers
    assert after_downgrade["types"] == []
    assert after_downgrade["functions"] == []
    assert version(url) == []

    migrate(url)
    assert schema(url) == first
    assert version(url) == heads
