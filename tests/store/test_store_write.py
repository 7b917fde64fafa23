"""The store's write path against a real PostgreSQL: idempotence, cases, ledger, bad records."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

import msgspec
import psycopg
import pytest

from store import schema
from store.sink import Batch, WriteParams, build_batch, write, write_isolating
from store.synthetic import alert_record, lineloss_record, meter_record
from streams.contracts import encode
from streams.masking import MeterMask

PARAMS = WriteParams(default_tariff=0.6, period_intervals=30 * 96)
OLDEST = date(2020, 1, 1)
T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
NOMASK = MeterMask(None)


def _write(
    conn: psycopg.Connection[tuple[object, ...]], records: list[tuple[str, int, int, int, bytes]]
) -> Batch:
    batch = build_batch(records, NOMASK, OLDEST)
    try:
        write(conn, batch, PARAMS)
    except (psycopg.DataError, psycopg.IntegrityError):
        write_isolating(conn, batch, PARAMS)
    return batch


def test_migrations_apply_once(store_conn: psycopg.Connection[tuple[object, ...]]) -> None:
    assert schema.migrate(store_conn) == len(schema.migrations())
    rows = store_conn.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
    assert rows == [(1, "001_results.sql"), (2, "002_partition_function.sql")]


def test_table_holds_the_latest_record_whatever_the_replays(
    store_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Records of 30 area-windows, each corrected up to 3 times, delivered at least once in
    overlapping, reordered-by-partition batches: each row is the last record of its key."""
    rng = random.Random(7)
    log: dict[int, list[tuple[str, int, int, int, bytes]]] = {0: [], 1: []}
    latest = {}
    for n in range(90):
        area, w = f"A{n % 10:03d}", T0 + 900 * (n % 3)
        part = hash(area) % 2
        rec = lineloss_record(area, w, revision=n // 30, seed=n)
        offset = len(log[part])
        log[part].append(("lineloss", part, offset, 1_000 * (T0 + n), encode(rec)))
        latest[(area, w)] = rec
    # deliveries: each partition from random earlier points again (a restart), mixed together
    deliveries = []
    for recs in log.values():
        pos = 0
        while pos < len(recs):
            end = min(len(recs), pos + rng.randint(1, 15))
            deliveries.append(recs[pos:end])
            pos = max(0, end - rng.randint(0, 8)) if rng.random() < 0.5 else end
    rng.shuffle(deliveries)  # partitions interleave freely; within one, order holds per batch
    for part in (0, 1):
        mine = [d for d in deliveries if d[0][1] == part]
        mine.sort(key=lambda d: d[0][2])
        for d in mine:
            _write(store_conn, d)
        _write(store_conn, log[part][: len(log[part]) // 2])  # an old replay after the end
    got = {
        (a, int(ws.timestamp())): (rate, rev)
        for a, ws, rate, rev in store_conn.execute(
            "SELECT area_id, window_start, loss_rate, revision FROM lineloss"
        ).fetchall()
    }
    assert got == {k: (r.loss_rate, r.revision) for k, r in latest.items()}


def test_a_suspect_opens_a_case_and_a_verdict_closes_it_into_the_ledger(
    store_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    schema.sync_tariffs(store_conn, {"residential": 0.5, "industrial": 0.7})
    store_conn.commit()
    suspect = alert_record(
        "meter", "M1", "meter_theft_suspect", T0, "opened", {"area_id": "A1", "deficit_kwh": 80.0}
    )
    _write(store_conn, [("topology", 0, 0, 1, meter_record("M1", "A1", "residential"))])
    _write(store_conn, [("alert", 0, 0, 1_000 * T0, suspect)])
    case = store_conn.execute(
        "SELECT case_id, meter_id, area_id, status, estimated_kwh FROM cases"
    ).fetchall()
    assert case == [(f"meter:M1:theft_suspect:{T0}", "M1", "A1", "open", 80.0)]
    before = store_conn.execute(
        "SELECT coalesce(sum(recovered_kwh), 0), coalesce(sum(recovered_yuan), 0) FROM ledger_daily"
    ).fetchone()
    verdict = msgspec.json.encode(
        {"meter": "M1", "date": "2026-03-03", "verdict": "theft", "recovered_kwh": 120.0}
    )
    for _ in range(2):  # delivered twice: counted once
        _write(store_conn, [("inspection", 0, 0, 1_000 * T0, verdict)])
    row = store_conn.execute(
        "SELECT status, verdict, recovered_kwh, recovered_yuan, closed_on FROM cases"
    ).fetchone()
    assert row == ("closed", "theft", 120.0, pytest.approx(60.0), date(2026, 3, 3))
    after = store_conn.execute(
        "SELECT sum(recovered_kwh), sum(recovered_yuan), sum(users_found) FROM ledger_daily"
    ).fetchone()
    assert before == (0, 0)
    assert after == (120.0, pytest.approx(60.0), 1)
    month = store_conn.execute(
        "SELECT month, users_found, recovered_yuan, cases_opened FROM ledger_monthly"
    ).fetchall()
    assert month == [(date(2026, 3, 1), 1, pytest.approx(60.0), 1)]


def test_arrears_warning_carries_the_average_bill(store_conn: psycopg.Connection[tuple[object, ...]]) -> None:
    schema.sync_tariffs(store_conn, {"industrial": 0.7})
    store_conn.commit()
    _write(store_conn, [("topology", 0, 0, 1, meter_record("F1", "A2", "industrial"))])
    warn = alert_record(
        "meter", "F1", "meter_arrears_risk", T0, "opened", {"expected_kwh": 50.0, "observed_kwh": 1.0}
    )
    _write(store_conn, [("alert", 1, 0, 1_000 * T0, warn)])
    exposure = store_conn.execute("SELECT exposure_yuan, area_id FROM alerts").fetchone()
    assert exposure == (pytest.approx(50.0 * 30 * 96 * 0.7), "A2")
    day = store_conn.execute("SELECT arrears_warnings, exposure_warned_yuan FROM ledger_daily").fetchone()
    assert day == (1, pytest.approx(50.0 * 30 * 96 * 0.7))


def test_bad_records_are_kept_with_their_reason_and_do_not_stall_the_batch(
    store_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    good = encode(lineloss_record("A9", T0))
    # Python reads a +23:00 offset, PostgreSQL refuses it: found by writing record by record
    odd = good.replace(b'00Z"', b'00+23:00"', 1)
    nul = alert_record("area", "A9", "area_high_loss", T0, "opened", {"note": "a\x00b"})
    batch = _write(
        store_conn,
        [
            ("lineloss", 0, 0, 1, b"{not json"),
            ("lineloss", 0, 1, 1, odd),
            ("alert", 0, 0, 1, nul),
            ("lineloss", 0, 2, 1, good),
            ("inspection", 0, 0, 1, b'{"meter": "M1", "date": "2026-01-01", "verdict": "maybe"}'),
        ],
    )
    assert sorted((r[0], r[2], r[3]) for r in batch.rejected) == [
        ("alert", 0, "nul"),
        ("inspection", 0, "inspection"),
        ("lineloss", 0, "json"),
        ("lineloss", 1, "database"),
    ]
    assert store_conn.execute("SELECT area_id FROM lineloss").fetchall() == [("A9",)]
    reasons = store_conn.execute("SELECT topic, src_offset, reason FROM rejected ORDER BY 1, 2").fetchall()
    assert reasons == sorted((r[0], r[2], r[3]) for r in batch.rejected)


def test_retention_drops_old_day_partitions(store_conn: psycopg.Connection[tuple[object, ...]]) -> None:
    _write(
        store_conn, [("lineloss", 0, i, 1, encode(lineloss_record("A1", T0 + i * 86400))) for i in range(3)]
    )
    store_conn.commit()
    kept = datetime.fromtimestamp(T0 + 86400, UTC).date()
    with store_conn.transaction():
        dropped = schema.drop_expired(store_conn, kept)
    assert dropped == [schema.partition_name(datetime.fromtimestamp(T0, UTC).date())]
    assert store_conn.execute("SELECT count(*) FROM lineloss").fetchone() == (2,)
    # a result older than the retention is counted, not written
    batch = build_batch([("lineloss", 0, 9, 1, encode(lineloss_record("A1", T0)))], NOMASK, kept)
    assert batch.expired == {"lineloss": 1} and not batch.rows


def test_verdicts_and_archive_are_joined_to_alerts_by_the_masked_meter_id() -> None:
    """With a mask key the worker's alerts name meters by their keyed hash: the store keeps that
    id beside the real one, so a verdict (real id) finds its case (masked id)."""
    mask = MeterMask(b"k" * 32)
    verdict = msgspec.json.encode({"meter": "M1", "date": "2026-03-03", "verdict": "theft"})
    batch = build_batch(
        [("inspection", 0, 0, 1, verdict), ("topology", 0, 0, 1, meter_record("M1", "A1", "residential"))],
        mask,
        OLDEST,
    )
    assert [r[5] for r in batch.rows] == [mask.meter("M1")] * 2 and mask.meter("M1") != "M1"


def test_compose_runs_postgres_with_a_volume_and_the_store() -> None:
    from ruamel.yaml import YAML

    from streams.settings import REPO

    services = YAML(typ="safe", pure=True).load((REPO / "docker-compose.yml").read_text())["services"]
    pg, store = services["postgres"], services["store"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert store["command"] == ["gridwatch", "store"]
    assert store["environment"]["GRIDWATCH_STORE_METRICS_PORT"] == 9310
    assert "@postgres:5432/gridwatch" in store["environment"]["GRIDWATCH_PG_DSN"]
    assert store["depends_on"]["postgres"]["condition"] == "service_healthy"
