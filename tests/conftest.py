"""Shared fixtures: one real Kafka broker (KRaft, Maven jars, Java 17) per test session.

Real rather than mocked because the detector's behaviour under rebalances, offset commits and
broker restarts is exactly what a fake would get wrong.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.kafka import DEFAULT_VERSION, LocalKafka
from local.postgres import LocalPostgres


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: needs the real broker")
    config.addinivalue_line("markers", "postgres: needs the real PostgreSQL server (Debian's package)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag every test that uses the broker, so `-m "not kafka"` runs the rest without Java."""
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """Started once on free ports; stopped at session end even if tests failed.

    Version from GRIDWATCH_KAFKA_VERSION (default 3.9.2; 4.x works too).
    """
    version = os.environ.get("GRIDWATCH_KAFKA_VERSION", DEFAULT_VERSION)
    broker = LocalKafka.start(tmp_path_factory.mktemp("kafka"), version=version)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A real PostgreSQL (Debian's server binaries) on a free loopback port, for the session.

    Its folder is under /tmp rather than pytest's tmp dir: as root the server runs as the
    `postgres` OS user, which cannot enter pytest's owner-only folders.
    """
    root = Path(tempfile.mkdtemp(prefix="gridwatch-pg-"))
    root.chmod(0o755)
    server = LocalPostgres.start(root / "pg")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
