"""Schema of the results store: numbered SQL migrations applied in order, day partitions of the
lineloss table created on demand and dropped past the retention, tariffs from configuration."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_PARTITION_RE = re.compile(r"^lineloss_(\d{8})$")
# Any fixed number: only one migrating process at a time.
_MIGRATE_LOCK = 0x67726964


def migrations(folder: Path = MIGRATIONS) -> list[tuple[int, Path]]:
    """(version, file) of every migration, in order; versions must run 1, 2, 3 ... without gaps.

    >>> [(v, p.name) for v, p in migrations()][:1]
    [(1, '001_results.sql')]
    """
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _MIGRATION_RE.match(path.name)
        if m is None:
            raise ValueError(f"migration {path.name}: name must be NNN_words.sql")
        found.append((int(m.group(1)), path))
    versions = [v for v, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the migrations not yet applied, each in its own transaction; return the version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        for version, path in migrations():
            if version <= current:
                continue
            with conn.transaction():
                conn.execute(path.read_text().encode())  # trusted files of the repository
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, path.name)
                )
            current = version
    return current


def partition_name(day: date) -> str:
    return f"lineloss_{day:%Y%m%d}"


def ensure_partitions(conn: psycopg.Connection[Any], days: Iterable[date]) -> None:
    """Create the day partitions of lineloss that ``days`` need (idempotent)."""
    for day in sorted(set(days)):
        lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
        create = "CREATE TABLE IF NOT EXISTS {} PARTITION OF lineloss FOR VALUES FROM ({}) TO ({})"
        conn.execute(
            sql.SQL(create).format(
                sql.Identifier(partition_name(day)),
                sql.Literal(lo),
                sql.Literal(lo + timedelta(days=1)),
            )
        )


def drop_expired(conn: psycopg.Connection[Any], oldest_kept: date) -> list[str]:
    """Drop the lineloss partitions of days before ``oldest_kept``; return their names.

    Resolved alerts past the same cutoff are deleted too; verdicts and the cases they close are
    the programme's ledger and stay.
    """
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'lineloss'::regclass"
    ).fetchall()
    dropped = []
    for (name,) in rows:
        m = _PARTITION_RE.match(str(name))
        if m and datetime.strptime(m.group(1), "%Y%m%d").date() < oldest_kept:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(str(name))))
            dropped.append(str(name))
    cutoff = datetime(oldest_kept.year, oldest_kept.month, oldest_kept.day, tzinfo=UTC)
    conn.execute(
        "DELETE FROM alerts WHERE resolved_at < %s"
        " AND type NOT IN ('meter_theft_suspect', 'meter_arrears_risk')",
        (cutoff,),
    )
    return sorted(dropped)


def sync_tariffs(conn: psycopg.Connection[Any], tariffs: Mapping[str, float]) -> None:
    """Make the tariffs table equal the configured tariffs (yuan per kWh by customer class)."""
    conn.execute("DELETE FROM tariffs WHERE customer_class <> ALL(%s)", (list(tariffs),))
    for cls, price in sorted(tariffs.items()):
        conn.execute(
            "INSERT INTO tariffs (customer_class, yuan_per_kwh) VALUES (%s, %s) "
            "ON CONFLICT (customer_class) DO UPDATE SET yuan_per_kwh = excluded.yuan_per_kwh",
            (cls, float(price)),
        )
