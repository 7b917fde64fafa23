"""The results store end to end, on the real broker and the real PostgreSQL: a simulated city
through a worker and ``gridwatch store``. Every area-window row equals the latest lineloss
record of its key, through a late correction and a store killed with SIGKILL mid-stream; a
suspect opens a case, and an inspector's verdict closes it into the ledger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import psycopg
import pytest
from worker_env import areas_csv, settings_for, worker_env

from local.run import WorkerProcess, free_port
from local.store import StoreProcess
from simulator.city import CitySpec, aligned_start, build, iso, messages
from store.sink import LINELOSS_COLUMNS
from streams.contracts import LineLossRecord
from streams.kafkaio import create_topics, produce, read_topic
from streams.settings import Settings
from streams.topics import topic_specs

INTERVAL = 900
STOP_AT = 100


def _wait(what: str, cond: Callable[[], Any], timeout: float, *procs: WorkerProcess) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        for p in procs:
            assert p.alive(), f"{what}: process died\n{p.log_tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + "\n".join(
            p.log_tail(15) for p in procs
        )
        time.sleep(1.0)


def _latest_lineloss(s: Settings) -> dict[tuple[str, str], LineLossRecord]:
    """The compacted topic's answer: per area-window, the record at the highest offset."""
    latest: dict[tuple[str, str], tuple[int, LineLossRecord]] = {}
    for r in read_topic(s.bootstrap, s.topic_lineloss, idle_s=1.0):
        assert r.value is not None
        rec = msgspec.json.decode(r.value, type=LineLossRecord)
        key = (rec.area_id, rec.window_start)
        if key not in latest or latest[key][0] < r.offset:
            latest[key] = (r.offset, rec)
    return {k: v for k, (_, v) in latest.items()}


