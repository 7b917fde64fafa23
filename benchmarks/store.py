"""Throughput and delay of ``gridwatch store`` on a real broker and a real PostgreSQL.

    python benchmarks/store.py                      # a 2-million-meter city: 15,000 areas x 96 windows
    python benchmarks/store.py --areas 2000 --steady-s 20 --out /tmp/gw-store   # quick

Starts its own Kafka broker (local.kafka.LocalKafka) and PostgreSQL (local.postgres), both
in temporary folders, and measures the store as a child process (local.store.StoreProcess,
default settings: batches of up to GRIDWATCH_STORE_BATCH_RECORDS, 20,000, records):

(a) backfill: one day of area-window results of a city of ``--areas`` areas (15,000 areas of
    ~130 meters = 2 M meters; 96 windows of 15 minutes) is produced to the lineloss topic
    first (4 partitions); then the store starts on an empty database. rows/s = rows written /
    (the last row's stored_at - the first row's stored_at), from the table itself; the wall
    time from the store's start to the last row (connection, migrations and group join
    included) is reported too. Target: >= 20,000 rows/s.
(b) steady load: the next day's results are produced at ``--rate`` records/s for
    ``--steady-s`` seconds while the store runs; the delay of each record is its row's
    stored_at (clock_timestamp() when the upsert wrote it; the batch commits right after) minus
    the record's Kafka timestamp (CreateTime, set by the producer when it sent it). Target:
    p99 <= 2 s. The default rate, 2,000 records/s, is 120 times what the 2-million-meter city
    produces (15,000 areas per 15 minutes = 17 records/s), as a re-send storm would.

Writes benchmarks/results/store.json (another folder with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from local.kafka import LocalKafka  # noqa: E402
from local.postgres import LocalPostgres  # noqa: E402
from local.run import free_port  # noqa: E402
from local.store import StoreProcess  # noqa: E402
from store import schema  # noqa: E402
from store.synthetic import city_day  # noqa: E402
from streams.kafkaio import _connect, create_topics  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import topic_specs  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its exited children and its live children (the PostgreSQL
    postmaster and its backends)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15]) / tick
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[1]) == pid:
            total += (int(f[11]) + int(f[12])) / tick
    return total


def _rows_written(port: str) -> float:
    """Lineloss rows the store reports written (its metrics endpoint): polling this instead of
    count(*) keeps the benchmark from scanning the growing table (with parallel workers) every
    second while it measures the store."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:  # not serving yet: the store is starting
        return 0.0
    for line in text.splitlines():
        if line.startswith('gridwatch_store_rows_written_total{table="lineloss"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM lineloss").fetchone()
    return int(row[0]) if row else 0


def produce_day(bootstrap: str, topic: str, areas: int, day_start: int, partitions: int) -> tuple[int, float]:
    """The day's records, in batches built by aiokafka (its C record builder), each record in
    the partition Kafka's default partitioner gives its key (murmur2), as the worker's are."""
    from aiokafka import AIOKafkaProducer
    from kafka.partitioner.default import murmur2

    async def run() -> int:
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, max_request_size=8 * 1024 * 1024)
        await prod.start()
        n = 0
        try:
            batches = {p: prod.create_batch() for p in range(partitions)}
            pending = []
            for key, value in city_day(areas, day_start):
                p = (murmur2(key) & 0x7FFFFFFF) % partitions
                if batches[p].append(key=key, value=value, timestamp=None) is None:
                    pending.append(await prod.send_batch(batches[p], topic, partition=p))
                    batches[p] = prod.create_batch()
                    batches[p].append(key=key, value=value, timestamp=None)
                n += 1
                if len(pending) > 32:
                    await asyncio.gather(*pending)
                    pending = []
            for p, batch in batches.items():
                if batch.record_count():
                    pending.append(await prod.send_batch(batch, topic, partition=p))
            await asyncio.gather(*pending)
        finally:
            await prod.stop()
        return n

    began = time.monotonic()
    n = asyncio.run(run())
    return n, time.monotonic() - began


