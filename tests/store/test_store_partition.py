"""The SQL partition function of migration 002 against Kafka's default partitioner in Python:
the area dashboard's `worker` variable must name the partition the worker really reads."""

from __future__ import annotations

import random

import psycopg

from streams.topology_feed import area_partition


def _keys() -> list[str]:
    """Area ids of every length 0-40 (each tail of the 4-byte blocks), the simulator's and
    archives' shapes, and non-ASCII ids (murmur2 hashes the UTF-8 bytes)."""
    rng = random.Random(15)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:"
    keys = ["".join(rng.choice(alphabet) for _ in range(n)) for n in range(41) for _ in range(25)]
    keys += [f"A{i:05d}" for i in range(2000)] + [f"TA-{i}" for i in range(0, 30000, 97)]
    keys += ["台区-001", "Zone-ÄÖÜ-7", "\u00ff\u00fe" * 5, "ﾟ"]
    return keys


def test_sql_partition_equals_the_kafka_partitioner(
    store_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    keys = _keys()
    for partitions in (1, 3, 4, 12, 64):
        rows = store_conn.execute(
            "SELECT k, gridwatch_partition(k, %s) FROM unnest(%s::text[]) AS k", (partitions, keys)
        ).fetchall()
        got = dict(rows)
        want = {k: area_partition(k, partitions) for k in keys}
        assert got == want, f"{partitions} partitions: {[k for k in keys if got[k] != want[k]][:5]}"
    # the keys spread over partitions (the function is no constant)
    assert len({area_partition(k, 12) for k in keys}) == 12