def _rows(dsn: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    cols = ", ".join(LINELOSS_COLUMNS)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT {cols} FROM lineloss").fetchall()
    out = {}
    for row in rows:
        start = row[2].astimezone(UTC).isoformat().replace("+00:00", "Z")
        out[(row[0], start)] = row
    return out


def _as_row(rec: LineLossRecord) -> tuple[Any, ...]:
    def ts(text: str) -> datetime:
        return datetime.fromisoformat(text)

    return (
        rec.area_id, rec.area_class, ts(rec.window_start), ts(rec.window_end), rec.window_s, rec.state,
        rec.supply_kwh, rec.sales_kwh, rec.loss_kwh, rec.loss_rate, rec.completeness,
        rec.customers_expected, rec.customers_reported, rec.supplies_expected, rec.supplies_reported,
        rec.lower, rec.upper, rec.rollbacks, rec.revision,
    )  # fmt: skip


def _query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def test_city_through_worker_and_store(kafka_broker, store_dsn: str, tmp_path: Path) -> None:
    days = 1.5
    start = aligned_start(datetime.now(UTC), days, INTERVAL)
    city = build(CitySpec(areas=6, meters_per_area=40, days=days, start=start, seed=11))
    # The biggest consumer of area 1 stops: a suspect of the area's loss.
    a1 = city.customers[city.area_ids[1]]
    stopped = max(a1, key=lambda m: city.registers[m][-1] - city.registers[m][0])
    city.registers[stopped][STOP_AT:] = city.registers[stopped][STOP_AT]
    env = worker_env(
        kafka_broker.bootstrap,
        tmp_path,
        areas_csv=areas_csv(city, tmp_path),
        pg_dsn=store_dsn,
        store_metrics_port=str(free_port()),
        store_group_id=f"store-{uuid.uuid4().hex[:8]}",
        store_batch_records="150",
    )
    s = settings_for(env)
    create_topics(s.bootstrap, topic_specs(s))
    archive = [(s.topic_topology, r.topic_key(), orjson.dumps(r.to_dict())) for r in city.topology.records()]
    topic = {"readings": s.topic_readings, "supply": s.topic_supply}
    readings = [(topic[m.kind], m.key.encode(), orjson.dumps(m.value)) for m in messages(city)]
    half = len(readings) * 3 // 5
    produce(s.bootstrap, archive + readings[:half])
    windows = len(city.area_ids) * len(city.times)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    store = StoreProcess(env, tmp_path / "store.log").start()
    try:
        # SIGKILL the store mid-stream, while the worker goes on publishing results
        _wait(
            "first rows", lambda: _query(store_dsn, "SELECT count(*) FROM lineloss")[0][0] > 50, 180, worker
        )
        produce(s.bootstrap, readings[half:])
        time.sleep(1.0)
        store.kill()
        time.sleep(3.0)
        store = StoreProcess(env, tmp_path / "store2.log").start()
        _wait(
            "every window closed",
            lambda: (worker.metric_sum("gridwatch_area_windows_emitted_total") or 0) >= windows,
            300,
            worker,
            store,
        )
        # A late correction: one meter's last two registers re-sent higher (concentrator re-send)
        area = city.area_ids[0]
        meter = city.customers[area][3]
        k = len(city.times) - 2
        late = [
            {"kind": "reading", "area_id": area, "meter_id": meter, "ts": iso(city.times[j]),
             "register_kwh": float(city.registers[meter][j]) + 2.5}
            for j in (k, k + 1)
        ]  # fmt: skip
        before = _latest_lineloss(s)
        produce(s.bootstrap, [(s.topic_readings, area.encode(), orjson.dumps(r)) for r in late])

        def corrected() -> bool:
            now = _latest_lineloss(s)
            return any(now[key] != before.get(key) for key in now)

        _wait("a corrected result", corrected, 120, worker, store)
        time.sleep(3.0)  # the worker's idle close may add more corrections; then all is quiet

        def caught_up() -> dict[tuple[str, str], LineLossRecord] | None:
            latest = _latest_lineloss(s)
            rows = _rows(store_dsn)
            return latest if rows == {k: _as_row(v) for k, v in latest.items()} else None

        latest = _wait("every row equal to the latest record", caught_up, 120, worker, store)
        assert len(latest) == windows
        revised = [k for k, v in latest.items() if v != before.get(k)]
        assert revised and all(k[0] == area for k in revised)
        assert store.metric("gridwatch_store_lag_records") == 0
        assert (store.metric_sum("gridwatch_store_rows_written_total", {"table": "lineloss"}) or 0) > 0

        # A suspect opens a case; a verdict closes it and moves the ledger by its kWh and money.
        def case() -> list[tuple[Any, ...]]:
            sql = "SELECT case_id, status, area_id, opened_at FROM cases WHERE meter_id = %s"
            return _query(store_dsn, sql, stopped)

        opened = _wait("a case for the stopped meter", case, 120, worker, store)
        assert [(status, a) for _, status, a, _ in opened] == [("open", city.area_ids[1])]
        totals = "SELECT coalesce(sum(recovered_kwh), 0), coalesce(sum(recovered_yuan), 0), " \
                 "coalesce(sum(users_found), 0) FROM ledger_daily"  # fmt: skip
        kwh0, yuan0, users0 = _query(store_dsn, totals)[0]
        verdict = {"meter": stopped, "date": opened[0][3].date().isoformat(), "verdict": "theft",
                   "recovered_kwh": 321.5}  # fmt: skip
        produce(s.bootstrap, [(s.topic_inspections, city.area_ids[1].encode(), orjson.dumps(verdict))])
        _wait("the case closed", lambda: case()[0][1] == "closed", 60, worker, store)
        kwh1, yuan1, users1 = _query(store_dsn, totals)[0]
        cls = city.topology.meter_at(stopped, datetime.now(UTC)).customer_class
        tariff = s.tariff_yuan_per_kwh.get(cls, s.tariff_default_yuan_per_kwh)
        assert (kwh1 - kwh0, users1 - users0) == (321.5, 1)
        assert yuan1 - yuan0 == pytest.approx(321.5 * tariff)
        closed = _query(store_dsn, "SELECT verdict, recovered_kwh FROM cases WHERE meter_id = %s", stopped)
        assert closed == [("theft", 321.5)]
    finally:
        store.stop()
        worker.stop()