def produce_steady(
    bootstrap: str, topic: str, areas: int, day_start: int, rate: float, seconds: float
) -> int:
    """Records of the next day at ``rate`` per second, paced in 10 ms steps."""
    prod = _connect(KafkaProducer, bootstrap, acks="all", linger_ms=0)
    records = city_day(areas, day_start)
    began, n = time.monotonic(), 0
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate)
        while n < due:
            key, value = next(records)
            prod.send(topic, key=key, value=value)
            n += 1
        prod.flush()
        time.sleep(0.01)
    prod.flush()
    prod.close()
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--areas", type=int, default=15_000)
    ap.add_argument("--rate", type=float, default=2_000.0, help="steady load, records/s")
    ap.add_argument("--steady-s", type=float, default=60.0)
    ap.add_argument("--batch-records", type=int, default=Settings.model_fields["store_batch_records"].default)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="gridwatch-store-bench-"))
    tmp.chmod(0o755)  # PostgreSQL runs as the `postgres` user when we are root
    broker = LocalKafka.start(tmp / "kafka")
    pg = LocalPostgres.start(tmp / "pg")
    store: StoreProcess | None = None
    try:
        app = f"bench-{uuid.uuid4().hex[:6]}"
        env = {
            "GRIDWATCH_BOOTSTRAP": broker.bootstrap,
            "GRIDWATCH_PG_DSN": pg.dsn,
            "GRIDWATCH_TOPIC_LINELOSS": f"{app}.lineloss",
            "GRIDWATCH_TOPIC_ALERTS": f"{app}.alerts",
            "GRIDWATCH_TOPIC_INSPECTIONS": f"{app}.inspections",
            "GRIDWATCH_TOPIC_TOPOLOGY": f"{app}.topology",
            "GRIDWATCH_TOPIC_READINGS": f"{app}.readings",
            "GRIDWATCH_TOPIC_SUPPLY": f"{app}.supply",
            "GRIDWATCH_TOPIC_DEADLETTER": f"{app}.deadletter",
            "GRIDWATCH_TOPIC_ALERTS_DEADLETTER": f"{app}.alerts-deadletter",
            "GRIDWATCH_STORE_GROUP_ID": f"{app}-store",
            "GRIDWATCH_STORE_METRICS_PORT": str(free_port()),
            "GRIDWATCH_STORE_BATCH_RECORDS": str(args.batch_records),
        }
        os.environ.update(env)
        s = Settings()
        create_topics(s.bootstrap, topic_specs(s))
        with psycopg.connect(pg.dsn) as conn:
            schema.migrate(conn)
            conn.commit()
        now = int(datetime.now(UTC).timestamp()) // 86400 * 86400
        day1, day2 = now - 2 * 86400, now - 86400
        print(f"producing one day of {args.areas} areas to {s.topic_lineloss} ...", flush=True)
        n, produce_s = produce_day(s.bootstrap, s.topic_lineloss, args.areas, day1, s.partitions)
        print(f"  {n} records in {produce_s:.1f} s", flush=True)

        assert pg.process is not None
        pg_cpu0 = _tree_cpu_s(pg.process.pid)
        load_before = os.getloadavg()[0]
        store = StoreProcess(env, tmp / "store.log").start()
        assert store.proc is not None
        started = time.monotonic()
        while _rows_written(env["GRIDWATCH_STORE_METRICS_PORT"]) < n:
            if not store.alive():
                raise RuntimeError(f"the store exited\n{store.log_tail()}")
            if time.monotonic() - started > 3600:
                raise RuntimeError("backfill did not finish in an hour")
            time.sleep(1.0)
        wall = time.monotonic() - started
        if _count(pg.dsn) != n:  # the metric counts upserts; the table must hold each record once
            raise RuntimeError(f"the table holds {_count(pg.dsn)} rows, not {n}")
        cpu = _cpu_s(store.proc.pid)
        pg_cpu = _tree_cpu_s(pg.process.pid) - pg_cpu0
        with psycopg.connect(pg.dsn) as conn:
            span_row = conn.execute("SELECT min(stored_at), max(stored_at) FROM lineloss").fetchone()
        assert span_row is not None
        first, last = span_row
        span = (last - first).total_seconds()
        backfill = {
            "rows": n,
            "rows_per_s": round(n / span, 1),
            "span_s": round(span, 2),
            "wall_s_from_start": round(wall, 2),
            "rows_per_s_from_start": round(n / wall, 1),
            "store_cpu_s": round(cpu, 2),
            "postgres_cpu_s": round(pg_cpu, 2),
            # What the CPU the two got would sustain: the store prepares a batch while
            # PostgreSQL writes the previous one, so on two free cores the slower side bounds it.
            "rows_per_cpu_s_store": round(n / cpu, 1),
            "rows_per_cpu_s_postgres": round(n / pg_cpu, 1) if pg_cpu else None,
            "produce_s": round(produce_s, 1),
            "target_rows_per_s": 20_000,
        }
        print(json.dumps({"backfill": backfill}), flush=True)

        mark = datetime.now(UTC)
        print(f"steady load: {args.rate:.0f} records/s for {args.steady_s:.0f} s ...", flush=True)
        holder: dict[str, int] = {}
        t = threading.Thread(
            target=lambda: holder.update(
                sent=produce_steady(s.bootstrap, s.topic_lineloss, args.areas, day2, args.rate, args.steady_s)
            )
        )
        t.start()
        t.join()
        sent = holder["sent"]
        deadline = time.monotonic() + 120
        while _rows_written(env["GRIDWATCH_STORE_METRICS_PORT"]) < n + sent and time.monotonic() < deadline:
            time.sleep(0.5)
        with psycopg.connect(pg.dsn) as conn:
            row = conn.execute(
                "SELECT count(*),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - src_ts)),"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - src_ts)),"
                " max(extract(epoch FROM stored_at - src_ts))"
                " FROM lineloss WHERE src_ts >= %s",
                (mark,),
            ).fetchone()
        assert row is not None
        steady = {
            "rate_records_per_s": args.rate,
            "seconds": args.steady_s,
            "records_sent": sent,
            "rows_written": int(row[0]),
            "delay_p50_s": round(float(row[1]), 3),
            "delay_p99_s": round(float(row[2]), 3),
            "delay_max_s": round(float(row[3]), 3),
            "target_p99_s": 2.0,
        }
        print(json.dumps({"steady": steady}), flush=True)
        result = {
            "benchmark": "store",
            "command": " ".join(["python", "benchmarks/store.py", *(sys.argv[1:] if argv is None else argv)]),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                # other processes' load while it ran: rows/s above are what the store got of it
                "load_avg_1m_before_backfill": load_before,
                "load_avg_1m_at_end": os.getloadavg()[0],
            },
            "areas": args.areas,
            "windows_per_day": 96,
            "batch_records": args.batch_records,
            "backfill": backfill,
            "steady": steady,
            "targets_met": {
                "backfill_rows_per_s": backfill["rows_per_s"] >= 20_000,
                "steady_delay_p99_s": steady["delay_p99_s"] <= 2.0,
            },
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "store.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out / 'store.json'}")
        return 0
    finally:
        if store is not None:
            store.stop()
        pg.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
