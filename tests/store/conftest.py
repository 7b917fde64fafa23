"""A fresh, migrated database per test on the session's PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from local.postgres import LocalPostgres
from store import schema


def fresh_database(server: LocalPostgres) -> str:
    """Create an empty database on ``server``; return its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def store_dsn(postgres_server: LocalPostgres) -> str:
    dsn = fresh_database(postgres_server)
    with psycopg.connect(dsn) as conn:
        schema.migrate(conn)
        conn.commit()
    return dsn


@pytest.fixture
def store_conn(store_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(store_dsn) as conn:
        yield conn
